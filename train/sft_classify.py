"""Prompt classification with an instruction LM: TRL ``SFTTrainer``, LoRA / QLoRA, label scoring.

    # CPU quickstart: SmolLM2-135M (packaged GGUF) + LoRA on the bundled sample data, a few minutes
    accelerate launch -m train.sft_classify --config configs/classify/sft_quickstart.yaml
    # QLoRA (4-bit nf4) on a 7B model, one GPU
    accelerate launch -m train.sft_classify --config configs/classify/sft_qlora.yaml
    # any recipe key can be overridden on the command line
    python -m train.sft_classify --config configs/classify/sft_quickstart.yaml --lora_r 8 --max_train_samples 200

Each labeled row becomes a prompt — ``system_message`` plus ``template`` filled with the row's columns, through
the tokenizer's chat template when it has one — and the label's answer text (``labels: {label: answer}``);
the loss is on the answer only. Evaluation scores every label's answer by its log-likelihood after the prompt
(``eval.label_scoring``): accuracy, macro/micro P/R/F1, per class, confusion matrix and calibration error,
at every evaluation (best checkpoint by macro-F1) and at the end into ``metrics.json``.

Output folder: ``adapter/``, ``merged/`` (``export_merged``), ``lorasmith.json`` (prompt, labels, base model),
``metrics.json``, ``README.md``, ``recipe.yaml``. Use it with
``python -m eval.classify --model OUTPUT_DIR --data FILE`` or ``--text "..."``.
"""

from __future__ import annotations

import sys

from accelerate import PartialState
from transformers import AutoModelForCausalLM, set_seed
from transformers.trainer_utils import IntervalStrategy

import data_utils
from data_utils.prompts import (
    PromptSpec,
    build_verbalizers,
    default_template,
    resolve_format,
    template_columns,
)
from eval.artifacts import write_manifest
from eval.label_scoring import KIND
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from train.classify.sft_config import SFTClassifyConfig
from train.classify.sft_data import build_sft_rows, check_verbalizers, label_rows
from train.classify.sft_trainer import PromptClassificationTrainer, scalar_metrics
from train.common import cli, export, outputs, resume, runtime
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.modeling import (
    apply_tuning,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_model_source,
)
from train.common.plan import print_plan, run_plan


def make_parser():
    return cli.make_parser((DataArguments, ModelArguments, RunArguments, SFTClassifyConfig))


def main(argv=None):
    data_args, model_args, run_args, training_args = cli.parse_recipe(make_parser(), argv)
    world_size = runtime.check_launch(training_args, run_args, model_args)
    text_columns, template = prompt_columns(data_args, training_args)
    configure(data_args, model_args, training_args)

    train_ds = data_utils.load(
        data_args.train_data,
        task="labeled",
        columns=data_args.columns,
        text_columns=text_columns,
        **label_options(data_args),
    )
    label_names = train_ds.features["label"].names
    eval_ds = None
    if data_args.eval_data:
        eval_ds = data_utils.load(
            data_args.eval_data,
            task="labeled",
            columns=data_args.columns,
            text_columns=text_columns,
            label_names=label_names,
        )
    train_ds, eval_ds = (
        _head(train_ds, data_args.max_train_samples),
        _head(eval_ds, data_args.max_eval_samples),
    )

    tokenizer = load_tokenizer(model_args)
    spec = PromptSpec(
        template=template,
        verbalizers=build_verbalizers(
            label_names, data_args.labels if isinstance(data_args.labels, dict) else None
        ),
        system_message=training_args.system_message,
        format=resolve_format(training_args.prompt_format, tokenizer),
        max_length=model_args.max_length,
    )
    answer_ids = check_verbalizers(tokenizer, spec, label_rows(train_ds.select([0]), spec)[0])
    train_rows = build_sft_rows(train_ds, tokenizer, spec, data_args.train_data)
    eval_rows = build_sft_rows(eval_ds, tokenizer, spec, data_args.eval_data) if eval_ds is not None else None

    set_seed(
        training_args.seed
    )  # LoRA's random init must not depend on what ran before (resume compares runs)
    model = load_model(model_args, AutoModelForCausalLM)
    model = apply_tuning(
        model, model_args, "CAUSAL_LM", gradient_checkpointing=training_args.activation_checkpointing
    )
    plan = run_plan(training_args, model_args, world_size, count_parameters(model))
    plan.update(
        {
            "model": model_args.model_name_or_path
            + (f" ({model_args.gguf_file})" if model_args.gguf_file else ""),
            "prompt": f"{spec.format} prompt-completion, template columns {spec.text_columns}",
            "labels -> answer tokens": answer_ids,
            "train rows": f"{len(train_ds)} (longest {train_rows.longest} tokens, {train_rows.shortened} shortened "
            f"to max_length {spec.max_length})",
            "eval rows": f"{len(eval_ds)} ({eval_rows.shortened} shortened)"
            if eval_ds is not None
            else "none",
            "output_dir": training_args.output_dir,
        }
    )
    print_plan("train.sft_classify", plan)
    if run_args.dry_run:
        return None

    trainer = PromptClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows.dataset,
        eval_dataset=eval_rows.dataset if eval_rows is not None else None,
        processing_class=tokenizer,
        callbacks=resume.stop_callbacks(),
        prompt_spec=spec,
        scoring_rows=label_rows(eval_ds, spec) if eval_ds is not None else (),
        scoring_labels=eval_ds["label"] if eval_ds is not None else (),
    )
    state = PartialState()
    recipe = outputs.recipe_dict(data_args, model_args, run_args, training_args)
    resume_from = resume.prepare_output_dir(training_args, run_args, recipe)  # also writes recipe.yaml

    metrics: dict = {}
    if training_args.eval_before_training and eval_ds is not None:
        metrics["before"] = trainer.classification_report()
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if resume.stopped_by_signal(trainer):
        return trainer
    metrics["train"] = train_result.metrics
    if eval_ds is not None:
        # the model that is saved: the best checkpoint with load_best_model_at_end
        final = trainer.evaluate()
        metrics["eval"] = {**trainer.last_report, "loss": final["eval_loss"]}
        if training_args.compare_generation:
            metrics["generation"] = generation_report(trainer, label_rows(eval_ds, spec), eval_ds["label"])

    saved = export.export_trained_model(
        trainer, model_args, AutoModelForCausalLM, export_merged=run_args.export_merged
    )
    if state.is_main_process:
        save_outputs(spec, model_args, training_args, recipe, metrics, saved)
    state.wait_for_everyone()
    return trainer


