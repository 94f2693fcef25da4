"""The steps every training entrypoint takes, in the order it takes them (each a plain function).

    args, world_size = start(parser, argv)                   # parsed, launch-checked, training args resolved
    data_args, model_args, run_args, training_args = args
    require_train_data(data_args, "..."); first_rows(...)
    learnable.check_...(train data); learnable.check_optimizer_steps(rows, training_args, world_size)
    if check_output_dir(args): return                        # this recipe's run is finished: exit 0, untouched
    set_seed(training_args.seed)                             # before the model: LoRA's init is random
    ... build the model, print the plan, stop on --dry_run ...
    trainer = SomeTrainer(..., callbacks=lifecycle_callbacks())
    recipe, resume_from = prepare_output_dir(args)           # every process; writes recipe.yaml
    result = train(trainer, resume_from)                     # None: stopped by a signal, checkpoint saved
    saved = export...(trainer, ...)                          # every process (ZeRO-3 gathers)
    finish(trainer, recipe, saved, write_files, ...)         # lorasmith.json, metrics.json, README.md, then
                                                             # the run record that says the run is complete

Invariants: every process calls every step (saving and resuming are collective); only the main process
(``PartialState().is_main_process``, the one spelling of that check in the entrypoints) writes run files;
a run is complete only once ``finish`` wrote its record, after everything else (``train.common.resume``).
Exit codes (``lorasmith.process.run_main``): 0 done (or nothing to do), 2 a user error before or during the
run, 3 the run finished but learned nothing (outputs kept, not marked complete), 4 training diverged (inf / NaN
loss or exploded weights: checkpoints kept, nothing exported), 130 Ctrl-C.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import IntervalStrategy, TrainOutput

from lorasmith import recipe_parser, run_folder, run_lock
from lorasmith.errors import ConfigError, NothingLearned
from train.common import divergence, launch, learnable, resume
from train.common.args import RunArguments
from train.common.modeling import resolve_model_source
from train.common.signals import StopOnSignal


def require_train_data(data_args, expected: str) -> None:
    """ConfigError unless the recipe names ``train_data``; ``expected`` says what the entrypoint trains on."""
    if not data_args.train_data:
        raise ConfigError(f"train_data is required: {expected}")


def first_rows(dataset, count: int | None):
    """The first ``count`` rows of ``dataset`` (``max_train_samples`` / ``max_eval_samples``); None keeps every
    row, and a missing dataset stays None. A count below 1 is a ConfigError (0 once silently meant "all")."""
    if count is not None and count < 1:
        raise ConfigError(
            f"max_train_samples / max_eval_samples is {count}: that selects no rows. Leave it unset (null) to use "
            "every row, or give a positive count"
        )
    if dataset is None or count is None or count >= len(dataset):
        return dataset
    return dataset.select(range(count))


def start(parser, argv) -> tuple[tuple, int]:
    """``(data_args, model_args, run_args, training_args)`` and the world size, before any data or model is read:
    the recipe parsed (``recipe_parser.parse_recipe``), every launch check (``launch.check_launch``), then the
    training arguments resolved (:func:`resolve_training_args`). The entrypoint then resolves its own keys and,
    before reading data, fits an unset ``max_length`` to the model (``modeling.resolve_max_length``)."""
    data_args, model_args, run_args, parsed = recipe_parser.parse_recipe(parser, argv)
    world_size = launch.check_launch(parsed, model_args)
    training_args = resolve_training_args(parsed, run_args, world_size, has_eval_data=bool(data_args.eval_data))
    return (data_args, model_args, run_args, training_args), world_size


def resolve_training_args(training_args, run_args: RunArguments, world_size: int, *, has_eval_data: bool):
    """The training arguments the Trainer gets, resolved once before any model loads (a new object: the parsed
    one is never edited):

    - ``gradient_accumulation_steps`` from ``global_batch_size`` (``launch.global_batch_accumulation``);
    - without evaluation data: no evaluation and no best-checkpoint selection;
    - ``save_model: false`` (log-only): no checkpoints, and ``lorasmith_save_model`` tells the export to save
      nothing (``export_trained_model``).
    """
    changes = {"gradient_accumulation_steps": launch.global_batch_accumulation(training_args, run_args, world_size)}
    if not has_eval_data:
        changes.update(eval_strategy=IntervalStrategy.NO, load_best_model_at_end=False)
    if not run_args.save_model:
        changes.update(save_strategy=IntervalStrategy.NO, load_best_model_at_end=False)
    return replace_args(training_args, lorasmith_save_model=run_args.save_model, **changes)


def replace_args(training_args, **changes):
    """A copy of ``training_args`` (a TrainingArguments dataclass) with ``changes``: ``dataclasses.replace`` for
    the fields ``__init__`` takes, then the ``init=False`` fields and lorasmith's own ``lorasmith_*`` flags
    carried over (or set from ``changes``)."""
    init = {f.name for f in dataclasses.fields(training_args) if f.init}
    copy = dataclasses.replace(training_args, **{k: v for k, v in changes.items() if k in init})
    carried = {f.name for f in dataclasses.fields(training_args) if not f.init}
    carried |= {name for name in vars(training_args) if name.startswith("lorasmith_")}
    for name in carried | (changes.keys() - init):
        setattr(copy, name, changes.get(name, getattr(training_args, name, None)))
    return copy


def lifecycle_callbacks() -> list[TrainerCallback]:
    """The callbacks every entrypoint passes to its Trainer: stop on SIGTERM/SIGUSR1 with a checkpoint,
    mark checkpoints complete (what auto-resume trusts), refuse a LoRA model that activation checkpointing
    would leave without gradients."""
    return [StopOnSignal(), resume.MarkCompleteCheckpoints(), launch.CheckTrainableInputs()]


def stopped_by_signal(trainer) -> bool:
    """True when training ended early because of SIGTERM / SIGUSR1 (a complete checkpoint was saved)."""
    return any(isinstance(cb, StopOnSignal) and cb.stopped for cb in trainer.callback_handler.callbacks)


def check_output_dir(args: Sequence) -> bool:
    """True when ``output_dir`` holds this recipe's finished run and nothing more is asked (the entrypoint
    returns: exit 0, nothing touched); ConfigError when the folder may not be used (``resume.check_output_dir``)
    or another run holds it. A run that goes on (not a dry run) takes the folder's lock (``lorasmith.run_lock``,
    held until the command ends), the only thing written here. Call on every process once the recipe is final,
    before any model loads."""
    run_args, training_args, recipe = _resolved_recipe(args)
    finished = resume.check_output_dir(training_args, run_args, recipe)
    if not finished and not run_args.dry_run:
        run_lock.lock_run_folder(training_args.output_dir)
    return finished


def prepare_output_dir(args: Sequence) -> tuple[dict, str | None]:
    """(recipe, checkpoint to resume from or None) for the parsed recipe ``args`` (``recipe_parser.parse_recipe``'s tuple).

    The recipe is :func:`recipe_dict` of ``args``; ``output_dir`` is checked against it and ``recipe.yaml``
    written by ``resume.prepare_output_dir``. Call on every process, after the Trainer is built.
    """
    run_args, training_args, recipe = _resolved_recipe(args)
    return recipe, resume.prepare_output_dir(training_args, run_args, recipe)


def _resolved_recipe(args: Sequence) -> tuple[RunArguments, TrainingArguments, dict]:
    """(run arguments, training arguments, recipe) of the resolved ``args`` (:func:`resolve_training_args`)."""
    run_args = next(a for a in args if isinstance(a, RunArguments))
    training_args = next(a for a in args if isinstance(a, TrainingArguments))
    return run_args, training_args, recipe_dict(*args)


def recipe_dict(*arguments) -> dict:
    """The resolved run configuration: every field of the shared dataclasses and the non-default training fields.

    Training arguments contribute only what differs from their class defaults (TrainingArguments has ~150
    fields, most irrelevant), excluding bookkeeping that changes between identical runs.
    """
    recipe: dict = {}
    for args in arguments:
        values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
        if hasattr(args, "to_dict"):  # a TrainingArguments subclass
            defaults = _training_defaults(type(args))
            values = {k: v for k, v in values.items() if defaults.get(k, object()) != v and k not in _VOLATILE}
        recipe.update(values)
    return recipe


_VOLATILE = {"logging_dir", "resume_from_checkpoint", "local_rank", "_n_gpu", "use_cpu", "report_to"}


def _training_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def train(trainer, resume_from: str | None) -> TrainOutput | None:
    """``trainer.train`` from ``resume_from``; None when SIGTERM / SIGUSR1 stopped it (its checkpoint is saved and
    the same command resumes from it: the caller ends the run without evaluating or exporting), and
    KeyboardInterrupt (exit 130, one line) when Ctrl-C did; ``TrainingDiverged`` (exit 4) after the first step
    whose loss was inf / NaN or whose weights exploded on any process (``divergence``), before it is saved.

    The result's metrics say what they cover: ``global_step`` (the run's total), ``resumed_from_step``
    (resumed runs) and ``train_loss_steps`` (the steps this call trained, which ``train_loss`` and the speed
    metrics average over; a call that trained none has no ``train_loss``: transformers would report 0.0).
    """
    first_step = (resume.read_marker(resume_from) or {}).get("step", 0) if resume_from else 0
    stop = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal)), None)
    if resume_from and 0 < trainer.args.max_steps <= first_step and not trainer.is_deepspeed_enabled:
        return _reload_finished_training(trainer, resume_from, stop)
    divergence.guard(trainer)
    result = trainer.train(resume_from_checkpoint=resume_from)
    if stop is not None and stop.interrupted:
        raise KeyboardInterrupt(
            f"saved checkpoint-{trainer.state.global_step} in {trainer.args.output_dir}; run the same command "
            "again to resume from it"
        )
    if stopped_by_signal(trainer):
        return None
    metrics = dict(result.metrics, global_step=trainer.state.global_step)
    metrics["train_loss_steps"] = trainer.state.global_step - first_step
    if resume_from:
        metrics["resumed_from_step"] = first_step
    if metrics["train_loss_steps"] == 0:
        metrics = {k: v for k, v in metrics.items() if not k.startswith("train_") or k == "train_loss_steps"}
    return TrainOutput(result.global_step, metrics.get("train_loss"), metrics)


def _reload_finished_training(trainer, checkpoint: str, stop: StopOnSignal | None) -> TrainOutput:
    """The result of a run whose ``checkpoint`` is already at ``max_steps`` (it stopped after its last save:
    killed while evaluating or exporting): the model and state are loaded from it, and nothing is trained.
    ``Trainer.train`` would run one optimizer step past ``max_steps`` (it checks the limit after a step).
    ZeRO checkpoints are loaded only inside ``train``, so DeepSpeed runs still go through it."""
    trainer._load_from_checkpoint(checkpoint)  # the hook ContrastiveTrainer overrides (guarded by a test)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        trainer._load_best_model()
    if stop is not None:
        stop.on_train_end(trainer.args, trainer.state, trainer.control)  # the previous signal handlers return
    step = trainer.state.global_step
    print(f"lorasmith: {checkpoint} is at max_steps {trainer.args.max_steps}: nothing left to train", flush=True)
    metrics = {"global_step": step, "train_loss_steps": 0, "resumed_from_step": step, "epoch": trainer.state.epoch}
    return TrainOutput(step, None, metrics)


def manifest_fields(kind: str, model_args, saved: dict) -> dict:
    """The ``lorasmith.json`` entries every kind shares: version, kind, base model (+ GGUF file) and the
    ``adapter`` / ``merged`` folders that ``saved`` (an export's return value) names."""
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file)
    return {
        "lorasmith_version": run_folder.lorasmith_version(),
        "kind": kind,
        "base_model": source.path,
        "gguf_file": source.gguf_file,
        **saved,
    }


