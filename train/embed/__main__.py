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
from lorasmith import recipe_parser
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from train.common import launch, learnable, outputs, run
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.modeling import count_parameters, load_tokenizer
from train.common.plan import print_plan, run_plan
from train.embed.collator import ContrastiveCollator
from train.embed.config import (
    EmbedConfig,
    check_refine_task,
    encoding_mode,
    resolve_mini_batches,
    resolve_task_defaults,
)
from train.embed.export import export_embedding_model, write_embedding_card, write_embedding_manifest
from train.embed.loss_spec import build_objective
from train.embed.matryoshka import matryoshka_dims
from train.embed.model import build_embedding_model
from train.embed.objective import ContrastiveObjective
from train.embed.packing import resolve_packing
from train.embed.rotation import fit_pca_basis, fit_rotation
from train.embed.sampling import (
    DatasetMix,
    MixCollator,
    SamplerEpoch,
    SingleDatasetBatches,
    TrainSource,
    train_sources,
)
from train.embed.tasks import EMBED_TASKS, EmbedTask, embed_task
from train.embed.trainer import ContrastiveTrainer


def make_parser():
    return recipe_parser.make_parser((DataArguments, ModelArguments, RunArguments, EmbedConfig))


def configure(data_args: DataArguments, config: EmbedConfig) -> tuple[EmbedTask, ContrastiveObjective]:
    """(task record, objective) from the recipe, with the task's defaults filled into ``config`` and every loss,
    Matryoshka width list and encoding option checked before any data or model is read (ConfigError)."""
    resolve_mini_batches(config, launch.distribution(config))
    task = embed_task(data_args.task)
    resolve_task_defaults(config, task, has_eval_data=bool(data_args.eval_data))
    matryoshka = matryoshka_dims(config.matryoshka_dims, config.matryoshka_weights)
    return task, build_objective(task, config.loss, temperature=config.temperature, matryoshka=matryoshka)


