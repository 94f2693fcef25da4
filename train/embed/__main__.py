"""Contrastive fine-tuning of text embedding models (encoders or decoder LLMs), LoRA or full, on 1..N processes.

    # the quickstart: packaged MiniLM + LoRA on the bundled sample pairs, evaluated before and after
    python -m train.embed --config configs/embed/quickstart.yaml

    # LoRA, 2 processes (cross-device negatives are gathered: the gradient is the big batch's)
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m train.embed \\
        --config configs/embed/sts_cosent.yaml --use_peft true --lora_r 16 --per_device_train_batch_size 32

    # full fine-tuning, unsupervised SimCSE on a text file with one sentence per line
    python -m train.embed --config configs/embed/simcse_unsup.yaml --use_peft false --full_finetune true \\
        --train_data my_sentences.txt

Tasks (``task:``): ``simcse_unsup`` (sentences; two dropout views), ``pairs``, ``triplets`` (hard negatives),
``scored_pairs`` (STS: cosent / angle / cosine_mse / ibn), ``tags`` (text -> tags, multi-positive).
Task records: ``train/embed/tasks.py``; losses and their options: ``train/embed/loss_spec.py``.
Every key: ``python -m train.embed --help``.
Output folder: ``adapter/``, ``merged/`` (transformers + sentence-transformers), ``metrics.json``,
``lorasmith.json``, ``README.md``, ``recipe.yaml``, ``checkpoint-*/``.
"""

from __future__ import annotations

import dataclasses
import sys

from transformers import set_seed

import data_utils
from lorasmith import recipe_parser, run_folder
from lorasmith.pooling import wants_eos
from lorasmith.process import run_main
from lorasmith.tokenizer_inputs import append_eos, appends_eos
from train.common import launch, learnable, run
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.modeling import count_parameters, load_tokenizer, resolve_max_length
from train.common.plan import print_plan, run_plan
from train.embed.collator import ContrastiveCollator
from train.embed.config import EmbedConfig, encoding_mode
from train.embed.export import export_embedding_model, write_embedding_card, write_embedding_manifest
from train.embed.instructions import Instructions
from train.embed.model import build_embedding_model
from train.embed.packing import resolve_packing
from train.embed.resolve import EmbedRun, resolve_run
from train.embed.sampling import DatasetMix, MixCollator, SamplerEpoch, SingleDatasetBatches, TrainSource
from train.embed.tasks import EMBED_TASKS, EmbedTask
from train.embed.trainer import ContrastiveTrainer


def make_parser():
    return recipe_parser.make_parser((DataArguments, ModelArguments, RunArguments, EmbedConfig), module="train.embed", description=__doc__)


def load_training_data(data_args: DataArguments, embed_run: EmbedRun, world_size: int):
    """(train, eval or None), read and checked: every dataset can teach something (``learnable``), and the run
    makes at least one optimizer step."""
    config = embed_run.config
    train_ds, eval_ds = load_datasets(data_args, config, embed_run.sources)
    parts = (
        zip(train_ds.names, train_ds.datasets, train_ds.tasks, strict=True)
        if isinstance(train_ds, DatasetMix)
        else [(str(data_args.train_data), train_ds, embed_run.task)]
    )
    for source, dataset, source_task in parts:
        learnable.check_contrastive_rows(dataset, source_task, source)
    learnable.check_optimizer_steps(len(train_ds), config, world_size)
    return train_ds, eval_ds


def load_datasets(data_args: DataArguments, config: EmbedConfig, sources: list[TrainSource] | None):
    """(train, eval or None) in the schemas of the training task(s) and of ``config.eval_task``. With several
    ``sources`` (``sampling.train_sources``) train is a ``DatasetMix`` of them, each in its own task's schema and
    cut to ``max_train_samples`` rows."""
    run.require_train_data(
        data_args, "a file, folder, glob or hub id (see data_utils/samples/), or a list / map of them"
    )

    def load(source, schema, columns, limit):
        options = dataclasses.replace(data_args, task=schema).load_options()
        return run.first_rows(data_utils.load(source, task=schema, columns=columns, **options), limit)

    def load_train(source, task, columns):
        return load(source, EMBED_TASKS[task].schema, columns, data_args.max_train_samples)

    if sources is None:
        train = load_train(data_args.train_data, data_args.task, data_args.columns)
    else:
        datasets = [load_train(source.data, source.task, source.columns) for source in sources]
        train = DatasetMix(
            [source.name for source in sources], datasets, [EMBED_TASKS[s.task] for s in sources]
        )
    evaluation = None
    if data_args.eval_data:
        evaluation = load(
            data_args.eval_data, config.eval_task, data_args.columns, data_args.max_eval_samples
        )
    return train, evaluation