def finish(trainer, recipe: dict, saved: dict, write: Callable[..., None], *args) -> None:
    """The last step, on every process: ``write(*args)`` on the main process (lorasmith.json, metrics.json,
    README.md), then the run record that marks the run complete, written last and atomically.

    A run that learned nothing (``learnable.nothing_learned``) is not marked complete and raises
    NothingLearned (exit 3) after its files are written: they are kept for inspection, and "saved" is not
    printed as a success.
    """
    output_dir = trainer.args.output_dir
    on_main_process(write, *args)
    problem = learnable.nothing_learned(trainer)
    if problem:
        raise NothingLearned(
            f"the run finished but learned nothing: {problem}. Its files are in {output_dir} for inspection; the "
            "run is not marked complete."
        )
    earlier = run_folder.read_run_record(output_dir)
    record = resume.completion_record(recipe, trainer.args, trainer.state, earlier)
    on_main_process(run_folder.write_run_record, output_dir, record)
    if PartialState().is_main_process:
        folders = ", ".join(k for k, v in saved.items() if v) or "metrics only (no model saved)"
        print(f"saved to {output_dir}: {folders}; run complete", flush=True)


def on_main_process(write: Callable[..., None], *args) -> None:
    """``write(*args)`` on the main process only; every process returns once it is done."""
    state = PartialState()
    if state.is_main_process:
        write(*args)
    state.wait_for_everyone()
