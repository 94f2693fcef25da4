"""The steps every training entrypoint takes, in the order it takes them (each a plain function).

    args = cli.parse_recipe(parser, argv)                    # the parsed dataclasses, in parser order
    world_size = launch.check_launch(training_args, run_args, model_args)
    require_train_data(data_args, "..."); first_rows(...); disable_evaluation_without_data(...)
    set_seed(training_args.seed)                             # before the model: LoRA's init is random
    ... build the model, print the plan, stop on --dry_run ...
    trainer = SomeTrainer(..., callbacks=lifecycle_callbacks())
    recipe, resume_from = prepare_output_dir(args)           # every process; writes recipe.yaml
    result = train(trainer, resume_from)                     # None: stopped by a signal, checkpoint saved
    saved = export...(trainer, ...)                          # every process (ZeRO-3 gathers)
    on_main_process(write_files, ...)                        # lorasmith.json, metrics.json, README.md

Invariants: every process calls every step (saving and resuming are collective); only the main process
(``PartialState().is_main_process``, the one spelling of that check in the entrypoints) writes run files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from accelerate import PartialState
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, TrainOutput

from lorasmith.errors import ConfigError
from train.common import outputs, resume
from train.common.args import RunArguments
from train.common.launch import CheckTrainableInputs
from train.common.modeling import resolve_model_source
from train.common.signals import StopOnSignal


def require_train_data(data_args, expected: str) -> None:
    """ConfigError unless the recipe names ``train_data``; ``expected`` says what the entrypoint trains on."""
    if not data_args.train_data:
        raise ConfigError(f"train_data is required: {expected}")


def first_rows(dataset, count: int | None):
    """The first ``count`` rows of ``dataset`` (``max_train_samples`` / ``max_eval_samples``); None or 0 keeps
    every row, and a missing dataset stays None."""
    if dataset is None or not count or count >= len(dataset):
        return dataset
    return dataset.select(range(count))


def disable_evaluation_without_data(training_args, has_eval_data: bool) -> None:
    """Without evaluation data: no evaluation and no best-checkpoint selection (in place)."""
    if not has_eval_data:
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.load_best_model_at_end = False


def lifecycle_callbacks() -> list[TrainerCallback]:
    """The callbacks every entrypoint passes to its Trainer: stop on SIGTERM/SIGUSR1 with a checkpoint,
    mark checkpoints complete (what auto-resume trusts), refuse a LoRA model that activation checkpointing
    would leave without gradients."""
    return [StopOnSignal(), resume.MarkCompleteCheckpoints(), CheckTrainableInputs()]


def stopped_by_signal(trainer) -> bool:
    """True when training ended early because of SIGTERM / SIGUSR1 (a complete checkpoint was saved)."""
    return any(isinstance(cb, StopOnSignal) and cb.stopped for cb in trainer.callback_handler.callbacks)


def prepare_output_dir(args: Sequence) -> tuple[dict, str | None]:
    """(recipe, checkpoint to resume from or None) for the parsed recipe ``args`` (``cli.parse_recipe``'s tuple).

    The recipe is ``outputs.recipe_dict(*args)``; ``output_dir`` is checked against it and ``recipe.yaml``
    written by ``resume.prepare_output_dir``. Call on every process, after the Trainer is built.
    ``save_model: false`` (log-only) turns checkpoints off here and the export off (``export_trained_model``).
    """
    run_args = next(a for a in args if isinstance(a, RunArguments))
    training_args = next(a for a in args if isinstance(a, TrainingArguments))
    if not run_args.save_model:  # log-only: no checkpoints; export_trained_model reads the flag and saves nothing
        training_args.save_strategy, training_args.load_best_model_at_end = IntervalStrategy.NO, False
    training_args.lorasmith_save_model = run_args.save_model
    recipe = outputs.recipe_dict(*args)
    return recipe, resume.prepare_output_dir(training_args, run_args, recipe)


def train(trainer, resume_from: str | None) -> TrainOutput | None:
    """``trainer.train`` from ``resume_from``; None when a signal stopped it (its checkpoint is saved and the
    same command resumes from it: the caller ends the run without evaluating or exporting)."""
    result = trainer.train(resume_from_checkpoint=resume_from)
    return None if stopped_by_signal(trainer) else result


def manifest_fields(kind: str, model_args, saved: dict) -> dict:
    """The ``lorasmith.json`` entries every kind shares: version, kind, base model (+ GGUF file) and the
    ``adapter`` / ``merged`` folders that ``saved`` (an export's return value) names."""
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file)
    return {
        "lorasmith_version": outputs.lorasmith_version(),
        "kind": kind,
        "base_model": source.path,
        "gguf_file": source.gguf_file,
        **saved,
    }


def on_main_process(write: Callable[..., None], *args) -> None:
    """``write(*args)`` on the main process only; every process returns once it is done."""
    state = PartialState()
    if state.is_main_process:
        write(*args)
    state.wait_for_everyone()