def training_batches(train_ds, tokenizer, embed_run: EmbedRun, model_args, world_size: int, packing: bool):
    """(collator, batch sampler or None, extra callbacks): one dataset -> the task's collator and Trainer's
    sampling; a ``DatasetMix`` -> single-dataset batches (``sampling.py``) collated by each dataset's task, with
    its instructions. ``packing``: the run packs its forwards (``packing.resolve_packing``)."""
    config, task = embed_run.config, embed_run.task

    def collator(for_task: EmbedTask, instructions: Instructions):
        prefixes, size = (instructions.query, instructions.document), config.mini_batch_size
        return ContrastiveCollator(tokenizer, for_task, model_args.max_length, *prefixes, size, packing)

    if not isinstance(train_ds, DatasetMix):
        return collator(task, embed_run.instructions), None, []
    sampler = SingleDatasetBatches(
        train_ds.sizes,
        config.per_device_train_batch_size,
        world_size,
        sampling=config.dataset_sampling,
        seed=config.seed if config.data_seed is None else config.data_seed,
        drop_last=config.dataloader_drop_last,
    )
    return (
        MixCollator(
            [collator(t, embed_run.dataset_instructions[name]) for name, t in zip(train_ds.names, train_ds.tasks, strict=True)],
            collator(task, embed_run.instructions),
            train_ds.names,
        ),
        sampler,
        [SamplerEpoch(sampler)],
    )


def main(argv=None):
    (data_args, model_args, run_args, training_args), world_size = run.start(make_parser(), argv)
    embed_run = resolve_run(data_args, training_args, launch.distribution(training_args))
    model_args = resolve_max_length(model_args)  # reads the model's config: after every recipe check
    config, args = embed_run.config, (data_args, model_args, run_args, embed_run.config)
    train_ds, eval_ds = load_training_data(data_args, embed_run, world_size)  # before any model is loaded
    if run.check_output_dir(args):  # this recipe's run is finished: nothing to do, nothing touched
        return None

    tokenizer = load_tokenizer(model_args)
    set_seed(config.seed)  # LoRA's random init must not depend on what ran before (Trainer seeds only later)
    model = build_embedding_model(
        model_args, config.pooling, config.normalize, bool(config.activation_checkpointing), config.dropout
    )
    if embed_run.objective.matryoshka is not None:
        embed_run.objective.matryoshka.check_width(model.hidden_size())
    if wants_eos(config.append_eos, model.encoder, config.pooling):
        append_eos(tokenizer)  # before anything tokenizes: packing's check, the collators, evaluation, the export
    packing = resolve_packing(config, model, tokenizer, model_args.max_length)
    collator, train_batches, batch_callbacks = training_batches(
        train_ds, tokenizer, embed_run, model_args, world_size, packing
    )
    plan = run_plan(config, model_args, world_size, count_parameters(model))
    plan.update(
        _plan(data_args, model_args, embed_run, train_ds, eval_ds, world_size, train_batches, packing, tokenizer)
    )
    print_plan("train.embed", plan)
    if run_args.dry_run:
        return None

    trainer = ContrastiveTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=run.lifecycle_callbacks() + batch_callbacks,
        objective=embed_run.objective,
        task=embed_run.task,
        lora_only=bool(model_args.use_peft or model_args.adapter_path) and not model_args.full_finetune,
        train_batches=train_batches,
    )
    recipe, resume_from = run.prepare_output_dir(args)
    metrics = train_and_evaluate(trainer, embed_run.extensions, train_ds, eval_ds, resume_from)
    if metrics is None:  # stopped by a signal: the checkpoint is saved, the same command resumes
        return trainer
    saved = export_embedding_model(trainer, model_args, export_merged=run_args.export_merged)
    card_text = "\n\n".join(extension.card_text() for extension in embed_run.extensions)
    run.finish(
        trainer, recipe, saved, _write_run_files, trainer, model_args, data_args.task, recipe, metrics, saved, card_text
    )
    return trainer


