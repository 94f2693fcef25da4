"""Plots of a sweep's matrix (matplotlib, Agg backend: no display needed).

- ``heatmap.png``: cells (rows) x eval tasks (columns), each square annotated with its value; metrics differ in
  scale, so the colour is a cell's standing within its column (min dark, max bright); NaN (failed) is blank.
- ``bars_<task>.png`` (loss sweeps: the grid varies ``loss``): one grouped bar chart per eval task; a group per
  combination of the other grid values (model, dataset, ...), one bar per loss combination.
"""

from __future__ import annotations

import re
from pathlib import Path

from train.sweep.naming import value_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(matrix, row_labels: list[str], column_labels: list[str], path: Path) -> Path:
    """``matrix``: (cells, tasks) float array; NaN cells stay blank."""
    import numpy as np

    plt = _pyplot()
    values = np.asarray(matrix, dtype=float)
    with np.errstate(all="ignore"):
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        relative = np.where(high > low, (values - low) / np.where(high > low, high - low, 1.0), 0.5)
    figure, axes = plt.subplots(figsize=(2.5 + 1.5 * values.shape[1], 1.2 + 0.45 * values.shape[0]))
    axes.imshow(np.ma.masked_invalid(relative), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(values.shape[1]), labels=column_labels, fontsize=8, rotation=30, ha="right")
    axes.set_yticks(range(values.shape[0]), labels=row_labels, fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            text = f"{value:.3g}" if abs(value) < 1.5 else f"{value:.1f}"
            axes.text(
                j, i, text, ha="center", va="center", fontsize=7, color="w" if relative[i, j] < 0.6 else "k"
            )
    axes.set_title("colour: rank of the cell within each column", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")  # long cell names must not clip the title
    plt.close(figure)
    return path


def grouped_bars(rows: list[dict], grid_keys: list[str], values, column: int, title: str, path: Path) -> Path:
    """Bars of matrix column ``column``: groups = the non-loss grid values, bars = loss combinations."""
    import numpy as np

    plt = _pyplot()
    others = [k for k in grid_keys if k != "loss"]
    group_of = [" / ".join(value_label(row.get(k)) for k in others) or "all" for row in rows]
    groups = list(dict.fromkeys(group_of))
    losses = list(dict.fromkeys(value_label(row.get("loss")) for row in rows))
    width = 0.8 / max(len(losses), 1)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 + 0.35 * len(groups) * len(losses)), 3.6))
    for b, loss in enumerate(losses):
        heights = [
            next((values[i][column] for i, row in enumerate(rows)
                  if group_of[i] == group and value_label(row.get("loss")) == loss), np.nan)
            for group in groups
        ]  # fmt: skip
        axes.bar(np.arange(len(groups)) + (b - (len(losses) - 1) / 2) * width, heights, width, label=loss)
    axes.set_xticks(range(len(groups)), labels=groups, fontsize=8)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, title="loss", title_fontsize=7)
    finite = np.asarray(values, dtype=float)[:, column]
    finite = finite[~np.isnan(finite)]
    if finite.size:
        spread = max(float(finite.max() - finite.min()), 1e-6)
        axes.set_ylim(float(finite.min()) - spread, float(finite.max()) + 0.5 * spread)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(out: Path, rows: list[dict], grid_keys: list[str], matrix, labels: dict) -> dict[str, Path]:
    """heatmap.png, plus bars_<task>.png per column for loss sweeps; {file name: path}."""
    files = {"heatmap.png": heatmap(matrix, labels["rows"], labels["columns"], out / "heatmap.png")}
    if "loss" in grid_keys:
        for column, title in enumerate(labels["columns"]):
            name = "bars_" + re.sub(r"[^A-Za-z0-9._-]+", "_", title).strip("_") + ".png"
            files[name] = grouped_bars(rows, grid_keys, matrix, column, title, out / name)
    return files
