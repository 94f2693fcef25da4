"""Where lorasmith's own files are: the entrypoint packages, the packaged recipes, the accelerate configs.

An installed wheel has one top-level package, ``lorasmith``; the entrypoint packages (``train``, ``eval``,
``data_utils``) and the ``configs/`` and ``accelerate_configs/`` folders ship inside it, in ``lorasmith/_app/``,
laid out as in the repository. That folder is not on ``sys.path``: only a ``lorasmith`` command puts it there, at
the front, for its own process (``lorasmith.command``), so another project's ``train``, ``eval`` or ``data_utils``
never meets ours, in either direction. In a checkout (an editable install) the same role is played by the
repository root.

A recipe is named by its file stem (``quickstart`` is ``configs/embed/quickstart.yaml``); ``find_recipe`` takes a
path, a path relative to the project (``configs/embed/quickstart.yaml`` from any directory), or a name.
"""

from __future__ import annotations

from pathlib import Path

from lorasmith.errors import ConfigError

# Recipe keys holding data sources: a packaged recipe's relative paths there name the project's sample files.
DATA_KEYS = ("train_data", "eval_data")


def app_root() -> Path:
    """The folder holding ``train/``, ``eval/``, ``data_utils/``, ``configs/`` and ``accelerate_configs/``:
    ``lorasmith/_app`` in an installed wheel, else the repository root."""
    package = Path(__file__).resolve().parent
    installed = package / "_app"
    return installed if (installed / "train").is_dir() else package.parent


def packaged_recipes() -> dict[str, Path]:
    """Every packaged recipe by name (file stem), training recipes (``configs/<kind>/*.yaml``) and sweep files."""
    configs = app_root() / "configs"
    return {path.stem: path for path in sorted(configs.glob("*/*.yaml")) if path.parent.name != "eval"}


def find_recipe(value: str) -> tuple[Path, bool]:
    """The recipe file ``value`` names and whether it is one of the project's own (a packaged recipe, whose relative
    data paths :func:`rebase_data_paths` resolves).

    Raises:
        ConfigError: no such file, and no packaged recipe of that name (the names are listed).
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path, False
    in_project = app_root() / value
    if not path.is_absolute() and in_project.is_file():
        return in_project, True
    recipes = packaged_recipes()
    if value.removesuffix(".yaml") in recipes:
        return recipes[value.removesuffix(".yaml")], True
    raise ConfigError(
        f"cannot read recipe {value}: no such file, and no packaged recipe has that name "
        f"(packaged: {', '.join(recipes)}; `lorasmith recipes` describes them)"
    )


def rebase_data_paths(values: dict) -> dict:
    """``values`` with every relative path of its data keys that does not exist from the current directory but
    does in the project (``data_utils/samples/tags.jsonl``) made absolute, so a packaged recipe runs anywhere."""
    root = app_root()

    def rebase(value):
        if isinstance(value, str):
            relative = not Path(value).is_absolute()
            return str(root / value) if relative and not Path(value).exists() and (root / value).exists() else value
        if isinstance(value, list):
            return [rebase(item) for item in value]
        if isinstance(value, dict) and "data" in value:  # one dataset: {data: SOURCE, task: ..., columns: ...}
            return {**value, "data": rebase(value["data"])}
        if isinstance(value, dict):  # several datasets: name -> source
            return {name: rebase(source) for name, source in value.items()}
        return value

    return {key: rebase(value) if key in DATA_KEYS else value for key, value in values.items()}


def describe_recipes() -> str:
    """``lorasmith recipes``: each packaged recipe's name, file and first comment line, then the accelerate configs."""
    lines = []
    for name, path in packaged_recipes().items():
        first = next((line.lstrip("# ").strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.startswith("#")), "")
        lines.append(f"  {name:<26} {path.parent.name + '/' + path.name:<40} {first[:70]}")
    accelerate = app_root() / "accelerate_configs"
    return "\n".join(
        ["Packaged recipes (--config NAME):", *lines, "", f"accelerate configs (--config_file): {accelerate}"]
    )
