"""How a recipe key is declared: ``name: type = option(help, default=...)`` in an arguments dataclass.

``option`` is ``dataclasses.field`` with the metadata ``HfArgumentParser`` reads: the ``help`` text plus any
argparse keywords (``choices``, ``action``, ``aliases``). Every entrypoint's dataclasses declare their keys so.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(help: str, *, default=dataclasses.MISSING, default_factory=dataclasses.MISSING, **argparse) -> Any:
    """A dataclass field with its ``help`` and argparse keywords as metadata (no default: a required key)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **argparse})
