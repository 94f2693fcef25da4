"""The reader options (one definition for ``load``, recipes and every CLI) and their coercion.

``ReadOptions`` declares how a file is read: ``sep``, ``quoting``, ``header``, ``encoding``, ``format``,
``sheet``, ``split``, ``field``. ``load(**options)`` accepts exactly these names (``READ_OPTIONS``),
recipes get them as fields (``train.common.args.DataArguments`` extends ``ReadOptions``) and CLIs as
flags (each CLI's arguments dataclass extends it: ``--sep``, ``--header`` ...), so every option an error
message advises (``sep='\\t'``, ``encoding='utf-16'``, ``format=...``) exists under that name everywhere.

``load(..., score_range="0,5", text_columns="a,b", multi_label="true")`` must mean the same as the
typed form, so that recipes, ``python -m data_utils.check --score_range 0,5`` and Python callers
share one spelling. Every coercion raises ``ConfigError`` naming the option.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping

from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option

# What a ``sep`` may be written as where a literal tab is awkward (YAML single quotes, a shell).
SEPARATOR_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}


@dataclasses.dataclass
class ReadOptions:
    """How a data file is read; ``None`` means the format's default. Field helps are the documentation."""

    _argument_group_name = "Reading files"

    format: str | None = option(
        "File format, overriding the extension: csv, tsv, json, jsonl, parquet, xlsx, txt, pkl, or stsb "
        "(the STS Benchmark release layout; detected by itself for scored pairs).",
        default=None,
    )
    sep: str | None = option(
        "csv/tsv field delimiter (default ',' for .csv, tab for .tsv); also written tab, '\\t', comma, "
        "semicolon, pipe. Given for a .txt file, the file is read as delimited with a header row.",
        default=None,
    )
    quoting: str | None = option(
        "csv/tsv quotes: 'minimal' (default) or 'none' (quote characters are text).", default=None
    )
    header: str | None = option(
        "csv/tsv/xlsx: the first row names the columns (default true); false/none: columns are named by "
        "position '0', '1', ... (map them with columns: {anchor: 0, positive: 1}). txt: true skips line 1 "
        "(default false: every line is a sentence).",
        default=None,
    )
    encoding: str | None = option(
        "Text encoding, e.g. utf-16, latin-1 (default utf-8; a byte-order mark is ignored).", default=None
    )
    sheet: str | None = option("xlsx sheet name or 0-based index (default the first sheet).", default=None)
    split: str | None = option(
        "Split of a saved DatasetDict or hub dataset (default: the only split, else 'train').", default=None
    )
    field: str | None = option("Key of a .json object that holds the list of records.", default=None)

    def read_options(self) -> dict[str, str]:
        """The options that were given (not ``None``), as ``load`` keyword arguments."""
        return {
            option.name: getattr(self, option.name)
            for option in dataclasses.fields(ReadOptions)
            if getattr(self, option.name) is not None
        }


READ_OPTIONS: dict[str, str] = {
    option.name: option.metadata["help"] for option in dataclasses.fields(ReadOptions)
}


def as_separator(value) -> str:
    """One delimiter character: a literal, or one of ``SEPARATOR_NAMES`` (``tab``, ``'\\t'`` as typed ...)."""
    text = str(value)
    text = SEPARATOR_NAMES.get(text.strip().lower(), text)
    if len(text) != 1:
        raise ConfigError(
            f"option 'sep' must be one character (or one of {', '.join(SEPARATOR_NAMES)}), got {value!r}"
        )
    return text


def as_header(value) -> bool:
    """``header``: true/false as ``as_bool``, and ``none`` meaning false (no header row)."""
    return False if str(value).strip().lower() == "none" else as_bool("header", value)


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
