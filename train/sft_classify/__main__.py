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
(``lorasmith.classifiers.prompt``): accuracy, macro/micro P/R/F1, per class, confusion matrix and calibration error,
at every evaluation (best checkpoint by macro-F1) and at the end into ``metrics.json``.

Output folder: ``adapter/``, ``merged/`` (``export_merged``), ``lorasmith.json`` (prompt, labels, base model),
``metrics.json``, ``README.md``, ``recipe.yaml``. Use it with
``python -m eval.classify --model OUTPUT_DIR --data FILE`` or ``--text "..."``.
"""

from __future__ import annotations

import sys

from transformers import AutoModelForCausalLM, set_seed

from lorasmith import recipe_parser
from lorasmith.process import run_main
from train.common import export, run
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.launch import sharded_forward
from train.common.modeling import apply_tuning, count_parameters, load_model
from train.common.packing import decide_packing
from train.common.plan import padding_row, print_plan, run_plan
from train.sft_classify.config import SFTClassifyConfig, resolve_sft_config
from train.sft_classify.data import PromptData, label_rows, prepare_prompt_data
from train.sft_classify.export import write_prompt_classifier_files
from train.sft_classify.packing import PackedCausalLM, packing_problem
from train.sft_classify.trainer import PromptClassificationTrainer, generation_report


def make_parser():
    return recipe_parser.make_parser((DataArguments, ModelArguments, RunArguments, SFTClassifyConfig), module="train.sft_classify", description=__doc__)


def main(argv=None):
    (data_args, model_args, run_args, training_args), world_size = run.start(make_parser(), argv)
    data_args, model_args, training_args = resolve_sft_config(data_args, model_args, training_args)
    args = (data_args, model_args, run_args, training_args)
    data = prepare_prompt_data(data_args, model_args, training_args, world_size)  # before any model weights
    if run.check_output_dir(args):  # this recipe's run is finished: nothing to do, nothing touched
        return None

    set_seed(training_args.seed)  # LoRA's random init must not depend on what ran before (resume compares runs)
    model = load_model(model_args, AutoModelForCausalLM)
    model = apply_tuning(model, model_args, "CAUSAL_LM", training_args.activation_checkpointing)
    packing = decide_packing(
        training_args.packing, lambda: packing_problem(model, data.tokenizer, model_args.max_length),
        "train.sft_classify", sharded=sharded_forward(training_args),
    )  # fmt: skip
    plan = run_plan(training_args, model_args, world_size, count_parameters(model))
    plan.update(_plan(model_args, training_args, data))
    plan["padding"] = padding_row(
        data.train_rows.dataset["input_ids"], training_args, model_args.max_length, packing, model.config
    )
    print_plan("train.sft_classify", plan)
    if run_args.dry_run:
        return None

    trainer = PromptClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train_rows.dataset,
        eval_dataset=data.eval_rows.dataset if data.eval_rows is not None else None,
        processing_class=data.tokenizer,
        callbacks=run.lifecycle_callbacks(),
        prompt_spec=data.spec,
        scoring_rows=label_rows(data.evaluation, data.spec) if data.evaluation is not None else (),
        scoring_labels=data.evaluation["label"] if data.evaluation is not None else (),
        packed=PackedCausalLM(model, data.tokenizer.pad_token_id, model_args.max_length) if packing else None,
    )
    recipe, resume_from = run.prepare_output_dir(args)

    metrics: dict = {}
    if training_args.eval_before_training and data.evaluation is not None:
        metrics["before"] = trainer.classification_report()
    result = run.train(trainer, resume_from)
    if result is None:  # stopped by a signal: the checkpoint is saved, the same command resumes
        return trainer
    metrics["train"] = result.metrics
    if data.evaluation is not None:  # the model that is saved: the best checkpoint with load_best_model_at_end
        final = trainer.evaluate()
        metrics["eval"] = {**trainer.last_report, "loss": final["eval_loss"]}
        if training_args.compare_generation:
            metrics["generation"] = generation_report(
                trainer, label_rows(data.evaluation, data.spec), data.evaluation["label"]
            )

    saved = export.export_trained_model(
        trainer, model_args, AutoModelForCausalLM, export_merged=run_args.export_merged
    )
    run.finish(
        trainer, recipe, saved, write_prompt_classifier_files, data.spec, model_args, training_args, recipe, metrics, saved
    )
    return trainer


def _plan(model_args, training_args, data: PromptData) -> dict:
    """Plan rows of this entrypoint (the shared rows come from ``run_plan``)."""
    spec, train_rows, eval_rows = data.spec, data.train_rows, data.eval_rows
    return {
        "model": model_args.model_name_or_path
        + (f" ({model_args.gguf_file})" if model_args.gguf_file else ""),
        "prompt": f"{spec.format} prompt-completion, template columns {spec.text_columns}",
        "labels -> answer tokens": data.answer_ids,
        "train rows": f"{len(train_rows.dataset)} (longest {train_rows.longest} tokens)",
        "eval rows": len(eval_rows.dataset) if eval_rows is not None else "none",
        "long texts": "; ".join(
            f"{spec.truncation}: {rows.shortened} of {len(rows.dataset)} {name} rows longer than max_length "
            f"{spec.max_length} tokens {'cut in the middle' if spec.truncation == 'head_tail' else 'cut at the end'}"
            f" (template, system message and answer kept)"
            for name, rows in (("train", train_rows), ("eval", eval_rows))
            if rows is not None
        ),
        "output_dir": training_args.output_dir,
    }


if __name__ == "__main__":
    sys.exit(run_main(main))
