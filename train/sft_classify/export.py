"""What a finished ``train.sft_classify`` run leaves in ``output_dir`` besides the model (the ``lorasmith.run_folder``
contract): ``lorasmith.json`` of kind ``prompt_classifier`` (labels, text columns, the prompt), ``metrics.json``
and the ``README.md`` model card. ``adapter/`` / ``merged/`` come from ``train.common.export`` and
``recipe.yaml`` from ``train.common.run.prepare_output_dir``.
"""

from __future__ import annotations

from lorasmith.classifiers.prompt import KIND
from lorasmith.run_folder import scalar_metrics, write_manifest, write_metrics, write_model_card
from train.common.run import manifest_fields


def write_prompt_classifier_files(
    spec, model_args, training_args, recipe: dict, metrics: dict, saved: dict
) -> None:
    """Write lorasmith.json, metrics.json and the model card next to the saved model (``saved``: the manifest's
    ``adapter`` / ``merged`` entries). Main process only."""
    output_dir = training_args.output_dir
    manifest = manifest_fields(KIND, model_args, saved)
    write_manifest(
        output_dir,
        {
            **manifest,
            "labels": spec.label_names,
            "text_columns": spec.text_columns,
            "multi_label": False,
            "prompt": spec.to_dict(),
        },
    )
    all_metrics = write_metrics(output_dir, metrics)
    write_model_card(
        output_dir,
        title=f"{manifest['gguf_file'] or model_args.model_name_or_path} prompt classifier",
        base_model=model_args.model_name_or_path,
        task="prompt-classification",
        recipe=recipe,
        metrics={
            group: scalar_metrics(values)
            for group, values in all_metrics.items()
            if isinstance(values, dict)
        },
        usage=(
            "```bash\n"
            f'python -m eval.classify --model {output_dir} --text "..."\n'
            f"python -m eval.classify --model {output_dir} --data rows.csv\n"
            "```\n\n```python\nfrom lorasmith.classifiers.prompt import PromptClassifier\n"
            f"clf = PromptClassifier.load({str(output_dir)!r})\n"
            f"clf.predict([{{{', '.join(repr(c) + ': ...' for c in spec.text_columns)}}}])\n```"
        ),
    )
