"""A cell: its values, its folder, its recipe and the command line that trains it.

Layout of a sweep's ``output_dir``::

    cells/<cell name>/     the entrypoint's output_dir: adapter/ merged/ metrics.json lorasmith.json recipe.yaml
                           checkpoint-*/, plus the sweep's cell.yaml (the recipe it runs), sweep.log and markers
    cells.json             manifest of every cell: index, name, values, command (written by the driver only)

Invariants: a cell's recipe is the base recipe, then the sweep's ``overrides``, then the cell's values (each
replaces the key's whole value), then ``output_dir`` = its folder and ``save_model``; it is written as
``cell.yaml``, never ``recipe.yaml`` (that name belongs to the entrypoint, which writes the resolved recipe
there and compares it on resume). Commands run from the sweep's working directory.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from lorasmith import project_files
from lorasmith.files import write_atomic
from train.sweep.naming import cell_label, cell_name
from train.sweep.spec import SweepSpec

CELLS_DIR = "cells"
CELL_RECIPE = "cell.yaml"
ACCELERATE_CONFIGS = project_files.app_root() / "accelerate_configs"


@dataclass(frozen=True)
class Cell:
    """One run of the sweep. ``index`` is its position in the grid (or the trial number of a search)."""

    index: int
    values: dict
    name: str
    folder: Path
    recipe: dict

    @property
    def label(self) -> str:
        return cell_label(self.values)

    @property
    def recipe_path(self) -> Path:
        return self.folder / CELL_RECIPE


def make_cell(spec: SweepSpec, index: int, values: dict) -> Cell:
    """The cell with ``values`` (see the module invariants for how its recipe is built)."""
    name = cell_name(values)
    folder = spec.output_dir / CELLS_DIR / name
    recipe = {**spec.base_recipe, **spec.overrides, **values, "output_dir": str(folder)}
    if not spec.save_model:
        recipe["save_model"] = False
    return Cell(index, dict(values), name, folder, recipe)


def accelerate_config_path(config: str) -> str:
    """A name in ``accelerate_configs/`` (``single_gpu``) or a path to a YAML file."""
    if config.endswith((".yaml", ".yml")) or "/" in config:
        return config
    return str(ACCELERATE_CONFIGS / f"{config}.yaml")


def cell_command(spec: SweepSpec, cell: Cell) -> list[str]:
    """``python -m lorasmith <entrypoint> --config cells/<name>/cell.yaml`` (the same program as ``python -m
    train.<entrypoint>``, found from any directory and in an installed copy), under ``accelerate launch`` when the
    sweep names an accelerate config."""
    module = ["-m", "lorasmith", spec.entrypoint.replace("_", "-"), "--config", str(cell.recipe_path)]
    if spec.accelerate_config:
        launcher = [sys.executable, "-m", "accelerate.commands.launch"]
        return [*launcher, "--config_file", accelerate_config_path(spec.accelerate_config), *module]
    return [sys.executable, *module]


def format_command(command: list[str]) -> str:
    return shlex.join(command)


MANIFEST = "cells.json"


def write_manifest(spec: SweepSpec, cells: list[Cell]) -> Path:
    """``output_dir/cells.json``: index, name, values and command of every cell (the driver is its only writer)."""
    rows = [
        {"index": c.index, "name": c.name, "values": c.values, "folder": str(c.folder),
         "command": format_command(cell_command(spec, c))}
        for c in cells
    ]  # fmt: skip
    path = spec.output_dir / MANIFEST
    write_atomic(
        path,
        json.dumps(
            {"sweep": str(spec.path), "entrypoint": spec.entrypoint, "cells": rows}, indent=2, default=str
        )
        + "\n",
    )
    return path
