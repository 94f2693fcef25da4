"""The sweep file: what to train (entrypoint + base recipe), which cells (grid or search), where, evaluated how.

Format (paths are relative to the directory the sweep runs from, like every path in a recipe; a path of the
project itself, e.g. ``configs/embed/sts_cosent.yaml``, or a packaged recipe's name is found from anywhere)::

    name: sts-loss-matrix             # optional; default: the sweep file's stem (SLURM job name, study name)
    entrypoint: embed                  # embed | seq_classify | sft_classify
    recipe: configs/embed/sts_cosent.yaml
    output_dir: outputs/sweeps/loss    # cells go to output_dir/cells/<cell name>/
    overrides: {num_train_epochs: 1}   # recipe keys set in every cell (optional)
    grid:                              # recipe key -> list of values; the cells are the cartesian product
      loss: [{cosent: 1}, {angle: 1}]  # a value replaces the recipe's value (no deep merge)
      model_name_or_path: [minilm]
      train_data,eval_data:            # paired keys: one value is a list with one entry per key
        - [a_train.csv, a_dev.csv]
    search:                            # instead of grid: Optuna trials (see train/sweep/search.py)
      sampler: tpe                     # tpe (Bayesian) | random
      n_trials: 8
      metric: eval.f1_macro            # a results column: <metrics.json group>.<name> or suite.<task>.<metric>
      direction: maximize
      seed: 0
      space:
        learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
        lora_r: {type: categorical, choices: [4, 8, 16]}
    suite: configs/sweeps/loss_matrix_suite.yaml   # optional eval.matrix suite run on every trained cell (embed)
    accelerate_config: single_gpu      # optional: each cell runs under `accelerate launch --config_file ...`
    save_model: true                   # false (alias train_mode: false): log-only cells
    slurm: {sbatch_args: [--gres=gpu:1, --time=04:00:00], max_parallel: 4, collect_args: []}

Invariants: unknown keys are errors naming the closest valid key; ``grid`` and ``search`` exclude each other;
a grid axis is a non-empty list; paired values have one entry per key. Command-line overrides
(``--output_dir X``, ``--search.n_trials 3``, ``--overrides.max_steps 10``) are applied before validation,
their values read as YAML.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lorasmith import project_files
from lorasmith.errors import ConfigError

ENTRYPOINTS = ("embed", "seq_classify", "sft_classify")
KEYS = (
    "name", "entrypoint", "recipe", "output_dir", "overrides", "grid", "search", "suite",
    "accelerate_config", "save_model", "train_mode", "slurm",
)  # fmt: skip
SEARCH_KEYS = ("sampler", "n_trials", "metric", "direction", "seed", "space")
SAMPLERS = ("tpe", "random")
SLURM_KEYS = ("sbatch_args", "max_parallel", "collect_args")
# Keys the sweep sets itself in every cell recipe.
RESERVED_RECIPE_KEYS = ("output_dir", "save_model")


@dataclass(frozen=True)
class SearchSpec:
    """An Optuna search: ``space`` maps a recipe key to {type: float|int|categorical, ...}."""

    sampler: str
    n_trials: int
    metric: str
    direction: str
    seed: int
    space: dict


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. ``grid`` is a list of (keys, values): one key, or paired keys moving together."""

    path: Path
    name: str
    entrypoint: str
    recipe_path: Path
    base_recipe: dict
    output_dir: Path
    overrides: dict = field(default_factory=dict)
    grid: list = field(default_factory=list)
    search: SearchSpec | None = None
    suite: Path | None = None
    accelerate_config: str | None = None
    save_model: bool = True
    slurm: dict = field(default_factory=dict)
    cli_overrides: tuple = ()


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read ``path``, apply ``--key value`` ``overrides`` and validate. Raises ConfigError naming the problem."""
    path = Path(path) if Path(path).is_file() else project_files.find_recipe(str(path))[0]
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping (entrypoint, recipe, grid or search, output_dir)")
    overrides = list(overrides or [])
    apply_overrides(raw, overrides)
    return _validate(path, raw, tuple(overrides))


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    """``['--search.n_trials', '3', '--output_dir', 'x']`` into ``raw`` in place (values parsed as YAML)."""
    if len(overrides) % 2:
        raise ConfigError(f"overrides come in pairs --key value; got {' '.join(overrides)}")
    for flag, text in zip(overrides[::2], overrides[1::2], strict=True):
        if not flag.startswith("--"):
            raise ConfigError(f"expected --key before {flag!r}")
        *parents, leaf = flag[2:].split(".")
        target = raw
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{flag}: {part!r} is not a mapping in the sweep file")
        target[leaf] = yaml.safe_load(text)


def _unknown(keys, allowed, where: str) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _validate(path: Path, raw: dict, cli_overrides: tuple) -> SweepSpec:
    _unknown(raw, KEYS, str(path))
    for key in ("entrypoint", "recipe", "output_dir"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    entrypoint = str(raw["entrypoint"]).removeprefix("train.")
    if entrypoint not in ENTRYPOINTS:
        raise ConfigError(f"{path}: entrypoint {entrypoint!r}; choose one of {', '.join(ENTRYPOINTS)}")
    try:  # relative to the current directory, else one of the project's own (a packaged recipe)
        recipe_path = project_files.find_recipe(str(raw["recipe"]))[0]
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    base_recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
    if not isinstance(base_recipe, dict):
        raise ConfigError(f"{recipe_path}: a recipe is a YAML mapping")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: 'overrides' is a mapping recipe key -> value")
    if ("grid" in raw) == ("search" in raw):
        raise ConfigError(
            f"{path}: give exactly one of 'grid' (every combination) or 'search' (Optuna trials)"
        )
    grid = _grid(path, raw["grid"]) if "grid" in raw else []
    search = _search(path, raw["search"]) if "search" in raw else None
    save_model = _save_model(path, raw, overrides)
    suite = Path(raw["suite"]) if raw.get("suite") else None
    if suite is not None:
        if entrypoint != "embed":
            raise ConfigError(
                f"{path}: 'suite' evaluates embedding models (eval.matrix); {entrypoint} cells are scored by their "
                "own eval_data (metrics.json)"
            )
        if not suite.is_file() and (project_files.app_root() / suite).is_file():
            suite = project_files.app_root() / suite  # the project's own suite file
        if not suite.is_file():
            raise ConfigError(f"{path}: suite {suite} not found")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{path}: 'slurm' is a mapping ({', '.join(SLURM_KEYS)})")
    _unknown(slurm, SLURM_KEYS, f"{path}: slurm")
    for key in RESERVED_RECIPE_KEYS:
        if key in overrides or any(key in keys for keys, _ in grid) or (search and key in search.space):
            raise ConfigError(
                f"{path}: the sweep sets '{key}' of every cell itself; set it at the top of the sweep file"
            )
    return SweepSpec(
        path=path,
        name=str(raw.get("name") or path.stem),
        entrypoint=entrypoint,
        recipe_path=recipe_path,
        base_recipe=base_recipe,
        output_dir=Path(raw["output_dir"]),
        overrides=dict(overrides),
        grid=grid,
        search=search,
        suite=suite,
        accelerate_config=str(raw["accelerate_config"]) if raw.get("accelerate_config") else None,
        save_model=save_model,
        slurm=dict(slurm),
        cli_overrides=cli_overrides,
    )


def _save_model(path: Path, raw: dict, overrides: dict) -> bool:
    """``save_model`` (or its alias ``train_mode``), at the top of the sweep file or in ``overrides``."""
    found = {}
    for where in (raw, overrides):
        for key in ("save_model", "train_mode"):
            if key in where:
                found[key] = where.pop(key) if where is overrides else where[key]
    values = {bool(v) for v in found.values()}
    if len(values) > 1:
        raise ConfigError(f"{path}: save_model and train_mode disagree ({found}); give one of them")
    return values.pop() if values else True


def _grid(path: Path, grid) -> list:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: 'grid' is a non-empty mapping recipe key -> list of values")
    axes = []
    for key, values in grid.items():
        keys = tuple(k.strip() for k in str(key).split(",") if k.strip())
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list of values")
        if len(keys) > 1:
            for value in values:
                if not isinstance(value, list) or len(value) != len(keys):
                    raise ConfigError(
                        f"{path}: grid.{key} pairs {len(keys)} keys, so each value is a list of {len(keys)} "
                        f"(one per key); got {value!r}"
                    )
        axes.append((keys, values))
    return axes


def _search(path: Path, search) -> SearchSpec:
    if not isinstance(search, dict):
        raise ConfigError(f"{path}: 'search' is a mapping ({', '.join(SEARCH_KEYS)})")
    _unknown(search, SEARCH_KEYS, f"{path}: search")
    for key in ("n_trials", "metric", "space"):
        if key not in search:
            raise ConfigError(f"{path}: search.{key} is required")
    sampler = str(search.get("sampler", "tpe")).lower()
    if sampler not in SAMPLERS:
        raise ConfigError(f"{path}: search.sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    direction = str(search.get("direction", "maximize"))
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: search.direction is maximize or minimize; got {direction!r}")
    space = search["space"]
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: search.space is a non-empty mapping recipe key -> range")
    for key, dist in space.items():
        _check_distribution(path, key, dist)
    return SearchSpec(
        sampler, int(search["n_trials"]), str(search["metric"]), direction, int(search.get("seed", 0)), space
    )


def _check_distribution(path: Path, key: str, dist) -> None:
    kind = dist.get("type") if isinstance(dist, dict) else None
    if kind in ("float", "int"):
        if "low" not in dist or "high" not in dist:
            raise ConfigError(f"{path}: search.space.{key} ({kind}) needs low and high")
        if float(dist["low"]) > float(dist["high"]):
            raise ConfigError(f"{path}: search.space.{key}: low > high")
        _unknown(dist, ("type", "low", "high", "log", "step"), f"{path}: search.space.{key}")
    elif kind == "categorical":
        if not isinstance(dist.get("choices"), list) or not dist["choices"]:
            raise ConfigError(f"{path}: search.space.{key} (categorical) needs a non-empty list 'choices'")
        _unknown(dist, ("type", "choices"), f"{path}: search.space.{key}")
    else:
        raise ConfigError(
            f"{path}: search.space.{key} needs type float (low, high, log), int (low, high, step|log) or "
            f"categorical (choices); got {dist!r}"
        )