def prompt_columns(data_args: DataArguments, training_args: SFTClassifyConfig) -> tuple[list[str], str]:
    """(text columns to load, template): from the template's placeholders, else ``text_columns``, else ``text``."""
    if training_args.template:
        columns = template_columns(training_args.template)
        if data_args.text_columns and set(data_args.text_columns) != set(columns):
            raise ConfigError(
                f"text_columns {list(data_args.text_columns)} differ from the template's placeholders {columns}: "
                "drop text_columns (the template names the columns) or make them agree"
            )
        return columns, training_args.template
    columns = list(data_args.text_columns or ["text"])
    return columns, default_template(columns)


def configure(data_args: DataArguments, model_args: ModelArguments, training_args: SFTClassifyConfig) -> None:
    """Validate the recipe's combination and settle the fields that depend on it (before any data is read)."""
    if data_args.task not in (None, "labeled"):
        raise ConfigError(
            f"sft_classify trains on labeled data: task must be 'labeled' (or unset), got {data_args.task!r}"
        )
    data_args.task = "labeled"
    if not data_args.train_data:
        raise ConfigError(
            "train_data is required: a labeled table with the template's columns and a label column"
        )
    if model_args.max_length is None or model_args.max_length < 8:
        raise ConfigError(f"max_length must be a number of tokens >= 8, got {model_args.max_length}")
    # one max_length for our length guard and TRL's truncation (which then never triggers: rows already fit)
    training_args.max_length = model_args.max_length
    training_args.trust_remote_code = model_args.trust_remote_code
    if not data_args.eval_data:  # nothing to evaluate on: no evaluation, no best-checkpoint selection
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.load_best_model_at_end = False


def label_options(data_args: DataArguments) -> dict:
    """``label_names`` for ``data_utils.load`` when the recipe lists the labels (in id order)."""
    options = data_args.load_options() if data_args.labels else {}
    return {"label_names": options["label_names"]} if "label_names" in options else {}


def _head(dataset, count: int | None):
    if dataset is None or count is None or count >= len(dataset):
        return dataset
    return dataset.select(range(count))


def generation_report(trainer: PromptClassificationTrainer, rows: list[dict], gold: list[int]) -> dict:
    """Free-generation comparison: accuracy counting unmapped answers as wrong, and their share."""
    answers = trainer.classifier().generate_labels(rows, trainer.args.per_device_eval_batch_size)
    names = trainer.prompt_spec.label_names
    correct = sum(answer == names[label] for answer, label in zip(answers, gold, strict=True))
    return {"accuracy": correct / len(rows), "unmapped_rate": sum(a is None for a in answers) / len(rows)}


def save_outputs(spec, model_args, training_args, recipe, metrics, saved: dict) -> None:
    """lorasmith.json, metrics.json and the model card next to the saved model (``saved``: the manifest's
    ``adapter`` / ``merged`` entries). Main process only."""
    output_dir = training_args.output_dir
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file)
    write_manifest(
        output_dir,
        {
            "lorasmith_version": outputs.lorasmith_version(),
            "kind": KIND,
            "base_model": source.path,
            "gguf_file": source.gguf_file,
            **saved,
            "labels": spec.label_names,
            "text_columns": spec.text_columns,
            "multi_label": False,
            "prompt": spec.to_dict(),
        },
    )
    all_metrics = outputs.write_metrics(output_dir, metrics)
    outputs.write_model_card(
        output_dir,
        title=f"{source.gguf_file or model_args.model_name_or_path} prompt classifier",
        base_model=model_args.model_name_or_path,
        task="prompt-classification",
        recipe=recipe,
        metrics={
            group: scalar_metrics(values) for group, values in all_metrics.items() if isinstance(values, dict)
        },
        usage=(
            "```bash\n"
            f'python -m eval.classify --model {output_dir} --text "..."\n'
            f"python -m eval.classify --model {output_dir} --data rows.csv\n"
            "```\n\n```python\nfrom eval.label_scoring import PromptClassifier\n"
            f"clf = PromptClassifier.load({str(output_dir)!r})\n"
            f"clf.predict([{{{', '.join(repr(c) + ': ...' for c in spec.text_columns)}}}])\n```"
        ),
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
