"""How a recipe key is declared: ``name: type = option(help, default=...)`` in an arguments dataclass, the
metadata ``HfArgumentParser`` reads (``help`` and argparse keywords such as ``choices``, ``action``, ``aliases``)."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(help: str, *, default=dataclasses.MISSING, default_factory=dataclasses.MISSING, **argparse) -> Any:
    """A dataclass field with its ``help`` and argparse keywords as metadata (no default: a required key)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **argparse})