def train_and_evaluate(trainer, extensions, train_ds, eval_ds, resume_from: str | None) -> dict | None:
    """Evaluate before (a fresh run with ``eval_before_training``), train, evaluate after, with every extension's
    hooks around training; the ``before`` / ``train`` / ``after`` metrics, or None when a signal stopped training."""
    for extension in extensions:  # on the untrained weights, also when resuming (the checkpoint loads later)
        extension.before_training(trainer, train_ds)
    metrics = {}
    if trainer.args.eval_before_training and resume_from is None:
        metrics["before"] = _strip_prefix(trainer.evaluate(metric_key_prefix="before"), "before_")
    result = run.train(trainer, resume_from)
    if result is None:
        return None
    metrics["train"] = result.metrics
    for extension in extensions:  # after training (and the best-model reload), before the final evaluation
        extension.after_training(trainer, train_ds)
    if eval_ds is not None:
        metrics["after"] = _strip_prefix(trainer.evaluate(metric_key_prefix="after"), "after_")
    return metrics


def _plan(
    data_args, model_args, embed_run: EmbedRun, train_ds, eval_ds, world_size: int, train_batches, packing: bool,
    tokenizer,
) -> dict:
    """Plan rows of this entrypoint (the shared rows come from ``run_plan``)."""
    config, objective = embed_run.config, embed_run.objective
    global_anchors = config.per_device_train_batch_size * world_size
    if train_batches is None:
        task = f"{data_args.task}, {len(train_ds)} training rows"
        negatives = EMBED_TASKS[data_args.task].describe_negatives(train_ds, global_anchors)
    else:  # one line per dataset: its task, rows, share of the steps, negatives
        shares = train_batches.shares()
        task = (
            f"{len(train_ds)} training rows, one dataset per batch ({config.dataset_sampling}): "
            + "; ".join(
                f"{name}: {t.name}, {len(ds)} rows, {share:.0%} of steps"
                for name, ds, t, share in zip(
                    train_ds.names, train_ds.datasets, train_ds.tasks, shares, strict=True
                )
            )
        )
        negatives = "; ".join(
            f"{name}: {t.describe_negatives(ds, global_anchors)}"
            for name, ds, t in zip(train_ds.names, train_ds.datasets, train_ds.tasks, strict=True)
        )
    widths = ""
    if objective.matryoshka is not None:
        widths = " at widths " + ", ".join(
            f"{d} x{w:g}"
            for d, w in zip(objective.matryoshka.dims, objective.matryoshka.weights, strict=True)
        )
    return {
        "task": task,
        "evaluation": f"{config.eval_task}, {len(eval_ds)} rows" if eval_ds is not None else "none",
        "model": model_args.model_name_or_path,
        "objective": ", ".join(f"{name} x{weight:g}" for name, weight in objective.weights.items()) + widths,
        "negatives per anchor": negatives,
        "encoding": encoding_mode(config, packing),
        "pooling": f"{config.pooling}, normalize={config.normalize}, max_length={model_args.max_length}"
        + (", EOS appended" if appends_eos(tokenizer) else "")
        + "".join(f", {extension.plan_phrase(len(train_ds))}" for extension in embed_run.extensions),
        "best model by": config.metric_for_best_model if config.load_best_model_at_end else "(last model)",
        "output_dir": config.output_dir,
    }


def _strip_prefix(metrics: dict, prefix: str) -> dict:
    return {
        name.removeprefix(prefix): value for name, value in metrics.items() if not name.endswith("_runtime")
    }


# The before / after columns of the console table and the model card (metrics.json holds every metric).
HEADLINE_METRICS = ("spearman", "pearson", "recall@1", "recall@5", "ndcg@5", "ndcg@10", "mrr@10", "map@10")


def _write_run_files(trainer, model_args, task: str, recipe: dict, metrics: dict, saved: dict, card_text: str) -> None:
    """metrics.json, lorasmith.json and the model card (``card_text``: the extensions' paragraphs); prints the
    before / after table. Main process only."""
    output_dir = trainer.args.output_dir
    all_metrics = run_folder.write_metrics(output_dir, metrics)
    write_embedding_manifest(trainer, model_args, saved)
    write_embedding_card(
        output_dir, model_args, task, recipe, _headline(all_metrics), trainer.args.matryoshka_dims, card_text
    )
    if "after" in metrics:
        print(run_folder.metrics_table(_headline(metrics)), flush=True)


def _headline(metrics: dict) -> dict:
    """The ``HEADLINE_METRICS`` of the before / after groups."""
    return {
        group: run_folder.scalar_metrics(values, HEADLINE_METRICS)
        for group, values in metrics.items()
        if group in ("before", "after")
    }


if __name__ == "__main__":
    sys.exit(run_main(main))
