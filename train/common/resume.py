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
- ``output_dir`` must be on a filesystem every node sees (each rank reads it to pick the same checkpoint).
- Keep ``save_total_limit`` >= 2: the Trainer rotates old checkpoints before the new one is marked complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

import yaml
from accelerate import PartialState
from transformers import TrainerCallback

from lorasmith.errors import ConfigError
from train.common import outputs

logger = logging.getLogger(__name__)

MARKER_NAME = "lorasmith_checkpoint.json"
INCOMPLETE_DIR = "incomplete-checkpoints"
PREVIOUS_RUNS_DIR = "previous-runs"
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
# What a lorasmith run writes at the top of output_dir (besides checkpoint-*), moved away by overwrite_output_dir.
RUN_ARTIFACTS = ("recipe.yaml", "metrics.json", "lorasmith.json", "README.md", "adapter", "merged", "runs")


def comparable_recipe(recipe: dict) -> dict:
    """``recipe`` as YAML-plain data without the keys that may change on a restart (see ``RESTART_KEYS``)."""
    plain = yaml.safe_load(yaml.safe_dump(outputs.yaml_safe(recipe), sort_keys=True))
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
        path = Path(args.output_dir) / outputs.RECIPE_NAME
        self._recipe = yaml.safe_load(path.read_text()) if path.exists() else {}

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
            outputs.write_atomic(folder / MARKER_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")
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


def prepare_output_dir(training_args, run_args, recipe: dict) -> str | None:
    """Check ``output_dir`` against ``recipe``, write ``recipe.yaml``, and return the checkpoint to resume from.

    Returns ``training_args.resume_from_checkpoint`` when given, else the newest complete checkpoint of this
    recipe, else None (fresh start). Call it on every rank after the Trainer is built, before ``train()``.

    Raises:
        ConfigError: ``output_dir`` holds another recipe's run (its ``recipe.yaml`` or its checkpoints differ)
            and ``overwrite_output_dir`` is off; or ``resume_from_checkpoint`` names a missing folder.
    """
    output_dir = Path(training_args.output_dir)
    state = PartialState()
    explicit = training_args.resume_from_checkpoint
    if explicit and not Path(explicit).is_dir():
        raise ConfigError(f"resume_from_checkpoint {explicit} is not a folder (expected output_dir/checkpoint-N)")

    # 1. Read (every rank, before anything moves).
    current = comparable_recipe(recipe)
    fingerprint = recipe_fingerprint(recipe)
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
    other_run = bool(differences or foreign)
    if other_run and not run_args.overwrite_output_dir and not explicit:
        raise ConfigError(_other_run_message(output_dir, differences, [f for f, _ in foreign]))

    resume_from = explicit or (None if other_run else (str(ours[-1][1]) if ours else None))
    state.wait_for_everyone()

    # 2. Act (main process), then let every rank go on.
    if state.is_main_process:
        if other_run and not explicit:
            _move_previous_run(output_dir, [f for f, _ in foreign] + [f for _, f, _ in ours] + incomplete)
        else:
            _move_incomplete(output_dir, [f for f in incomplete if not explicit or Path(explicit) != f])
        output_dir.mkdir(parents=True, exist_ok=True)
        outputs.write_recipe(output_dir, recipe)
        if resume_from:
            _warn_on_batch_change(resume_from, recipe, training_args, state.num_processes)
            print(f"lorasmith: resuming from {resume_from}", flush=True)
    state.wait_for_everyone()
    return resume_from


def _previous_recipe(output_dir: Path) -> dict | None:
    path = output_dir / outputs.RECIPE_NAME
    if not path.exists():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return comparable_recipe(loaded) if isinstance(loaded, dict) else None


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
