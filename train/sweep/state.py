"""What a cell folder says about its run, and the markers the sweep writes there.

Statuses:
- ``done``: ``sweep_done.json`` is present (written atomically after the cell's process exited 0, its training
  files were checked and its suite, if any, was evaluated), or the entrypoint's own files say training finished
  (``metrics.json`` with a ``train`` group, and ``lorasmith.json`` unless the cell is log-only) — the case of
  cells run by a SLURM array task, which the final ``--collect`` step completes;
- ``failed``: ``sweep_failed.json`` is present (exit code and the tail of the output); re-running retries it;
- ``interrupted``: a checkpoint or ``recipe.yaml`` exists but training did not finish; re-running resumes it
  from its last complete checkpoint (the entrypoint does that for the same output_dir and recipe);
- ``pending``: nothing ran yet.

Invariants: the sweep never writes into a ``done`` cell; the markers are written atomically (temp + rename);
every file the sweep writes for a cell is inside that cell's folder (concurrent array tasks never collide).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from lorasmith.files import write_atomic
from lorasmith.run_folder import MANIFEST_NAME, METRICS_NAME, RECIPE_NAME

DONE = "sweep_done.json"
FAILED = "sweep_failed.json"
LOG = "sweep.log"


def read_json(path: Path) -> dict | None:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def read_metrics(folder: Path) -> dict:
    """The cell's ``metrics.json`` ({} when absent)."""
    return read_json(folder / METRICS_NAME) or {}


def training_finished(folder: Path, log_only: bool) -> bool:
    """The entrypoint's files say training ended and the outputs were written (not stopped by a signal)."""
    if "train" not in read_metrics(folder):
        return False
    return log_only or (folder / MANIFEST_NAME).is_file()


def cell_status(folder: Path, log_only: bool) -> str:
    """``done`` | ``failed`` | ``interrupted`` | ``pending`` (see the module docstring)."""
    if (folder / DONE).is_file() or training_finished(folder, log_only):
        return "done"
    if (folder / FAILED).is_file():
        return "failed"
    started = (folder / RECIPE_NAME).is_file() or any(folder.glob("checkpoint-*"))
    return "interrupted" if started else "pending"


def is_marked_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def write_cell_recipe(path: Path, recipe: dict) -> None:
    """Write the cell's recipe unless the file already holds exactly it (a resumed cell keeps its file)."""
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    write_atomic(path, text)


def recipe_differences(path: Path, recipe: dict) -> list[str]:
    """Keys whose value in the cell's stored ``cell.yaml`` differs from ``recipe`` ([] when equal or absent)."""
    if not path.is_file():
        return []
    stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    fresh = yaml.safe_load(yaml.safe_dump(recipe))
    return sorted(k for k in set(stored) | set(fresh) if stored.get(k) != fresh.get(k))


def mark_done(folder: Path, info: dict) -> None:
    (folder / FAILED).unlink(missing_ok=True)
    write_atomic(
        folder / DONE,
        json.dumps({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, indent=2) + "\n",
    )


def mark_failed(folder: Path, returncode: int, error_tail: str) -> None:
    info = {
        "returncode": returncode,
        "error_tail": error_tail,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_atomic(folder / FAILED, json.dumps(info, indent=2) + "\n")


def clear_failure(folder: Path) -> None:
    """Before a retry: the failure marker goes (the retried run records its own outcome)."""
    (folder / FAILED).unlink(missing_ok=True)


def failure(folder: Path) -> dict:
    return read_json(folder / FAILED) or {}


def log_tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` after byte offset ``since`` ('' when absent)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(since)
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.rstrip().splitlines()[-lines:])
