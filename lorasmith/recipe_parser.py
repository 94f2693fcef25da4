"""Recipe + command-line parsing shared by every entrypoint (the error boundary is ``lorasmith.process.run_main``).

Every command line is declared as dataclasses: one flag per field (``lorasmith.recipe_fields.option``: its help and
argparse keywords), ``--field_name`` and ``--field-name`` both accepted, ``aliases=`` for more spellings. Training
entrypoints read a recipe (``make_parser`` + ``parse_recipe``, below); the other CLIs (evaluation, mining, sweeps,
data check) take flags only (``make_cli_parser`` + ``parse_cli``).

A run is configured by one YAML recipe (``--config configs/<task>/R.yaml``) whose keys are the fields of
the entrypoint's dataclasses; any ``--key value`` on the command line overrides the recipe. The recipe's values
become the parser's defaults (TRL's ``TrlParser.set_defaults_with_config``, including its ``env:`` block), the
command line is parsed over them, and every value the user set is checked (``recipe_checks``) before any
dataclass is built. Every mistake is a ``ConfigError`` naming the file and line (or the command line), the key,
the value and what was expected:

- YAML syntax errors (file, line, column) and a key written twice (both lines);
- unknown keys (recipe or command line), with the closest valid names;
- values of the wrong type or range (``recipe_checks``), and values argparse cannot convert (``lr: abc``).

On a machine without CUDA, CPU-friendly defaults (``use_cpu``, no bf16) are set *before* the dataclasses'
``__post_init__`` runs (TRL's ``SFTConfig`` defaults to bf16 and raises on a CPU-only machine otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Sequence

import torch
import yaml
from trl import TrlParser

from lorasmith.errors import ConfigError
from lorasmith.recipe_checks import check_values, field_types


class RecipeParser(TrlParser):
    """``TrlParser`` whose argument errors are raised (as :class:`ArgumentProblem`) instead of printing the usage
    and exiting, so that ``parse_recipe`` can say where the value was written."""

    def error(self, message: str):
        match = re.match(r"argument (--[\w-]+)\S*: (.*)", message, re.DOTALL)
        if match is None:
            raise ConfigError(message)
        raise ArgumentProblem(self._option_string_actions[match.group(1)].dest, _plain(match.group(2)))


class ArgumentProblem(ConfigError):
    """A value argparse could not read: ``key`` and the ``problem``."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def _plain(problem: str) -> str:
    """argparse's 'invalid float value: 'abc'' -> "'abc' is not a number"."""
    kinds = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}
    match = re.fullmatch(r"invalid (\w+) value: (.*)", problem)
    if match and match.group(1) in kinds:
        return f"{match.group(2)} is not {kinds[match.group(1)]}"
    return problem


def make_parser(dataclass_types: Sequence[type]) -> RecipeParser:
    """A :class:`RecipeParser` over ``dataclass_types`` with CPU defaults applied when CUDA is absent."""
    parser = RecipeParser(dataclass_types)
    if not torch.cuda.is_available():
        field_names = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        parser.set_defaults(**{k: v for k, v in {"use_cpu": True, "bf16": False}.items() if k in field_names})
    return parser


def make_cli_parser(dataclass_types: Sequence[type], *, prog: str, description: str) -> RecipeParser:
    """A :class:`RecipeParser` for a command line without a recipe: ``description`` is printed as written and
    flags cannot be abbreviated (``--coll`` is not taken for ``--collect``)."""
    return RecipeParser(
        dataclass_types,
        prog=prog,
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_cli(parser: RecipeParser, argv: Sequence[str] | None = None, *, remaining: bool = False) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) into the parser's dataclasses, in parser order. With ``remaining``,
    the tokens no flag takes (``--key value`` passed on elsewhere) come last instead of being an error.

    Raises:
        ConfigError: a value argparse cannot read, a missing required flag, an unknown flag (without
            ``remaining``), or a dataclass's own check (``__post_init__``).
    """
    if remaining:
        namespace, rest = parser.parse_known_args(argv)
        return (*_dataclasses_from(parser, namespace), rest)
    return _dataclasses_from(parser, parser.parse_args(argv))


def _dataclasses_from(parser: RecipeParser, namespace: argparse.Namespace) -> tuple:
    """The parser's dataclasses built from ``namespace``; a failing ``__post_init__`` check is a ConfigError."""
    try:
        return tuple(
            dataclass_type(
                **{f.name: getattr(namespace, f.name) for f in dataclasses.fields(dataclass_type) if f.init}
            )
            for dataclass_type in parser.dataclass_types
        )
    except ValueError as error:  # a dataclass's own __post_init__ check (ConfigError is a ValueError)
        raise ConfigError(str(error)) from None


