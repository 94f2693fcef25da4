"""Recipe + command-line parsing shared by every entrypoint (the error boundary is ``lorasmith.process.run_main``).

Every command line is declared as dataclasses: one flag per field (``lorasmith.recipe_fields.option``: its help and
argparse keywords), ``--field_name`` and ``--field-name`` both accepted, ``aliases=`` for more spellings. Training
entrypoints read a recipe (``make_parser`` + ``parse_recipe``, below); the other CLIs (evaluation, mining, sweeps,
data check) take flags only (``make_cli_parser`` + ``parse_cli``).

A run is configured by one YAML recipe (``--config configs/<task>/R.yaml``, or a packaged recipe's name:
``lorasmith.project_files``) whose keys are the fields of
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
from typing import get_type_hints

import torch
import yaml
from trl import TrlParser

from lorasmith import cli_help, project_files
from lorasmith.errors import ConfigError
from lorasmith.recipe_checks import check_values, field_types


class RecipeParser(TrlParser):
    """``TrlParser`` that lays its help out in groups (``lorasmith.cli_help``), leaves out the fields its dataclasses
    list in ``not_offered`` (class attribute: trainer fields that cannot apply to the command) and raises argument
    errors (as :class:`ArgumentProblem`) instead of printing the usage and exiting, so that ``parse_recipe`` can say
    where the value was written.

    ``module`` is the command's module (``train.embed``); the help names the command as the user started it
    (:func:`command_name`).
    """

    def __init__(self, dataclass_types: Sequence[type], *, module: str, **kwargs):
        self.not_offered = frozenset().union(*(getattr(dc, "not_offered", ()) for dc in dataclass_types))
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        self._passthrough: list[argparse.Action] = []
        super().__init__(dataclass_types, prog=command_name(module), formatter_class=cli_help.HelpFormatter, **kwargs)
        order = cli_help.group_order(self.dataclass_types)
        self._action_groups.sort(key=lambda group: order.index(group.title) if group.title in order else -1)

    def _add_dataclass_arguments(self, dtype: type) -> None:
        """``HfArgumentParser``'s, with each field in its help group and the ``--no_<flag>`` complements unlisted."""
        hints = get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            if not field.init or field.name in self.not_offered:
                continue
            field.type = hints[field.name]
            title = cli_help.group_of(dtype, field)
            if title not in self._groups:
                self._groups[title] = self.add_argument_group(title)
            group = self._groups[title]
            first_new = len(group._group_actions)
            self._parse_dataclass_field(group, field)
            for action in group._group_actions[first_new:]:
                if action.option_strings[0] == f"--no_{field.name}":
                    action.help = argparse.SUPPRESS
                elif title == cli_help.PASSTHROUGH:
                    self._passthrough.append(action)

    def add_recipe_options(self) -> None:
        """``--config`` (read by ``parse_recipe`` before parsing) and ``--help_all``, beside ``--help``."""
        self._optionals.title = "Recipe"
        self.add_argument(
            "--config",
            metavar="RECIPE",
            default=argparse.SUPPRESS,
            help="the YAML recipe: a file, or a packaged recipe's name (`lorasmith recipes` lists them). Every "
            "option below is a recipe key; --key value on the command line overrides the recipe.",
        )
        if self._passthrough:
            self.add_argument(
                "--help_all", "--help-all", action=cli_help.ShowAllHelp, help="also list the trainer passthrough"
            )

    def format_help(self, show_passthrough: bool = False) -> str:
        """The help; the trainer passthrough options summarised in one line unless ``show_passthrough``."""
        group = self._groups.get(cli_help.PASSTHROUGH)
        hidden = [] if show_passthrough else self._passthrough
        saved = [action.help for action in hidden]
        if group is not None:
            group.description = cli_help.passthrough_summary(
                self._passthrough, cli_help.trainer_arguments_name(self.dataclass_types), listed=show_passthrough
            )
        for action in hidden:
            action.help = argparse.SUPPRESS
        try:
            return super().format_help()
        finally:
            for action, text in zip(hidden, saved, strict=True):
                action.help = text

    def print_help(self, file=None, show_passthrough: bool = False) -> None:
        self._print_message(self.format_help(show_passthrough), file or sys.stdout)

    def error(self, message: str):
        match = re.match(r"argument (--[\w-]+)\S*: (.*)", message, re.DOTALL)
        if match is None:
            raise ConfigError(message)
        raise ArgumentProblem(self._option_string_actions[match.group(1)].dest, _plain(match.group(2)))


def command_name(module: str) -> str:
    """The command as the user started it: ``lorasmith embed`` under the ``lorasmith`` command (which sets
    ``sys.argv[0]`` so), else ``python -m train.embed``."""
    started_as = sys.argv[0] if sys.argv else ""
    return started_as if started_as.startswith("lorasmith ") else f"python -m {module}"


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


def make_parser(dataclass_types: Sequence[type], *, module: str, description: str | None = None) -> RecipeParser:
    """A :class:`RecipeParser` for a training entrypoint (``--config`` + overrides), with CPU defaults applied when
    CUDA is absent; ``description`` (the entrypoint's docstring) is printed as written."""
    parser = RecipeParser(
        dataclass_types, module=module, description=description, usage="%(prog)s --config RECIPE [--key value ...]"
    )
    parser.add_recipe_options()
    if not torch.cuda.is_available():
        field_names = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        parser.set_defaults(**{k: v for k, v in {"use_cpu": True, "bf16": False}.items() if k in field_names})
    return parser


def make_cli_parser(dataclass_types: Sequence[type], *, module: str, description: str) -> RecipeParser:
    """A :class:`RecipeParser` for a command line without a recipe: ``description`` is printed as written and
    flags cannot be abbreviated (``--coll`` is not taken for ``--collect``)."""
    return RecipeParser(dataclass_types, module=module, description=description, allow_abbrev=False)


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
                **{
                    f.name: getattr(namespace, f.name)
                    for f in dataclasses.fields(dataclass_type)
                    if f.init and hasattr(namespace, f.name)  # not offered: the field's default
                }
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
        path, packaged = project_files.find_recipe(argv[at + 1])
        recipe = read_recipe(str(path))
        if packaged:
            recipe.values = project_files.rebase_data_paths(recipe.values)
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
    """The fields set on the command line (``--lora_r 4``, ``--lora_r=4``, ``--no_normalize``)."""
    actions = parser._option_string_actions
    options = (token.split("=")[0] for token in argv if token.startswith("--"))
    return list(dict.fromkeys(actions[option].dest for option in options if option in actions))


def _unknown_keys_message(unknown: list[str], parser: RecipeParser) -> str:
    """Every unknown key with the closest valid names, or, for a key a dataclass lists in its ``renamed_keys``
    (class attribute: old key -> what to write now), what replaced it, or that it does not apply to this command."""
    known = sorted({action.dest for action in parser._actions if action.dest != "help"})
    renamed = {old: new for dc in parser.dataclass_types for old, new in getattr(dc, "renamed_keys", {}).items()}
    parts = []
    for key in unknown:
        if key in renamed:
            parts.append(f"'{key}' was replaced: write {renamed[key]}")
            continue
        if key in parser.not_offered:
            parts.append(f"'{key}' does not apply to {parser.prog}")
            continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        parts.append(f"'{key}'" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
    return "unknown recipe key(s): " + "; ".join(parts) + ". Run with --help for every valid key."
