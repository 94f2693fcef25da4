"""Auto-resume: re-running the same command continues the run in ``output_dir`` from its last complete checkpoint.

Entrypoints reach it through ``train.common.run`` (every rank calls every function): the Trainer gets
``run.lifecycle_callbacks()`` (which include ``MarkCompleteCheckpoints``), then ``run.prepare_output_dir``
calls :func:`prepare_output_dir` here (checks, then writes recipe.yaml) and ``run.train`` resumes from its answer.

Invariants:
- A checkpoint counts only once ``lorasmith_checkpoint.json`` is in it. ``MarkCompleteCheckpoints`` writes that
  marker after every rank finished its part of the save (weights, optimizer, scheduler, per-rank RNG state,
  trainer state), so a checkpoint cut short by ``kill -9`` or a node failure is never resumed from. It is
  moved to ``output_dir/incomplete-checkpoints/`` (never deleted) so the Trainer cannot later mix its files
  with a fresh save of the same step.
- The marker carries the recipe (minus ``RESTART_KEYS``); checkpoints of another recipe are never resumed.
  An ``output_dir`` holding another recipe's run is a ConfigError naming the differing keys, unless
  ``overwrite_output_dir``: then that run's files move to ``output_dir/previous-runs/<time>/`` (nothing is deleted).
- A run is finished once ``lorasmith_run.json`` (the run record, ``lorasmith.run_folder``) says ``complete``:
  ``run.finish`` writes it last, atomically, after the exports, metrics, manifest and card. Re-running a finished
  run with the same recipe changes nothing (:func:`check_output_dir` says so, before any model loads); raising
  ``max_steps`` / ``num_train_epochs`` trains further from its last checkpoint (the record becomes
  ``complete: false`` while it does, and keeps the earlier completions for the card and the next record).
- A folder that holds no lorasmith run is refused when it holds a name a run writes (``RUN_ARTIFACTS``: the
  user's README.md or metrics.json would be overwritten) unless ``overwrite_output_dir``, which moves those
  aside like a previous run's. Other files (a sweep's ``cell.yaml`` and ``sweep.log``, data, notes) stay.
- ``output_dir`` must be on a filesystem every node sees (each rank reads it to pick the same checkpoint).
- Keep ``save_total_limit`` >= 2: the Trainer rotates old checkpoints before the new one is marked complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from accelerate import PartialState
from transformers import TrainerCallback

from lorasmith.errors import ConfigError
from lorasmith.files import write_atomic
from lorasmith.run_folder import (
    INCOMPLETE_DIR,
    MARKER_NAME,
    PREVIOUS_RUNS_DIR,
    RUN_ARTIFACTS,
    RUN_MARKS,
    read_recipe,
    read_run_record,
    write_recipe,
    write_run_record,
    yaml_safe,
)

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Recipe keys that may change between the interrupted run and the re-run without making it another run.
RESTART_KEYS = frozenset(
    {
        "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "dry_run", "export_merged",
        "num_train_epochs", "max_steps", "save_steps", "save_total_limit", "eval_steps", "logging_steps",
        "logging_first_step", "logging_dir", "report_to", "run_name", "disable_tqdm", "dataloader_num_workers",
        "per_device_eval_batch_size", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token",
    }
)
# With a global batch in the recipe, the per-device split is the launch's business (world size, memory).
BATCH_SPLIT_KEYS = frozenset({"per_device_train_batch_size", "gradient_accumulation_steps"})


def comparable_recipe(recipe: dict) -> dict:
    """``recipe`` as YAML-plain data without the keys that may change on a restart (see ``RESTART_KEYS``)."""
    plain = yaml.safe_load(yaml.safe_dump(yaml_safe(recipe), sort_keys=True))
    ignored = RESTART_KEYS | (BATCH_SPLIT_KEYS if plain.get("global_batch_size") else frozenset())
    return {k: v for k, v in plain.items() if k not in ignored}


def recipe_fingerprint(recipe: dict) -> str:
    """A short hash of ``comparable_recipe(recipe)``: equal for restarts of one run, different across recipes."""
    text = json.dumps(comparable_recipe(recipe), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class MarkCompleteCheckpoints(TrainerCallback):
    """After each checkpoint save, once all ranks are done, write ``checkpoint-N/lorasmith_checkpoint.json``.

    The marker holds the step, the world size, the global batch and the comparable recipe read from
    ``output_dir/recipe.yaml`` (written by ``prepare_output_dir`` before training starts).
    """

    def __init__(self):
        self._recipe: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._recipe = read_recipe(args.output_dir) or {}

    def on_save(self, args, state, control, **kwargs):
        distributed = PartialState()
        distributed.wait_for_everyone()  # every rank has written its RNG state / shards
        if distributed.is_main_process:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            marker = {
                "step": state.global_step,
                "world_size": distributed.num_processes,
                "global_batch_size": args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * distributed.num_processes,
                "fingerprint": recipe_fingerprint(self._recipe or {}),
                "recipe": comparable_recipe(self._recipe or {}),
            }
            write_atomic(folder / MARKER_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")
        distributed.wait_for_everyone()
        return control


def read_marker(checkpoint: str | Path) -> dict | None:
    """The completion marker of ``checkpoint`` (None when it was never completed)."""
    path = Path(checkpoint) / MARKER_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder directly in ``output_dir``, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return sorted(found)


@dataclass(frozen=True)
class OutputDirState:
    """What ``output_dir`` holds, read (never changed) on every rank before a run decides anything.

    ``ours``: ``(step, folder, marker)`` of complete checkpoints of this recipe, oldest first; ``foreign``:
    ``(folder, marker)`` of complete checkpoints of another recipe; ``incomplete``: checkpoint folders without
    a marker; ``differences``: ``key: old -> new`` lines against the stored recipe and the foreign checkpoints;
    ``collisions``: names a run writes that a folder holding no lorasmith run already has; ``record``: the run
    record (``lorasmith_run.json``) when it belongs to this recipe.
    """

    ours: list
    foreign: list
    incomplete: list
    differences: list[str]
    collisions: list[str]
    record: dict | None

    @property
    def other_run(self) -> bool:
        return bool(self.differences or self.foreign)

    @property
    def complete(self) -> bool:
        return bool(self.record and self.record.get("complete"))


def survey_output_dir(output_dir: Path, recipe: dict) -> OutputDirState:
    """Read ``output_dir`` against ``recipe`` (see :class:`OutputDirState`); a missing folder is empty."""
    fingerprint = recipe_fingerprint(recipe)
    current = comparable_recipe(recipe)
    previous = _previous_recipe(output_dir)
    ours, foreign, incomplete = [], [], []
    for step, folder in checkpoints(output_dir):
        marker = read_marker(folder)
        if marker is None:
            incomplete.append(folder)
        elif marker.get("fingerprint") == fingerprint:
            ours.append((step, folder, marker))
        else:
            foreign.append((folder, marker))
    differences = _differences(previous, current) if previous is not None else []
    differences += [d for _, marker in foreign for d in _differences(marker.get("recipe", {}), current)]
    entries = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    is_run = any(name in RUN_MARKS for name in entries) or bool(ours or foreign or incomplete)
    collisions = [] if is_run else [name for name in entries if name in RUN_ARTIFACTS]
    record = read_run_record(output_dir)
    if record is not None and record.get("fingerprint") != fingerprint:
        record = None  # another recipe's run: ``differences`` already says so
    return OutputDirState(ours, foreign, incomplete, differences, collisions, record)


def check_output_dir(training_args, run_args, recipe: dict) -> bool:
    """Before any model loads, on every rank: may this run use ``output_dir``? Reads only, writes nothing.

    Returns True when ``output_dir`` holds this recipe's complete run and the recipe asks for no more training
    (the caller ends the run, exit 0, touching nothing); False when the run goes ahead (fresh, resumed, or a
    finished run trained further because ``max_steps`` / ``num_train_epochs`` was raised).

    Raises:
        ConfigError: ``output_dir`` is a file or cannot be written; holds another recipe's run; is a folder
            holding no lorasmith run but names a run would overwrite (both unless ``overwrite_output_dir``);
            a finished run should train further but kept no checkpoint to continue from.
    """
    output_dir = Path(training_args.output_dir)
    _check_writable(output_dir)
    found = survey_output_dir(output_dir, recipe)
    _refuse_foreign_content(output_dir, found, training_args, run_args)
    if not found.complete or run_args.overwrite_output_dir or training_args.resume_from_checkpoint:
        return False
    if not _trains_further(found.record, training_args):
        if PartialState().is_main_process:
            print(_complete_message(output_dir, found.record), flush=True)
        return True
    if not found.ours:
        raise ConfigError(
            f"output_dir {output_dir} holds this recipe's finished run ({_progress(found.record)}) and the recipe "
            "asks for more training, but the run kept no checkpoint to continue from (save_strategy no or "
            "save_model false). Pass --overwrite_output_dir true to train again from the start (the finished "
            f"run moves to {output_dir / PREVIOUS_RUNS_DIR}/<time>/), or use another --output_dir."
        )
    return False


def prepare_output_dir(training_args, run_args, recipe: dict) -> str | None:
    """Check ``output_dir`` against ``recipe``, write ``recipe.yaml``, and return the checkpoint to resume from.

    Returns ``training_args.resume_from_checkpoint`` when given, else the newest complete checkpoint of this
    recipe, else None (fresh start: also when ``overwrite_output_dir`` starts a finished run over). Call it
    on every rank after the Trainer is built, before ``train()``, and after :func:`check_output_dir`.
    A finished run trained further gets its record marked ``complete: false`` here.

    Raises:
        ConfigError: as :func:`check_output_dir`; also when ``output_dir`` holds this recipe's finished run
            and nothing is left to train (``check_output_dir`` returned True and the caller went on anyway);
            or ``resume_from_checkpoint`` names a missing folder.
    """
    output_dir = Path(training_args.output_dir)
    state = PartialState()
    explicit = training_args.resume_from_checkpoint
    if explicit and not Path(explicit).is_dir():
        raise ConfigError(f"resume_from_checkpoint {explicit} is not a folder (expected output_dir/checkpoint-N)")

    # 1. Read (every rank, before anything moves).
    found = survey_output_dir(output_dir, recipe)
    _refuse_foreign_content(output_dir, found, training_args, run_args)
    start_over = found.other_run or bool(found.collisions) or (found.complete and run_args.overwrite_output_dir)
    continuing = found.complete and not start_over and not explicit
    if continuing and not _trains_further(found.record, training_args):
        raise ConfigError(_complete_message(output_dir, found.record))
    resume_from = explicit or (None if start_over else (str(found.ours[-1][1]) if found.ours else None))
    state.wait_for_everyone()

    # 2. Act (main process), then let every rank go on.
    if state.is_main_process:
        if start_over and not explicit:
            folders = [f for f, _ in found.foreign] + [f for _, f, _ in found.ours] + found.incomplete
            _move_previous_run(output_dir, folders)
        else:
            _move_incomplete(output_dir, [f for f in found.incomplete if not explicit or Path(explicit) != f])
        output_dir.mkdir(parents=True, exist_ok=True)
        if continuing:  # finished once, trained further now: not complete until run.finish says so again
            write_run_record(output_dir, {**found.record, "complete": False})
            print(f"lorasmith: {output_dir} finished at {_progress(found.record)}; training further", flush=True)
        write_recipe(output_dir, recipe)
        if resume_from:
            _warn_on_batch_change(resume_from, recipe, training_args, state.num_processes)
            print(f"lorasmith: resuming from {resume_from}", flush=True)
    state.wait_for_everyone()
    return resume_from


def completion_record(recipe: dict, training_args, state, earlier: dict | None) -> dict:
    """The run record ``run.finish`` writes last: this recipe's run is complete at ``state``'s step and epoch,
    for the asked ``max_steps`` / ``num_train_epochs``. ``earlier`` (the record found in ``output_dir``, a
    finished run trained further) becomes the first entries of ``continued_from``."""
    return {
        "complete": True,
        "fingerprint": recipe_fingerprint(recipe),
        "global_step": state.global_step,
        "epoch": state.epoch,
        "max_steps": training_args.max_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "continued_from": _earlier_completions(earlier),
    }


def _earlier_completions(record: dict | None) -> list[dict]:
    """Every completion a run record carries, oldest first (its own last), without their nested lists."""
    if not record:
        return []
    own = {k: v for k, v in record.items() if k not in ("continued_from", "complete", "fingerprint")}
    return [*record.get("continued_from", []), own]


def _check_writable(output_dir: Path) -> None:
    """ConfigError unless ``output_dir`` is (or can be created as) a folder this process may write into."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} is a file, not a folder: give a folder path (new or existing)")
    existing = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"output_dir {output_dir} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {output_dir} is not writable: no write permission on {existing}")