def load_training_data(data_args: DataArguments, config: EmbedConfig, task: EmbedTask, world_size: int):
    """(train, eval or None), read and checked: several training datasets each suit the loss, every dataset can
    teach something (``learnable``), and the run makes at least one optimizer step."""
    sources = train_sources(data_args.train_data, data_args.task, data_args.columns)
    check_source_tasks(sources, task, config)
    train_ds, eval_ds = load_datasets(data_args, config, sources)
    parts = (
        zip(train_ds.names, train_ds.datasets, train_ds.tasks, strict=True)
        if isinstance(train_ds, DatasetMix)
        else [(str(data_args.train_data), train_ds, task)]
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


def check_source_tasks(sources: list[TrainSource] | None, task: EmbedTask, config: EmbedConfig) -> None:
    """ConfigError naming the dataset when one of several training datasets has a task the loss cannot use."""
    for source in sources or ():
        try:
            check_refine_task(config, embed_task(source.task))
            build_objective(
                embed_task(source.task), config.loss or task.default_loss, temperature=config.temperature
            )
        except ConfigError as error:
            raise ConfigError(f"train_data '{source.name}' (task {source.task}): {error}") from None


def training_batches(
    train_ds, tokenizer, task: EmbedTask, model_args, config: EmbedConfig, world_size: int, packing: bool
):
    """(collator, batch sampler or None, extra callbacks): one dataset -> the task's collator and Trainer's
    sampling; a ``DatasetMix`` -> single-dataset batches (``sampling.py``) collated by each dataset's task.
    ``packing``: the run packs its forwards (``packing.resolve_packing``)."""

    def collator(for_task):
        return ContrastiveCollator(
            tokenizer,
            for_task,
            model_args.max_length,
            config.query_prefix,
            config.document_prefix,
            config.mini_batch_size,
            packing,
        )

    if not isinstance(train_ds, DatasetMix):
        return collator(task), None, []
    sampler = SingleDatasetBatches(
        train_ds.sizes,
        config.per_device_train_batch_size,
        world_size,
        sampling=config.dataset_sampling,
        seed=config.seed if config.data_seed is None else config.data_seed,
        drop_last=config.dataloader_drop_last,
    )
    return (
        MixCollator([collator(t) for t in train_ds.tasks], collator(task)),
        sampler,
        [SamplerEpoch(sampler)],
    )


def main(argv=None):
    args = recipe_parser.parse_recipe(make_parser(), argv)
    data_args, model_args, run_args, config = args
    world_size = launch.check_launch(config, run_args, model_args)
    task, objective = configure(data_args, config)
    train_ds, eval_ds = load_training_data(data_args, config, task, world_size)  # before any model is loaded
    if run.check_output_dir(args):  # this recipe's run is finished: nothing to do, nothing touched
        return None

    tokenizer = load_tokenizer(model_args)
    set_seed(config.seed)  # LoRA's random init must not depend on what ran before (Trainer seeds only later)
    model = build_embedding_model(
        model_args, config.pooling, config.normalize, bool(config.activation_checkpointing), config.dropout
    )
    if objective.matryoshka is not None:
        objective.matryoshka.check_width(model.hidden_size())
    packing = resolve_packing(config, model, tokenizer, model_args.max_length)
    collator, train_batches, batch_callbacks = training_batches(
        train_ds, tokenizer, task, model_args, config, world_size, packing
    )
    plan = run_plan(config, model_args, world_size, count_parameters(model))
    plan.update(
        _plan(data_args, model_args, config, objective, train_ds, eval_ds, world_size, train_batches, packing)
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
        objective=objective,
        task=task,
        lora_only=bool(model_args.use_peft or model_args.adapter_path) and not model_args.full_finetune,
        train_batches=train_batches,
    )
    recipe, resume_from = run.prepare_output_dir(args)

    if config.matryoshka_pca_basis:  # on the untrained weights, also when resuming (the checkpoint loads later)
        fit_pca_basis(trainer, train_ds, config.pca_rotation_samples, config.seed)
    metrics = {}
    if config.eval_before_training and resume_from is None:
        metrics["before"] = _strip_prefix(trainer.evaluate(metric_key_prefix="before"), "before_")
    result = run.train(trainer, resume_from)
    if result is None:  # stopped by a signal: the checkpoint is saved, the same command resumes
        return trainer
    metrics["train"] = result.metrics
    if config.pca_rotation:  # after training (and the best-model reload), before the final evaluation
        fit_rotation(trainer, train_ds, config.pca_rotation_samples, config.seed)
    if eval_ds is not None:
        metrics["after"] = _strip_prefix(trainer.evaluate(metric_key_prefix="after"), "after_")

    saved = export_embedding_model(trainer, model_args, export_merged=run_args.export_merged)
    run.finish(
        trainer, recipe, saved, _write_run_files, trainer, model_args, data_args.task, recipe, metrics, saved
    )
    return trainer


def _plan(
    data_args, model_args, config, objective, train_ds, eval_ds, world_size: int, train_batches, packing: bool
) -> dict:
    """Plan rows of this entrypoint (the shared rows come from ``run_plan``)."""
    global_anchors = config.per_device_train_batch_size * world_size
    rotation_rows = min(config.pca_rotation_samples, len(train_ds))  # what pca_rotation / matryoshka_pca_basis fit on
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
        + (
            f", trained in the untrained model's PCA basis (fit on {rotation_rows} rows' texts)"
            if config.matryoshka_pca_basis
            else ""
        )
        + (
            f", PCA rotation after training (fit on {rotation_rows} rows' texts"
            + (
                f", refined {config.rotation_refine_steps} steps on "
                + ("the training loss" if config.rotation_refine_objective == "training_loss" else "neighbour rankings")
                if config.rotation_refine_steps
                else ""
            )
            + ")"
            if config.pca_rotation
            else ""
        ),
        "best model by": config.metric_for_best_model if config.load_best_model_at_end else "(last model)",
        "output_dir": config.output_dir,
    }


def _strip_prefix(metrics: dict, prefix: str) -> dict:
    return {
        name.removeprefix(prefix): value for name, value in metrics.items() if not name.endswith("_runtime")
    }


# The before / after columns of the console table and the model card (metrics.json holds every metric).
HEADLINE_METRICS = ("spearman", "pearson", "recall@1", "recall@5", "ndcg@5", "ndcg@10", "mrr@10", "map@10")


def _write_run_files(trainer, model_args, task: str, recipe: dict, metrics: dict, saved: dict) -> None:
    """metrics.json, lorasmith.json and the model card; prints the before / after table. Main process only."""
    output_dir = trainer.args.output_dir
    all_metrics = outputs.write_metrics(output_dir, metrics)
    write_embedding_manifest(trainer, model_args, saved)
    write_embedding_card(
        output_dir,
        model_args,
        task,
        recipe,
        _headline(all_metrics),
        trainer.args.matryoshka_dims,
        rotated=trainer.args.pca_rotation,
        refine_steps=trainer.args.rotation_refine_steps,
        refine_objective=trainer.args.rotation_refine_objective,
        pca_basis=trainer.args.matryoshka_pca_basis,
    )
    if "after" in metrics:
        print(outputs.metrics_table(_headline(metrics)), flush=True)


def _headline(metrics: dict) -> dict:
    """The ``HEADLINE_METRICS`` of the before / after groups."""
    return {
        group: outputs.scalar_metrics(values, HEADLINE_METRICS)
        for group, values in metrics.items()
        if group in ("before", "after")
    }


if __name__ == "__main__":
    sys.exit(run_main(main))
