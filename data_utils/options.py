"""Coerce ``load`` options given as Python values, YAML values or command-line strings.

``load(..., score_range="0,5", text_columns="a,b", multi_label="true")`` must mean the same as the
typed form, so that recipes, ``python -m data_utils.check --score_range 0,5`` and Python callers
share one spelling. Every coercion raises ``ConfigError`` naming the option.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from lorasmith.errors import ConfigError

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def as_bool(name: str, value) -> bool:
    """``True``/``False`` or one of 1/0, true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"option '{name}' must be true or false, got {value!r}")


def as_str_list(name: str, value) -> list[str]:
    """A list of names, or the command-line form ``"a,b,c"``; never empty."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip() for item in items]
    if not names or any(not item for item in names):
        raise ConfigError(f"option '{name}' must be a non-empty list of names, got {value!r}")
    return names


def as_range(name: str, value) -> tuple[float, float]:
    """``(lo, hi)`` with ``lo < hi``, from a pair of numbers or the string ``"lo,hi"``."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        lo, hi = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"option '{name}' must be two numbers 'lo,hi', got {value!r}") from None
    if not lo < hi:
        raise ConfigError(f"option '{name}' must satisfy lo < hi, got ({lo}, {hi})")
    return lo, hi


def reject_unknown(given: Iterable[str], allowed: Mapping[str, str], where: str) -> None:
    """Raise ``ConfigError`` for the first option in ``given`` that is not a key of ``allowed``.

    ``allowed`` maps option name -> one-line help; the error lists them and suggests the closest.
    """
    for name in given:
        if name in allowed:
            continue
        close = difflib.get_close_matches(name, list(allowed), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        valid = ", ".join(f"{key} ({help_})" for key, help_ in allowed.items()) or "(none)"
        raise ConfigError(f"unknown option '{name}' for {where}{hint} Valid options: {valid}")