def _refuse_foreign_content(output_dir: Path, found: OutputDirState, training_args, run_args) -> None:
    """ConfigError for what ``overwrite_output_dir`` would move aside: another recipe's run (unless an explicit
    ``resume_from_checkpoint`` picks a checkpoint) or a non-run folder holding names a run writes."""
    if run_args.overwrite_output_dir:
        return
    if found.collisions:
        raise ConfigError(
            f"output_dir {output_dir} holds no lorasmith run but has {', '.join(found.collisions)}, which a run "
            "would overwrite. Use a new or empty --output_dir, or pass --overwrite_output_dir true to move them to "
            f"{output_dir / PREVIOUS_RUNS_DIR}/<time>/ first (nothing is deleted)."
        )
    if found.other_run and not training_args.resume_from_checkpoint:
        raise ConfigError(_other_run_message(output_dir, found.differences, [f for f, _ in found.foreign]))


def _trains_further(record: dict, training_args) -> bool:
    """Whether the recipe asks for more than the finished run trained: a higher ``max_steps`` (when set) than
    its final step, else more ``num_train_epochs`` than the epochs it completed."""
    if training_args.max_steps > 0:
        return training_args.max_steps > record["global_step"]
    return training_args.num_train_epochs > (record.get("epoch") or 0) + 1e-6


