"""Evaluate a trained cell with an ``eval.matrix`` suite (configs/eval/suite_example.yaml format).

The suite runs as ``python -m eval.matrix --models <cell> --suite S --output_dir <cell>/suite`` in a subprocess:
the model is loaded there, not in the sweep driver, and the eval CLI is the boundary (its internals may change).
The suite is parsed up front with ``eval.matrix.load_suite`` so a bad suite fails before any training.

Invariants: everything is written under ``<cell>/suite/`` (results.csv/json/png of one model); a cell's suite
result is ``{task name: {metric: value}}`` read back from ``suite/results.json``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from train.sweep.state import read_json

SUITE_DIR = "suite"


@dataclass(frozen=True)
class SuiteColumn:
    """One eval task of the suite: its name and the metric the matrix shows."""

    name: str
    metric: str


def suite_columns(path: Path) -> list[SuiteColumn]:
    """Validate the suite file (eval.matrix's own checks) and return its tasks in file order."""
    from eval.matrix import load_suite

    return [SuiteColumn(task.name, task.metric) for task in load_suite(path)]


def suite_command(folder: Path, suite: Path) -> list[str]:
    return [sys.executable, "-m", "eval.matrix", "--models", str(folder), "--suite", str(suite),
            "--output_dir", str(folder / SUITE_DIR)]  # fmt: skip


def evaluate_cell(folder: Path, suite: Path, log_path: Path) -> int:
    """Run the suite on the cell's model, appending its output to ``log_path``; returns the exit code."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n### sweep: suite {suite}\n")
        log.flush()
        return subprocess.run(
            suite_command(folder, suite), stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode


def suite_done(folder: Path) -> bool:
    return (folder / SUITE_DIR / "results.json").is_file()


def read_suite(folder: Path) -> dict[str, dict]:
    """{task: {metric: value}} of the cell's suite run ({} when it has none)."""
    results = (read_json(folder / SUITE_DIR / "results.json") or {}).get("results") or {}
    if not results:
        return {}
    per_task = next(iter(results.values()))  # one model per cell
    return {
        task: {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for task, values in per_task.items()
    }
