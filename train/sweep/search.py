"""Random or Bayesian (TPE) search with Optuna, each trial an ordinary cell.

Why Optuna directly and not ``Trainer.hyperparameter_search``: that API runs every trial inside one Python
process through the Trainer's ``model_init``; it cannot run a trial as a subprocess with its own output_dir
(``accelerate launch``, our resume and export), cannot hand trials to SLURM, cannot resume an interrupted trial
from its checkpoint, and loses the study when the process dies. With Optuna's ask/tell API the sweep asks for
values, runs the cell like any grid cell, and tells the result.

Invariants:
- the study lives in ``output_dir/study.db`` (Optuna's RDB storage on SQLite), named after the sweep; a re-run
  loads it and only asks for the trials still missing (``n_trials`` counts finished, failed and interrupted
  trials);
- a trial left RUNNING by an interrupted sweep is run again first with its stored values, i.e. the same cell
  folder, so the entrypoint resumes it from its checkpoint, and is then told;
- a trial whose cell is already done (the same values drawn twice, or told-but-lost) is told without training;
- the objective is a results column (``eval.f1_macro``, ``after.spearman``, ``suite.sts.spearman``); a
  failed cell or a missing metric is told FAIL (the message lists the metrics the cell has);
- one sweep process drives a study at a time (trials run one after another).
"""

from __future__ import annotations

from train.sweep import state
from train.sweep.cells import Cell, make_cell
from train.sweep.results import cell_metrics
from train.sweep.runner import Outcome, Progress, Stopper, run_cell
from train.sweep.spec import SearchSpec, SweepSpec

STUDY_FILE = "study.db"


def open_study(spec: SweepSpec):
    """Create or load the sweep's study. The sampler is seeded with ``search.seed`` + the number of trials already
    in the study, so a resumed search draws new values (a fresh sampler with the first seed would repeat them)."""
    import optuna

    search: SearchSpec = spec.search
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(spec.output_dir / STUDY_FILE).resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=spec.name, storage=storage, direction=search.direction, load_if_exists=True
    )
    seed = search.seed + len(study.get_trials(deepcopy=False))
    study.sampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if search.sampler == "random"
        else optuna.samplers.TPESampler(seed=seed)
    )
    return study


def suggest(trial, space: dict) -> dict:
    """Recipe values for ``trial`` from the sweep's ``search.space`` (in file order)."""
    values = {}
    for key, dist in space.items():
        kind = dist["type"]
        if kind == "float":
            step = dist.get("step")
            values[key] = trial.suggest_float(key, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log", False)),
                                              step=float(step) if step is not None else None)  # fmt: skip
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(dist["low"]), int(dist["high"]), step=int(dist.get("step", 1)),
                                            log=bool(dist.get("log", False)))  # fmt: skip
        else:
            values[key] = trial.suggest_categorical(key, dist["choices"])
    return values


def trial_cells(spec: SweepSpec, study) -> list[tuple[Cell, object]]:
    """(cell, trial) of every trial in the study with values, in trial order."""
    return [(make_cell(spec, t.number, {k: t.params[k] for k in spec.search.space if k in t.params}), t)
            for t in study.get_trials(deepcopy=False) if t.params]  # fmt: skip


def objective_value(spec: SweepSpec, cell: Cell) -> tuple[float | None, str]:
    """(value of ``search.metric`` for a done cell, '') or (None, why)."""
    metrics = cell_metrics(cell.folder)
    if spec.search.metric not in metrics:
        return (
            None,
            f"metric {spec.search.metric!r} not in the cell's results; it has: {', '.join(sorted(metrics))}",
        )
    return float(metrics[spec.search.metric]), ""


def run_search(spec: SweepSpec) -> dict[str, str]:
    """Run the missing trials; {cell name: outcome status} of the trials run or told in this invocation."""
    import optuna

    states = optuna.trial.TrialState
    study = open_study(spec)
    running = list(study.get_trials(deepcopy=False, states=(states.RUNNING,)))
    counted = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.FAIL)))
    todo = len(running) + max(0, spec.search.n_trials - counted - len(running))
    progress, outcomes = Progress(spec.search.n_trials), {}
    with Stopper() as stopper:
        for _ in range(todo):
            if running:  # interrupted last time: same values, same cell folder, resumed from its checkpoint
                trial = running.pop(0)
                if not all(k in trial.params for k in spec.search.space):
                    study.tell(trial.number, state=states.FAIL)  # killed before its values were drawn
                    continue
                values = {k: trial.params[k] for k in spec.search.space}
            else:
                trial = study.ask()
                values = suggest(trial, spec.search.space)
            cell = make_cell(spec, trial.number, values)
            position = trial.number + 1
            if state.is_marked_done(cell.folder):
                outcome = Outcome("skipped")
            else:
                progress.start(position, cell, todo - len(outcomes))
                outcome = run_cell(spec, cell, stopper)
            progress.finish(position, cell, outcome)
            outcomes[cell.name] = outcome.status
            if outcome.status == "interrupted":  # stays RUNNING: the next run resumes this trial's cell
                break
            value, why = (
                objective_value(spec, cell)
                if outcome.status in ("done", "skipped")
                else (None, "cell failed")
            )
            if value is None:
                study.tell(trial.number, state=states.FAIL)
                print(f"[sweep] trial {trial.number} failed: {why}", flush=True)
            else:
                study.tell(trial.number, value)
                print(f"[sweep] trial {trial.number}: {spec.search.metric} = {value:.4f}", flush=True)
            if stopper.requested:
                break
    return outcomes


def best_trial_line(spec: SweepSpec) -> str:
    """'best: trial N <metric> = v with {values}' (or a note when no trial completed)."""
    study = open_study(spec)
    try:
        best = study.best_trial
    except ValueError:
        return "best: no trial completed yet"
    return f"best: trial {best.number} {spec.search.metric} = {best.value:.4f} with {best.params}"
