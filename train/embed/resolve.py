"""The embedding recipe resolved once, before any data or model is read: :func:`resolve_run` -> :class:`EmbedRun`.

An extension (:class:`Extension`, e.g. ``rotation.py``) owns its recipe key, checks, plan phrase, card text and
hooks in one module; adding one is that module, its field in ``config.py`` and one line in :func:`resolve_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lorasmith.errors import ConfigError
from train.common.launch import check_best_metric
from train.common.run import replace_args
from train.embed.config import DEFAULT_MINI_BATCH_SIZE, EmbedConfig
from train.embed.evaluation import metric_names
from train.embed.instructions import Instructions
from train.embed.loss_spec import build_objective
from train.embed.matryoshka import matryoshka_dims
from train.embed.objective import ContrastiveObjective
from train.embed.rotation import MatryoshkaRotation
from train.embed.sampling import SAMPLING, TrainSource, train_sources
from train.embed.tasks import EVAL_METRICS, EmbedTask, embed_task

# Distributions whose forward runs collectives per layer: every process must run the same number of forwards.
SHARDED_FORWARD = ("deepspeed-zero3", "fsdp")


class Extension(Protocol):
    """An optional step around training, resolved from its own recipe key (None when the key is unset).
    ``check_task`` raises a ConfigError for a training dataset it cannot serve; ``before_training`` runs on every
    process before the first evaluation (also on resume), ``after_training`` after the best-model reload."""

    def check_task(self, task: EmbedTask) -> None: ...
    def plan_phrase(self, train_rows: int) -> str: ...
    def card_text(self) -> str: ...
    def before_training(self, trainer, train_ds) -> None: ...
    def after_training(self, trainer, train_ds) -> None: ...


@dataclass(frozen=True)
class EmbedRun:
    """A resolved embedding run: the ``config`` the trainer gets (task defaults and ``mini_batch_size`` filled),
    the ``task`` record, the named training ``sources`` (None for one plain source), the ``objective`` (every loss
    and weight at every Matryoshka width), the recipe's ``extensions``, in the order they run, and the
    ``instructions`` (``instructions.py``) of the recipe's task and of each named source (``dataset_instructions``,
    by name; empty for one plain source)."""

    config: EmbedConfig
    task: EmbedTask
    sources: list[TrainSource] | None
    objective: ContrastiveObjective
    extensions: tuple[Extension, ...]
    instructions: Instructions
    dataset_instructions: dict[str, Instructions]


def resolve_run(data_args, config: EmbedConfig, distribution: str) -> EmbedRun:
    """Resolve the parsed recipe for ``distribution`` (``launch.distribution``).

    Raises:
        ConfigError: a bad loss, Matryoshka width list, extension setting or ``dataset_sampling``; a training
            dataset whose task the loss or an extension cannot use (named); what the task or launch cannot run.
    """
    if config.dataset_sampling not in SAMPLING:
        raise ConfigError(
            f"dataset_sampling must be one of {', '.join(SAMPLING)}; got {config.dataset_sampling!r}"
        )
    task = embed_task(data_args.task)
    matryoshka = matryoshka_dims(config.matryoshka_dims, config.matryoshka_weights)
    objective = build_objective(task, config.loss, temperature=config.temperature, matryoshka=matryoshka)
    extensions = tuple(
        extension
        for extension in (MatryoshkaRotation.from_recipe(config.matryoshka_rotation, matryoshka),)
        if extension is not None
    )
    sources = train_sources(data_args.train_data, data_args.task, data_args.columns)
    for extension in extensions if sources is None else ():
        extension.check_task(task)
    for source in sources or ():
        try:
            source_task = embed_task(source.task)
            build_objective(source_task, config.loss or task.default_loss, temperature=config.temperature)
            for extension in extensions:
                extension.check_task(source_task)
        except ConfigError as error:
            raise ConfigError(f"train_data '{source.name}' (task {source.task}): {error}") from None
    config = resolve_mini_batches(config, distribution)
    config = resolve_task_defaults(config, task, has_eval_data=bool(data_args.eval_data))
    instructions = Instructions.resolve(config.query_prefix, config.document_prefix, task)
    dataset_instructions = {
        source.name: Instructions.resolve(
            config.query_prefix if source.query_prefix is None else source.query_prefix,
            config.document_prefix if source.document_prefix is None else source.document_prefix,
            embed_task(source.task),
            where=f"train_data '{source.name}': ",
        )
        for source in sources or ()
    }
    return EmbedRun(config, task, sources, objective, extensions, instructions, dataset_instructions)


def resolve_task_defaults(config: EmbedConfig, task: EmbedTask, has_eval_data: bool) -> EmbedConfig:
    """``config`` with the settings that depend on the task and on whether there is eval data filled (a new one).

    - ``eval_task`` defaults to the task's (``EmbedTask.eval_task``);
    - without eval data: no evaluation and no best-model reload;
    - ``metric_for_best_model`` left unset (TrainingArguments turns that into ``loss``, which an embedding
      evaluation does not produce) becomes the eval task's main metric (``EVAL_METRICS``), higher is better;
      a name the evaluation does not report is a ConfigError (``launch.check_best_metric``).

    """
    eval_task = config.eval_task or task.eval_task
    if not has_eval_data:
        return replace_args(
            config,
            eval_task=eval_task,
            eval_strategy="no",
            load_best_model_at_end=False,
            eval_before_training=False,
        )
    updates = {"eval_task": eval_task}
    if config.metric_for_best_model in (None, "loss", "eval_loss"):
        updates.update(metric_for_best_model=EVAL_METRICS[eval_task], greater_is_better=True)
    config = replace_args(config, **updates)
    check_best_metric(config, metric_names(config.eval_task, config.eval_ks, config.matryoshka_dims))
    return config


def resolve_mini_batches(config: EmbedConfig, distribution: str) -> EmbedConfig:
    """``config`` with ``mini_batch_size`` filled for ``distribution`` (a new one); refuses what cannot run.

    Under DeepSpeed ZeRO-3 and FSDP every forward gathers the sharded weights layer by layer, a collective every
    process must join: length-sorted chunks (their number differs between processes) and the gradient cache
    cannot run there. The default becomes 0 (one forward per role, as many on every process); an explicit
    ``mini_batch_size > 0`` or ``gradient_cache`` is a ConfigError naming the launches that support them.
    """
    if distribution in SHARDED_FORWARD:
        name = "DeepSpeed ZeRO-3" if distribution == "deepspeed-zero3" else "FSDP"
        if config.gradient_cache or config.mini_batch_size or config.packing:
            raise ConfigError(
                f"gradient_cache, packing and mini_batch_size > 0 cannot run under {name}: its sharded forwards "
                "need the same number of forwards on every process, and length-sorted chunks differ per process. "
                "Use accelerate_configs/ddp.yaml or zero2.yaml (ZeRO-2 shards the optimizer and gradients and "
                "keeps the cache), or set gradient_cache: false, packing: false and mini_batch_size: 0"
            )
        return replace_args(config, mini_batch_size=0)
    if config.mini_batch_size is None:
        return replace_args(config, mini_batch_size=DEFAULT_MINI_BATCH_SIZE)
    return config
