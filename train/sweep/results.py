"""Aggregate the cell folders into the sweep's results (read-only on the cells; the driver is the only writer).

Files in the sweep's ``output_dir``:

- ``results.csv``: one row per cell: index, cell (folder name), the grid values (a mapping such as a loss shown
  by its enabled losses, ``cosent+angle``), status (done | failed | interrupted | pending), seconds, error (the
  output tail of a failed cell), then every metric: ``<metrics.json group>.<name>`` (``after.spearman``,
  ``eval.f1_macro``, ``train.train_loss``) and ``suite.<task>.<metric>`` for the eval suite;
- ``results.json``: the same rows with the exact values, plus the matrix and its labels;
- ``matrix.npy``: float64 array (cells x eval tasks), NaN where a cell has no value;
  ``matrix_labels.json`` holds its row labels (cell names, in results order) and column labels;
- plots (``plots.py``): ``heatmap.png``, and ``bars_<task>.png`` per eval task when the grid varies ``loss``.

Matrix columns: with a suite, its tasks (each task's chosen metric); without, the numeric metrics of the
cells' final evaluation group (``after`` for embeddings, ``eval`` for classifiers), minus timing counters.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from lorasmith.files import write_atomic
from train.sweep import state, suite
from train.sweep.cells import Cell
from train.sweep.naming import value_label
from train.sweep.spec import SweepSpec

EVAL_GROUPS = ("after", "eval")
NOT_QUALITY = ("runtime", "per_second", "epoch", "step", "rows", "truncated")
FIXED_COLUMNS = ("index", "cell", "status", "seconds", "error")


def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_metrics(folder: Path) -> dict[str, float]:
    """Flat ``group.name`` -> value for every numeric metric of the cell, suite included."""
    flat = {}
    for group, values in state.read_metrics(folder).items():
        if isinstance(values, dict):
            flat.update({f"{group}.{k}": v for k, v in values.items() if numeric(v)})
        elif numeric(values):
            flat[group] = values
    for task, values in suite.read_suite(folder).items():
        flat.update({f"suite.{task}.{k}": v for k, v in values.items()})
    return flat


def cell_row(spec: SweepSpec, cell: Cell, extra: dict | None = None) -> dict:
    """The results row of ``cell`` (exact values; ``csv_value`` renders them for the CSV)."""
    status = state.cell_status(cell.folder, log_only=not spec.save_model)
    done = state.read_json(cell.folder / state.DONE) or {}
    row = {"index": cell.index, "cell": cell.name, **cell.values, **(extra or {}), "status": status,
           "seconds": done.get("seconds"), "error": state.failure(cell.folder).get("error_tail", "") if status == "failed" else ""}  # fmt: skip
    row.update(dict(sorted(cell_metrics(cell.folder).items())))
    return row


def matrix_columns(spec: SweepSpec, rows: list[dict]) -> list[tuple[str, str]]:
    """[(row key, column label)] of the matrix (see the module docstring)."""
    if spec.suite is not None:
        return [
            (f"suite.{c.name}.{c.metric}", f"{c.name} ({c.metric})") for c in suite.suite_columns(spec.suite)
        ]
    keys = [k for row in rows for k in row if isinstance(k, str) and "." in k]
    for group in EVAL_GROUPS:
        chosen = [
            k
            for k in dict.fromkeys(keys)
            if k.startswith(group + ".") and not any(p in k for p in NOT_QUALITY)
        ]
        if chosen:
            return [(k, k) for k in chosen]
    return []


def csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return value_label(value)
    return str(value)


def write_results(spec: SweepSpec, rows: list[dict], grid_keys: list[str]) -> dict[str, Path]:
    """results.csv / results.json / matrix.npy / matrix_labels.json / plots; returns {name: path}."""
    import numpy as np

    from train.sweep import plots

    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    metric_keys = sorted(
        {k for row in rows for k in row if k not in FIXED_COLUMNS and k not in grid_keys and "." in k}
    )
    extra_keys = [
        k
        for row in rows
        for k in row
        if k not in FIXED_COLUMNS and k not in grid_keys and k not in metric_keys
    ]
    header = [
        "index",
        "cell",
        *grid_keys,
        *dict.fromkeys(extra_keys),
        "status",
        "seconds",
        "error",
        *metric_keys,
    ]
    with open(out / ".results.csv.tmp", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([csv_value(row.get(k)) for k in header])
    (out / ".results.csv.tmp").replace(out / "results.csv")

    columns = matrix_columns(spec, rows)
    matrix = np.array(
        [[float(row[k]) if numeric(row.get(k)) else np.nan for k, _ in columns] for row in rows],
        dtype=np.float64,
    ).reshape(len(rows), len(columns))
    labels = {"rows": [row["cell"] for row in rows], "columns": [label for _, label in columns],
              "metrics": [key for key, _ in columns]}  # fmt: skip
    np.save(out / "matrix.npy", matrix)
    write_atomic(out / "matrix_labels.json", json.dumps(labels, indent=2) + "\n")
    summary = {"sweep": str(spec.path), "entrypoint": spec.entrypoint, "grid_keys": grid_keys, "rows": rows,
               "matrix": {**labels, "values": [[None if math.isnan(v) else v for v in r] for r in matrix.tolist()]}}  # fmt: skip
    write_atomic(out / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    files = {name: out / name for name in ("results.csv", "results.json", "matrix.npy", "matrix_labels.json")}
    if len(rows) and len(columns):
        files.update(plots.write_plots(out, rows, grid_keys, matrix, labels))
    return files


def summary_table(rows: list[dict], grid_keys: list[str], columns: list[str]) -> str:
    """A plain-text table of the rows (grid values, status, the matrix columns) for the console."""
    header = ["cell", "status", *columns]
    lines = [header] + [
        [row["cell"], row["status"], *(csv_value(row.get(c)) for c in columns)] for row in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines)
