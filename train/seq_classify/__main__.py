"""Sequence classification with a classification head: AutoModelForSequenceClassification + PEFT (SEQ_CLS) + Trainer.

Quickstart (packaged MiniLM + LoRA on the bundled sample reviews, CPU, ~1 minute):

    python -m train.seq_classify --config configs/classify/seqcls_quickstart.yaml

LoRA on DistilBERT / IMDb, any topology via the accelerate config:

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

from transformers import DataCollatorWithPadding, set_seed

from lorasmith import recipe_parser
from lorasmith.process import run_main
from train.common import run
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.launch import sharded_forward
from train.common.modeling import count_parameters, resolve_max_length
from train.common.packing import decide_packing
from train.common.plan import padding_row, print_plan, run_plan
from train.seq_classify.chunks import WindowCollator
from train.seq_classify.config import SeqClassifyConfig
from train.seq_classify.data import PreparedData, data_summary, long_rows_summary, prepare_data
from train.seq_classify.export import classifier_manifest, export_classifier, write_classifier_files
from train.seq_classify.model import build_classifier
from train.seq_classify.packing import PackedClassifier, packing_problem
from train.seq_classify.trainer import (
    ClassificationLoss,
    SeqClassifyTrainer,
    final_evaluation,
    metrics_function,
)


def make_parser():
    return recipe_parser.make_parser((DataArguments, ModelArguments, RunArguments, SeqClassifyConfig), module="train.seq_classify", description=__doc__)


def main(argv=None):
    (data_args, model_args, run_args, training_args), world_size = run.start(make_parser(), argv)
    model_args = resolve_max_length(model_args)  # reads the model's config: after every recipe check
    args = (data_args, model_args, run_args, training_args)
    data = prepare_data(data_args, model_args, training_args, world_size)  # before any model weights
    if run.check_output_dir(args):  # this recipe's run is finished: nothing to do, nothing touched
        return None

    set_seed(training_args.seed)  # the head's and LoRA's random init must not depend on what ran before
    built = build_classifier(
        model_args,
        data.label_names,
        training_args.hf_problem_type,
        data.tokenizer.pad_token_id,
        gradient_checkpointing=training_args.activation_checkpointing,
        head_pooling=training_args.head_pooling,
    )
    packing = not data.long_text.chunks and decide_packing(
        training_args.packing, lambda: packing_problem(built.model, data.tokenizer, model_args.max_length),
        "train.seq_classify", sharded=sharded_forward(training_args),
    )  # fmt: skip
    plan = run_plan(training_args, model_args, world_size, count_parameters(built.model))
    plan.update(_plan(data_args, model_args, training_args, data, built))
    plan["padding"] = padding_row(
        data.train.dataset["input_ids"], training_args, model_args.max_length, packing, built.model.config
    )
    print_plan("train.seq_classify", plan)
    if run_args.dry_run:
        return None

    long_text, multi_label, threshold = data.long_text, training_args.multi_label, training_args.threshold
    trainer = SeqClassifyTrainer(
        model=built.model,
        args=training_args,
        train_dataset=data.train.dataset,
        eval_dataset=data.evaluation.dataset if data.evaluation else None,
        processing_class=data.tokenizer,
        data_collator=WindowCollator(data.tokenizer) if long_text.chunks else DataCollatorWithPadding(data.tokenizer),
        compute_metrics=metrics_function(data.label_names, multi_label, threshold),
        callbacks=run.lifecycle_callbacks(),
        loss=ClassificationLoss(multi_label, data.class_weights),
        chunk_pooling=long_text.chunk_pooling if long_text.chunks else None,
        packed=PackedClassifier(built.model, data.tokenizer.pad_token_id, model_args.max_length) if packing else None,
    )
    recipe, resume_from = run.prepare_output_dir(args)

    result = run.train(trainer, resume_from)
    if result is None:  # stopped by a signal: the checkpoint is saved, the same command resumes
        return trainer
    metrics = {"train": {**result.metrics, "best_checkpoint": trainer.state.best_model_checkpoint}}
    if data.evaluation is not None:  # the model that is saved: the best checkpoint with load_best_model_at_end
        metrics["eval"] = final_evaluation(trainer, data.evaluation.dataset, data.label_names, multi_label, threshold)
    metrics["data"] = data_summary(data.train, data.evaluation, model_args.max_length)

    saved = export_classifier(trainer, model_args, built.load_kwargs, export_merged=run_args.export_merged)
    manifest = classifier_manifest(
        model_args, saved, data.label_names, data.text_columns, multi_label=multi_label, threshold=threshold,
        long_text=long_text, head_pooling=training_args.head_pooling,
    )
    run.finish(
        trainer, recipe, saved, write_classifier_files, training_args.output_dir, manifest, model_args, recipe, metrics
    )
    return trainer


def _plan(data_args, model_args, training_args, data: PreparedData, built) -> dict:
    """Plan rows of this entrypoint (the shared rows come from ``run_plan``)."""
    splits = (("train", data.train), ("eval", data.evaluation))
    weights = data.class_weights
    return {
        "model": model_args.model_name_or_path,
        "problem": f"{training_args.problem_type}, {len(data.label_names)} labels: {', '.join(data.label_names)}",
        "inputs": " + ".join(data.text_columns) + (" (pair encoding)" if len(data.text_columns) > 1 else ""),
        "train data": f"{data_args.train_data} ({data.train.rows} rows)",
        "eval data": f"{data_args.eval_data} ({data.evaluation.rows} rows)"
        if data.evaluation
        else "none (no evaluation)",
        "max_length": f"{model_args.max_length} tokens",
        "head reads": "the mean of the token states (head_pooling: mean)"
        if training_args.head_pooling == "mean"
        else "the model's own token (first for encoders, last for decoders)",
        "long texts": "; ".join(
            long_rows_summary(split, name, data.long_text, data.tokenizer, model_args.max_length)
            for name, split in splits
            if split is not None
        ),
        "epochs / max_steps": f"{training_args.num_train_epochs:g} / {training_args.max_steps}",
        "best checkpoint by": training_args.metric_for_best_model
        if training_args.load_best_model_at_end
        else "-",
        "class weights": "none" if weights is None else ", ".join(f"{w:.3g}" for w in weights.tolist()),
        "trained in full (head)": ", ".join(built.trained_modules),
        "kept out of quantization": ", ".join(built.head_modules),
        "output_dir": training_args.output_dir,
    }

if __name__ == "__main__":
    sys.exit(run_main(main))