def _progress(record: dict) -> str:
    return f"step {record['global_step']}, epoch {record.get('epoch') or 0:g}"


def _complete_message(output_dir: Path, record: dict) -> str:
    return (
        f"lorasmith: {output_dir} already holds this recipe's finished run ({_progress(record)}, "
        f"{record.get('finished_at', '')}); nothing to do. Raise --max_steps or --num_train_epochs to train "
        "further from its last checkpoint, or pass --overwrite_output_dir true to start over (the finished run "
        f"moves to {output_dir / PREVIOUS_RUNS_DIR}/<time>/)."
    )


def _previous_recipe(output_dir: Path) -> dict | None:
    loaded = read_recipe(output_dir)
    return None if loaded is None else comparable_recipe(loaded)


def _differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs."""
    missing = object()
    return [
        f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def _other_run_message(output_dir: Path, differences: list[str], foreign: list[Path]) -> str:
    unique = sorted(set(differences))
    lines = [f"output_dir {output_dir} holds another run (a different recipe):"]
    lines += [f"  {d}" for d in unique[:8]] + ([f"  ... and {len(unique) - 8} more"] if len(unique) > 8 else [])
    if foreign:
        lines.append(f"  checkpoints of that run: {', '.join(f.name for f in foreign)}")
    lines.append(
        "Use another --output_dir, or pass --overwrite_output_dir true to start over there (the previous run's "
        f"files move to {output_dir / PREVIOUS_RUNS_DIR}/<time>/; nothing is deleted)."
    )
    return "\n".join(lines)


def _move_incomplete(output_dir: Path, folders: list[Path]) -> None:
    for folder in folders:
        target = _free_name(output_dir / INCOMPLETE_DIR / folder.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(target))
        logger.warning(
            "%s was not completely written (interrupted while saving); moved it to %s and will not resume from it",
            folder, target,
        )


def _move_previous_run(output_dir: Path, checkpoint_folders: list[Path]) -> None:
    target = _free_name(output_dir / PREVIOUS_RUNS_DIR / time.strftime("%Y%m%d-%H%M%S"))
    items = checkpoint_folders + [output_dir / name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
    if not items:
        return
    target.mkdir(parents=True)
    for item in items:
        shutil.move(str(item), str(target / item.name))
    logger.warning("overwrite_output_dir: moved the previous run (%s) to %s", ", ".join(i.name for i in items), target)


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def _warn_on_batch_change(checkpoint: str, recipe: dict, training_args, world_size: int) -> None:
    """The resumed epoch skips ``global_step`` global batches: that is exact only if the global batch is unchanged."""
    marker = read_marker(checkpoint) or {}
    before = marker.get("global_batch_size")
    now = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    if before is not None and before != now:
        logger.warning(
            "%s was saved with a global batch of %s (world size %s); this launch has %s (world size %s): the resumed "
            "epoch will not continue at the exact sample. Set global_batch_size in the recipe to keep it fixed.",
            checkpoint, before, marker.get("world_size"), now, world_size,
        )
