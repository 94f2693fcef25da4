"""Sequence classification with a classification head: AutoModelForSequenceClassification + PEFT (SEQ_CLS) + Trainer.

Quickstart (packaged MiniLM + LoRA on the bundled sample reviews, CPU, ~1 minute):

    python -m train.seq_classify --config configs/classify/seqcls_quickstart.yaml

LoRA on DistilBERT / IMDb (seed 004), any topology via the accelerate config:

    accelerate launch -m train.seq_classify --config configs/classify/seqcls_distilbert_imdb.yaml \
        --train_data train.jsonl --eval_data test.jsonl --output_dir outputs/distilbert-imdb

QLoRA on a decoder (the head ``score`` stays in full precision and is trained and saved with the adapter):

    accelerate launch --config_file accelerate_configs/single_gpu.yaml -m train.seq_classify \
        --config configs/classify/seqcls_llm_qlora.yaml

Full fine-tuning: ``--use_peft false --full_finetune true --learning_rate 2e-5``. Pair inputs:
``--text_columns sentence1 sentence2``. Multi-label: ``--problem_type multi_label`` (labels as a list or
``tag_delimiter``-separated string). Predict afterwards: ``python -m eval.classify --model OUTPUT --text "..."``.
"""

from __future__ import annotations

import sys

import numpy as np
from accelerate import PartialState
from transformers import DataCollatorWithPadding, IntervalStrategy, set_seed

from data_utils import label_names_from_dataset
from lorasmith.process import run_main
from train.classify.seqcls_config import SeqClassifyConfig
from train.classify.seqcls_data import load_splits, text_columns_of, tokenize_split
from train.classify.seqcls_export import classifier_manifest, export_classifier, write_classifier_files
from train.classify.seqcls_model import build_classifier
from train.classify.seqcls_trainer import (
    ClassificationLoss,
    SeqClassifyTrainer,
    class_weight_vector,
    evaluation_report,
    logged_metrics,
    metrics_function,
)
from train.common import cli, outputs, resume, runtime
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.modeling import count_parameters, load_tokenizer
from train.common.plan import print_plan, run_plan


def make_parser():
    return cli.make_parser((DataArguments, ModelArguments, RunArguments, SeqClassifyConfig))


def main(argv=None):
    data_args, model_args, run_args, training_args = cli.parse_recipe(make_parser(), argv)
    world_size = runtime.check_launch(training_args, run_args, model_args)
    multi_label = training_args.multi_label

    train_raw, eval_raw = load_splits(data_args, multi_label)  # data errors before any model is loaded
    label_names, text_columns = label_names_from_dataset(train_raw), text_columns_of(train_raw)
    tokenizer = load_tokenizer(model_args)
    train_split = tokenize_split(train_raw, tokenizer, model_args.max_length, multi_label)
    eval_split = tokenize_split(eval_raw, tokenizer, model_args.max_length, multi_label) if eval_raw else None
    weights = class_weight_vector(
        training_args.class_weights,
        np.asarray(train_split.dataset["labels"]).astype(np.int64),
        label_names,
        multi_label,
    )
    if eval_split is None:  # nothing to evaluate or to pick a best checkpoint with
        training_args.eval_strategy, training_args.load_best_model_at_end = IntervalStrategy.NO, False

    set_seed(training_args.seed)  # the head's and LoRA's random init must not depend on what ran before
    built = build_classifier(
        model_args,
        label_names,
        training_args.hf_problem_type,
        tokenizer.pad_token_id,
        gradient_checkpointing=training_args.activation_checkpointing,
    )
    plan = run_plan(training_args, model_args, world_size, count_parameters(built.model))
    plan.update(
        _task_plan(data_args, model_args, training_args, label_names, text_columns, train_split, eval_split)
    )
    plan["class weights"] = "none" if weights is None else ", ".join(f"{w:.3g}" for w in weights.tolist())
    plan["trained in full (head)"] = ", ".join(built.trained_modules)
    plan["kept out of quantization"] = ", ".join(built.head_modules)
    print_plan("train.seq_classify", plan)
    if run_args.dry_run:
        return

    trainer = SeqClassifyTrainer(
        model=built.model,
        args=training_args,
        train_dataset=train_split.dataset,
        eval_dataset=eval_split.dataset if eval_split else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics_function(label_names, multi_label, training_args.threshold),
        callbacks=resume.stop_callbacks(),
        loss=ClassificationLoss(multi_label, weights),
    )
    recipe = outputs.recipe_dict(data_args, model_args, run_args, training_args)
    resume_from = resume.prepare_output_dir(training_args, run_args, recipe)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if resume.stopped_by_signal(trainer):
        return

    metrics = {"train": {**train_result.metrics, "best_checkpoint": trainer.state.best_model_checkpoint}}
    if eval_split is not None:
        prediction = trainer.predict(eval_split.dataset, metric_key_prefix="eval")
        report = evaluation_report(
            prediction.predictions, prediction.label_ids, label_names, multi_label, training_args.threshold
        )
        metrics["eval"] = {**report, "loss": prediction.metrics["eval_loss"]}
    metrics["data"] = {
        "train_rows": train_split.rows,
        "train_truncated": train_split.truncated,
        "max_length": model_args.max_length,
        **({"eval_rows": eval_split.rows, "eval_truncated": eval_split.truncated} if eval_split else {}),
    }
    saved = export_classifier(trainer, model_args, built.load_kwargs, export_merged=run_args.export_merged)
    if trainer.args.should_save:
        outputs.write_metrics(training_args.output_dir, metrics)
        manifest = classifier_manifest(
            model_args,
            saved,
            label_names,
            text_columns,
            multi_label=multi_label,
            threshold=training_args.threshold,
        )
        card_metrics = {"eval": logged_metrics(metrics["eval"])} if "eval" in metrics else {}
        write_classifier_files(training_args.output_dir, manifest, model_args, recipe, card_metrics)
        if "eval" in metrics:
            print_plan("evaluation", {k: round(v, 4) for k, v in card_metrics["eval"].items()})
    PartialState().wait_for_everyone()


def _task_plan(
    data_args, model_args, training_args, label_names, text_columns, train_split, eval_split
) -> dict:
    """Plan rows of this entrypoint (the shared rows come from ``run_plan``)."""
    truncated = f"{train_split.truncated} of {train_split.rows} train rows"
    if eval_split:
        truncated += f", {eval_split.truncated} of {eval_split.rows} eval rows"
    return {
        "model": model_args.model_name_or_path,
        "problem": f"{training_args.problem_type}, {len(label_names)} labels: {', '.join(label_names)}",
        "inputs": " + ".join(text_columns) + (" (pair encoding)" if len(text_columns) > 1 else ""),
        "train data": f"{data_args.train_data} ({train_split.rows} rows)",
        "eval data": f"{data_args.eval_data} ({eval_split.rows} rows)"
        if eval_split
        else "none (no evaluation)",
        f"truncated to {model_args.max_length} tokens": truncated,
        "epochs / max_steps": f"{training_args.num_train_epochs:g} / {training_args.max_steps}",
        "best checkpoint by": training_args.metric_for_best_model
        if training_args.load_best_model_at_end
        else "-",
        "output_dir": training_args.output_dir,
    }


if __name__ == "__main__":
    sys.exit(run_main(main))
