"""Recipe + command-line parsing shared by every entrypoint (the error boundary is ``lorasmith.process.run_main``).

A run is configured by one YAML recipe (``--config configs/<task>/R.yaml``) whose keys are the fields of
the entrypoint's dataclasses; any ``--key value`` on the command line overrides the recipe. Parsing is
TRL's ``TrlParser``; on top of it we refuse unknown keys (recipe or CLI) with the closest valid name, and
pick CPU-friendly defaults (``use_cpu``, no bf16) on a machine without CUDA *before* the dataclasses'
``__post_init__`` runs (TRL's ``SFTConfig`` defaults to bf16 and raises on a CPU-only machine otherwise).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence

import torch
from trl import TrlParser

from lorasmith.errors import ConfigError


def make_parser(dataclass_types: Sequence[type]) -> TrlParser:
    """A ``TrlParser`` over ``dataclass_types`` with CPU defaults applied when CUDA is absent."""
    parser = TrlParser(dataclass_types)
    if not torch.cuda.is_available():
        field_names = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        parser.set_defaults(**{k: v for k, v in {"use_cpu": True, "bf16": False}.items() if k in field_names})
    return parser


def parse_recipe(parser: TrlParser, argv: Sequence[str] | None = None) -> tuple:
    """Parse ``--config recipe.yaml`` plus overrides into the parser's dataclasses.

    Raises:
        ConfigError: the recipe file is missing or not a mapping, or a key (in the recipe or on the
            command line) is not a field of any dataclass — the message suggests the closest names.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        config_path = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else None
        if config_path is None:
            raise ConfigError("--config needs a path to a YAML recipe, e.g. --config configs/embed/quickstart.yaml")
        try:
            open(config_path).close()
        except OSError as error:
            raise ConfigError(f"cannot read recipe {config_path}: {error.strerror}") from None
    try:
        *parsed, from_recipe, from_cli = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as error:  # TrlParser: "Config file ... must contain a YAML mapping", bad values
        raise ConfigError(str(error)) from None
    unknown = [s[2:].split("=")[0] for s in (*from_recipe, *from_cli) if s.startswith("--")]
    if unknown:
        raise ConfigError(_unknown_keys_message(unknown, parser))
    return tuple(parsed)


def _unknown_keys_message(unknown: list[str], parser: TrlParser) -> str:
    known = sorted({action.dest for action in parser._actions if action.dest != "help"})
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        parts.append(f"'{key}'" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
    return "unknown recipe key(s): " + "; ".join(parts) + ". Run with --help for every valid key."