@dataclasses.dataclass
class Recipe:
    """A YAML recipe as read: its ``values`` and the 1-based ``lines`` of its top-level keys."""

    path: str
    values: dict
    lines: dict[str, int]


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key written twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise ConfigError(
                    f"{self.name}: key '{key}' is written twice (lines {seen[key]} and {line}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_recipe(path: str) -> Recipe:
    """Read a YAML recipe.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML (file, line, column and the problem), writes a
            key twice, or is not a mapping of keys to values.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError(f"cannot read recipe {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read recipe {path}: it is not UTF-8 text") from None
    loader = _RecipeLoader(text)
    loader.name = path
    try:
        node = loader.get_single_node()
        values = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join(str(part) for part in (error.context, error.problem) if part)
        raise ConfigError(f"{path}, line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    finally:
        loader.dispose()
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {path} must be a mapping of keys to values (key: value lines)")
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    return Recipe(path, values, lines)


def parse_recipe(parser: RecipeParser, argv: Sequence[str] | None = None) -> tuple:
    """Parse ``--config recipe.yaml`` plus overrides into the parser's dataclasses, in parser order.

    Raises:
        ConfigError: the recipe is unreadable or invalid YAML (file, line, column), writes a key twice, a key
            (recipe or command line) is not a field of any dataclass (the closest names are suggested), or values
            have the wrong type or range (every such value is listed with where it was written).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a path to a YAML recipe, e.g. --config configs/embed/quickstart.yaml")
        recipe = read_recipe(argv[at + 1])
        del argv[at : at + 2]
    values = dict(recipe.values) if recipe else {}
    env = values.pop("env", None) or {}
    if not isinstance(env, dict):
        raise ConfigError(f"{recipe.path}: env must be a mapping of environment variables to values")
    os.environ.update({str(k): str(v) for k, v in env.items()})  # TRL's env: block
    from_recipe = parser.set_defaults_with_config(**values)
    from_cli = _cli_keys(parser, argv)

    def where(key: str) -> str:
        if key in from_cli or recipe is None or key not in recipe.lines:
            return "command line: "
        return f"{recipe.path} line {recipe.lines[key]}: "

    try:
        namespace, unknown_cli = parser.parse_known_args(argv)
    except ArgumentProblem as problem:
        raise ConfigError(f"{where(problem.key)}{problem}") from None
    unknown = [s[2:].split("=")[0] for s in (*from_recipe, *unknown_cli) if s.startswith("--")]
    if unknown:
        raise ConfigError(_unknown_keys_message(unknown, parser))
    user_keys = dict.fromkeys([*from_cli, *(k for k in values if hasattr(namespace, k))])
    problems = check_values(vars(namespace), field_types(parser.dataclass_types), user_keys, where)
    if problems:
        raise ConfigError("invalid recipe value(s):\n  " + "\n  ".join(problems))
    return _dataclasses_from(parser, namespace)


def _cli_keys(parser: RecipeParser, argv: Sequence[str]) -> list[str]:
    """The fields set on the command line (``--lora_r 4``, ``--lora-r=4``, ``--no_normalize``)."""
    actions = parser._option_string_actions
    options = (token.split("=")[0] for token in argv if token.startswith("--"))
    return list(dict.fromkeys(actions[option].dest for option in options if option in actions))


def _unknown_keys_message(unknown: list[str], parser: TrlParser) -> str:
    """Every unknown key with the closest valid names, or, for a key a dataclass lists in its ``renamed_keys``
    (class attribute: old key -> what to write now), what replaced it."""
    known = sorted({action.dest for action in parser._actions if action.dest != "help"})
    renamed = {old: new for dc in parser.dataclass_types for old, new in getattr(dc, "renamed_keys", {}).items()}
    parts = []
    for key in unknown:
        if key in renamed:
            parts.append(f"'{key}' was replaced: write {renamed[key]}")
            continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        parts.append(f"'{key}'" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
    return "unknown recipe key(s): " + "; ".join(parts) + ". Run with --help for every valid key."
