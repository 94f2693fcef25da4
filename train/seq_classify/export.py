"""What a finished ``train.seq_classify`` run leaves in ``output_dir`` (the ``lorasmith.run_folder`` contract).

- ``adapter/``: LoRA adapter + the head (PEFT ``modules_to_save``) + tokenizer, written through
  ``Trainer.save_model`` so DeepSpeed consolidates weights first;
- ``merged/``: the adapter merged into an unquantized base with the same head shape and label map — a plain
  ``AutoModelForSequenceClassification`` folder (``pipeline("text-classification", model=...)`` works, except
  for a ``head_pooling: mean`` head, which only ``SequenceClassifier`` applies);
  fully fine-tuned runs save only this (gathered from the shards under ZeRO-3);
- ``lorasmith.json`` (kind ``seq_classifier``: labels, text columns, multi-label, threshold, max length, and
  ``long_text``: truncation / chunks, and ``head_pooling``, which ``SequenceClassifier`` applies again at
  prediction),
  ``metrics.json`` and the ``README.md`` model card; ``recipe.yaml`` comes from ``train.common.run.prepare_output_dir``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForSequenceClassification

from lorasmith.classifiers.sequence import KIND
from lorasmith.run_folder import MERGED_DIR, scalar_metrics, write_manifest, write_metrics, write_model_card
from lorasmith.tokenizer_inputs import LongTextOptions
from train.common.args import ModelArguments
from train.common.export import export_trained_model
from train.common.plan import print_plan
from train.common.run import manifest_fields


def export_classifier(trainer, model_args: ModelArguments, load_kwargs: dict, *, export_merged: bool) -> dict:
    """``export_trained_model`` for a sequence classifier; call on EVERY process. ``load_kwargs`` rebuild the
    head for the merge. Returns the manifest's ``adapter``/``merged``."""
    return export_trained_model(
        trainer, model_args, AutoModelForSequenceClassification, export_merged=export_merged, **load_kwargs
    )


def classifier_manifest(
    model_args: ModelArguments,
    saved: dict,
    label_names: list[str],
    text_columns: list[str],
    *,
    multi_label: bool,
    threshold: float,
    long_text: LongTextOptions | None = None,
    head_pooling: str = "model",
) -> dict:
    """``lorasmith.json`` of kind ``seq_classifier`` (how ``lorasmith.classifiers.sequence.SequenceClassifier`` reloads it)."""
    return {
        **manifest_fields(KIND, model_args, saved),
        "labels": list(label_names),
        "text_columns": list(text_columns),
        "multi_label": multi_label,
        "threshold": threshold,
        "max_length": model_args.max_length,
        "long_text": (long_text or LongTextOptions()).as_manifest(),
        "head_pooling": head_pooling,
    }


def write_classifier_files(
    output_dir: str | Path, manifest: dict, model_args: ModelArguments, recipe: dict, metrics: dict
) -> None:
    """Write metrics.json, the manifest and the model card (with the ``eval`` scalars and per-class F1), and
    print the evaluation. Main process only."""
    write_metrics(output_dir, metrics)
    write_manifest(output_dir, manifest)
    card_metrics = {"eval": scalar_metrics(metrics["eval"], per_class_f1=True)} if "eval" in metrics else {}
    example = ", ".join(f'"{name}": "..."' for name in manifest["text_columns"])
    usage = f"""Predict from the command line (label names, head and adapter are read from this folder):

```bash
python -m eval.classify --model {output_dir} --text "It was good." --text "Not a fan, don't recommend."
python -m eval.classify --model {output_dir} --data new_rows.csv     # columns: {", ".join(manifest["text_columns"])}
```

In Python:

```python
from lorasmith.classifiers.sequence import SequenceClassifier
classifier = SequenceClassifier.load("{output_dir}")
rows = [{{{example}}}]
classifier.predict(rows)        # label names, e.g. {manifest["labels"][0]!r}
classifier.predict_proba(rows)  # (N, {len(manifest["labels"])}) probabilities, columns in label id order
```
""" + _plain_transformers_usage(output_dir, manifest)
    kind = "multi-label" if manifest["multi_label"] else f"{len(manifest['labels'])}-class"
    write_model_card(
        output_dir,
        title=f"{Path(str(model_args.model_name_or_path)).name}: {kind} sequence classifier",
        base_model=str(model_args.model_name_or_path),
        task="text-classification",
        recipe=recipe,
        metrics=card_metrics,
        usage=usage,
    )
    if card_metrics:
        print_plan("evaluation", {k: round(v, 4) for k, v in card_metrics["eval"].items()})


def _plain_transformers_usage(output_dir: str | Path, manifest: dict) -> str:
    """The model card's paragraph on loading ``merged/`` with transformers alone ("" without a merged model)."""
    if not manifest.get("merged"):
        return ""
    merged = Path(output_dir) / MERGED_DIR
    if manifest.get("head_pooling") == "mean":
        return f"""
`{merged}` holds the trained weights, but its head was trained on the mean of the token states
(`head_pooling: mean`), which `SequenceClassifier` applies and transformers' own `pipeline` does not (it would
read the first token): load it with `SequenceClassifier.load("{output_dir}")`.
"""
    return f"""
With plain transformers (merged model, label map in its config):

```python
from transformers import pipeline
classify = pipeline("text-classification", model="{merged}")
```
"""
