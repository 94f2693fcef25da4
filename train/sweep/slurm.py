"""Submit a sweep's unfinished cells as one SLURM job array through ``slurm/launch.slurm``.

    sbatch --parsable --array=0-<M-1>[%max_parallel] --job-name <sweep> --output <out>/logs/%x-%A_%a.out \\
        [sbatch_args] slurm/launch.slurm <entrypoint> <out>/slurm/array-<stamp>.cells <accelerate config>
    sbatch --parsable --dependency=afterany:<array job> --job-name <sweep>-collect ... \\
        --wrap "python -m train.sweep --config <sweep> --collect"

The ``.cells`` file lists one ``cell.yaml`` per line; ``launch.slurm`` gives array task ``$SLURM_ARRAY_TASK_ID``
the recipe on line ``task id + 1`` (so task ids index the unfinished cells of this submission, not the grid).
Each task runs the entrypoint with its cell's folder as output_dir, so tasks never write the same file; a
requeued task resumes its cell from its checkpoint. The collect job (after every task, whatever its result)
evaluates the suite on each finished cell, records failed cells with the tail of their task log, and writes the
results. ``<out>/slurm/array-<stamp>.json`` records the job id and which cell each task index ran.

Invariants: the driver writes the cell recipes, the .cells file and the submission record before and after
``sbatch``, never while tasks run; finished cells are never in an array; ``--dry_run`` writes nothing.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lorasmith.errors import ConfigError
from lorasmith.files import write_atomic
from train.sweep import state
from train.sweep.cells import Cell, format_command
from train.sweep.spec import SweepSpec

LAUNCHER = "slurm/launch.slurm"
SLURM_DIR = "slurm"
LOGS_DIR = "logs"


def launcher_config(spec: SweepSpec) -> str:
    return spec.accelerate_config or "single_gpu"


def array_command(spec: SweepSpec, count: int, cells_file: Path) -> list[str]:
    """The sbatch command of a job array over ``count`` cells listed in ``cells_file``."""
    limit = spec.slurm.get("max_parallel")
    array = f"0-{count - 1}" + (f"%{int(limit)}" if limit else "")
    return ["sbatch", "--parsable", f"--array={array}", f"--job-name={spec.name}",
            f"--output={spec.output_dir / LOGS_DIR}/%x-%A_%a.out", *map(str, spec.slurm.get("sbatch_args") or []),
            LAUNCHER, spec.entrypoint, str(cells_file), launcher_config(spec)]  # fmt: skip


def collect_command(spec: SweepSpec, dependency: str) -> list[str]:
    """The sbatch command of the final step (suite + results) once every array task ended."""
    sweep = shlex.join(
        [sys.executable, "-m", "train.sweep", "--config", str(spec.path), "--collect", *spec.cli_overrides]
    )
    return ["sbatch", "--parsable", f"--dependency=afterany:{dependency}", f"--job-name={spec.name}-collect",
            f"--output={spec.output_dir / LOGS_DIR}/%x-%j.out", *map(str, spec.slurm.get("collect_args") or []),
            "--wrap", sweep]  # fmt: skip


def task_command(spec: SweepSpec, cell: Cell) -> str:
    """What array task for ``cell`` runs (launch.slurm with the cell's own recipe)."""
    return format_command(["bash", LAUNCHER, spec.entrypoint, str(cell.recipe_path), launcher_config(spec)])


def submit_array(spec: SweepSpec, cells: list[Cell], dry_run: bool) -> int:
    """Print (``dry_run``) or submit the array of the not-yet-finished ``cells`` and its collect job; exit code."""
    if spec.search is not None:
        raise ConfigError("--slurm runs a grid; a search asks for each trial after the previous one: run it locally "
                          "(e.g. inside one allocation: srun python -m train.sweep --config ...)")  # fmt: skip
    todo = [c for c in cells if state.cell_status(c.folder, not spec.save_model) != "done"]
    if not todo:
        print(f"[sweep] every cell of {spec.name} is done; run --collect for the results", flush=True)
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cells_file = spec.output_dir / SLURM_DIR / f"array-{stamp}.cells"
    array = array_command(spec, len(todo), cells_file)
    if dry_run:
        print(f"[sweep] {len(todo)} of {len(cells)} cells to run as one job array ({cells_file} would list):")
        print(format_command(array))
        for task, cell in enumerate(todo):
            print(f"  task {task} -> cell {cell.index} {cell.name}: {task_command(spec, cell)}")
        print(format_command(collect_command(spec, "<array job id>")), flush=True)
        return 0
    for cell in todo:
        cell.folder.mkdir(parents=True, exist_ok=True)
        state.clear_failure(cell.folder)
        state.write_cell_recipe(cell.recipe_path, cell.recipe)
    (spec.output_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(cells_file, "".join(f"{c.recipe_path}\n" for c in todo))
    job = _sbatch(array)
    collect = _sbatch(collect_command(spec, job))
    record = {"job_id": job, "collect_job_id": collect, "cells_file": str(cells_file),
              "tasks": [{"task": i, "cell": c.name} for i, c in enumerate(todo)], "submitted_at": stamp}  # fmt: skip
    write_atomic(cells_file.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    print(f"[sweep] submitted job array {job} ({len(todo)} cells) and collect job {collect}", flush=True)
    return 0


def _sbatch(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ConfigError(
            "sbatch not found: --slurm needs a SLURM login node (try --slurm --dry_run)"
        ) from None
    if result.returncode != 0:
        raise ConfigError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def task_logs(spec: SweepSpec) -> dict[str, Path]:
    """{cell name: log of the latest array task that ran it}, from the submission records."""
    logs = {}
    for record_path in sorted((spec.output_dir / SLURM_DIR).glob("array-*.json")):
        record = state.read_json(record_path) or {}
        for task in record.get("tasks", []):
            logs[task["cell"]] = (
                spec.output_dir / LOGS_DIR / f"{spec.name}-{record.get('job_id')}_{task['task']}.out"
            )
    return logs


def record_task_failures(spec: SweepSpec, cells: list[Cell]) -> None:
    """At collect time: a submitted cell that did not finish is marked failed with its task log's tail."""
    logs = task_logs(spec)
    for cell in cells:
        if cell.name in logs and state.cell_status(cell.folder, not spec.save_model) in (
            "interrupted",
            "pending",
        ):
            tail = state.log_tail(logs[cell.name]) or f"no log at {logs[cell.name]}"
            state.mark_failed(cell.folder, -1, tail)
