"""Sweeps: train every cell of a grid (or every trial of an Optuna search), evaluate, tabulate, plot.

    # a loss matrix: 7 loss combinations on STS-B, each evaluated on an STS + SentEval suite
    python -m train.sweep --config configs/sweeps/loss_matrix.yaml
    # what would run (every cell's command and status), nothing written
    python -m train.sweep --config configs/sweeps/loss_matrix.yaml --dry_run
    # one SLURM job array (a task per unfinished cell) + a collect job; then results as they stand
    python -m train.sweep --config configs/sweeps/loss_matrix.yaml --slurm
    python -m train.sweep --config configs/sweeps/loss_matrix.yaml --collect
    # learning rate x LoRA rank, TPE search, overriding the sweep file
    python -m train.sweep --config configs/sweeps/seqcls_lr_rank_search.yaml --search.n_trials 12

The sweep file format is in ``train/sweep/spec.py``; ``--key value`` (``--output_dir``, ``--search.n_trials``,
``--overrides.max_steps``) overrides it. Each cell is an ordinary run of the entrypoint in
``output_dir/cells/<name>/`` (re-running skips finished cells and resumes interrupted ones). The sweep writes
``results.csv``, ``results.json``, ``matrix.npy`` + ``matrix_labels.json``, ``heatmap.png`` and, for loss
sweeps, ``bars_<task>.png`` into ``output_dir``. Exit code 1 when a cell failed or is unfinished, 2 on a
configuration error.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from lorasmith.errors import LorasmithError
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser, parse_cli
from lorasmith.run_lock import lock_run_folder, release_all
from train.sweep import cells as cells_mod
from train.sweep import results, runner, search, slurm, state, suite
from train.sweep.grid import expand_grid
from train.sweep.spec import SweepSpec, load_sweep


@dataclasses.dataclass
class SweepArguments:
    """The flags of ``python -m train.sweep``; every other ``--key value`` overrides the sweep file."""

    _argument_group_name = "Sweep"

    sweep_file: str = option("the sweep file (format: train/sweep/spec.py)", aliases=["--config"])
    dry_run: bool = option(
        "print every cell's status and command (with --slurm: the sbatch commands); run nothing",
        default=False,
    )
    slurm: bool = option(
        "submit one SLURM job array (a task per unfinished cell) and a collect job", default=False
    )
    collect: bool = option(
        "write the results as they stand, training nothing (a grid cell whose training ended "
        "first gets its suite run and its done marker)",
        default=False,
    )


def make_parser() -> RecipeParser:
    return make_cli_parser([SweepArguments], module="train.sweep", description=__doc__)


def grid_cells(spec: SweepSpec) -> list[cells_mod.Cell]:
    return [cells_mod.make_cell(spec, i, values) for i, values in enumerate(expand_grid(spec.grid))]


def print_plan(spec: SweepSpec, cells: list[cells_mod.Cell]) -> None:
    """--dry_run: every cell's status and command (nothing is written)."""
    mode = (
        f"search ({spec.search.sampler}, {spec.search.n_trials} trials, {spec.search.direction} {spec.search.metric})"
        if spec.search
        else f"grid, {len(cells)} cells"
    )
    print(f"[sweep] {spec.name}: train.{spec.entrypoint} on {spec.recipe_path}, {mode} -> {spec.output_dir}"
          + ("" if spec.save_model else " (log-only: no model saved)"))  # fmt: skip
    if spec.search:
        for key, dist in spec.search.space.items():
            print(f"  {key}: {dist}")
    for cell in cells:
        status = state.cell_status(cell.folder, not spec.save_model)
        print(
            f"  [{cell.index}] {cell.name} ({status}): {cells_mod.format_command(cells_mod.cell_command(spec, cell))}"
        )
    if spec.suite:
        folder = spec.output_dir / cells_mod.CELLS_DIR / "<cell>"
        print(
            f"  then on each trained cell: {cells_mod.format_command(suite.suite_command(folder, spec.suite))}"
        )
    sys.stdout.flush()


def finalize_trained(spec: SweepSpec, cells: list[cells_mod.Cell]) -> None:
    """--collect: cells whose training finished (array tasks) get their suite run and their done marker."""
    with runner.Stopper() as stopper:
        for cell in cells:
            if not state.is_marked_done(cell.folder) and state.training_finished(
                cell.folder, not spec.save_model
            ):
                outcome = runner.run_cell(
                    spec, cell, stopper
                )  # training is skipped: its files say it finished
                print(f"[sweep] collect {cell.name}: {outcome.status}", flush=True)


def report(spec: SweepSpec, cells: list[cells_mod.Cell], extra: dict | None = None) -> int:
    """Write every results file, print the table; 0 when every cell is done, else 1."""
    grid_keys = list(dict.fromkeys(k for c in cells for k in c.values))
    rows = [results.cell_row(spec, c, (extra or {}).get(c.name)) for c in cells]
    files = results.write_results(spec, rows, grid_keys)
    columns = [key for key, _ in results.matrix_columns(spec, rows)]
    print(results.summary_table(rows, grid_keys, columns), flush=True)
    print(f"[sweep] wrote {', '.join(str(p) for p in files.values())}", flush=True)
    bad = [r["cell"] for r in rows if r["status"] != "done"]
    if bad:
        print(f"[sweep] {len(bad)} of {len(rows)} cells not done: {', '.join(bad)}", flush=True)
    return 1 if bad else 0


def run(argv: Sequence[str]) -> int:
    args, overrides = parse_cli(make_parser(), argv, remaining=True)
    spec = load_sweep(args.sweep_file, overrides)
    if spec.suite is not None:
        suite.suite_columns(spec.suite)  # a bad suite fails now, not after the first training
    if spec.search is not None:
        if args.slurm:
            return slurm.submit_array(spec, [], args.dry_run)
        if args.dry_run:
            print_plan(spec, [])
            return 0
        lock_run_folder(spec.output_dir)  # one sweep per folder (its cells lock their own)
        if not args.collect:
            search.run_search(spec)
        trials = search.trial_cells(spec, search.open_study(spec))
        extra = {c.name: {"trial": t.number, "objective": t.value} for c, t in trials}
        unique = list({c.name: c for c, _ in trials}.values())
        code = report(spec, unique, extra)
        print(f"[sweep] {search.best_trial_line(spec)}", flush=True)
        return code
    cells = grid_cells(spec)
    if args.slurm:
        return slurm.submit_array(spec, cells, args.dry_run)
    if args.dry_run:
        print_plan(spec, cells)
        return 0
    lock_run_folder(spec.output_dir)
    cells_mod.write_manifest(spec, cells)
    if args.collect:
        slurm.record_task_failures(spec, cells)
        finalize_trained(spec, cells)
    else:
        runner.run_cells(spec, cells)
    return report(spec, cells)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except LorasmithError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        release_all()


if __name__ == "__main__":
    sys.exit(main())
