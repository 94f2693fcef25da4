"""``load``: read any supported source and apply a task schema, in one call (cached per file)."""

from __future__ import annotations

import difflib
import os

from datasets import Dataset

from data_utils.cache import cache_key, cached, first_on_each_machine
from data_utils.options import READ_OPTIONS, reject_unknown
from data_utils.readers import is_stsb_release_file, read
from data_utils.schemas import SCHEMA_OPTIONS, SCHEMAS, apply_schema, parse_columns
from lorasmith.errors import ConfigError

# Options that describe a layout; any of them given means the user chose it, so no layout is detected.
_LAYOUT_OPTIONS = ("format", "sep", "header", "quoting")


def load(source, *, task: str | None = None, columns=None, **options) -> Dataset:
    """Read ``source`` and return it in the canonical columns of ``task``.

    Args:
        source: a file path (csv, tsv, json, jsonl, parquet, xlsx, txt, pkl; ``.gz`` of each), a glob,
            a ``save_to_disk`` folder, a hub dataset id (when not offline), or a ``Dataset``.
        task: one of ``SCHEMAS``, or ``None`` to read only (no schema, mapped columns renamed).
        columns: ``{canonical: source_column}`` or ``"anchor=question,negative=n1+n2"``; an integer
            source is a column position (``header=false``).
        **options: read options (``options.READ_OPTIONS``: format, sep, quoting, header, encoding, sheet,
            split, field) and the task's options (``schemas.SCHEMA_OPTIONS``: score_range,
            tag_delimiter, text_columns, label_names, multi_label, label_delimiter). Strings in the
            command-line form are accepted ("0,5", "a,b", "true").

    For ``task="scored_pairs"`` without ``columns`` or layout options, an STS Benchmark release file
    (``readers.is_stsb_release_file``) is read as ``format="stsb"``; that format's scores are on (0, 5)
    unless ``score_range`` says otherwise.

    A file or glob source is parsed and validated once and cached as Arrow (``data_utils.cache``); in a
    distributed run the local main process of each machine does it and the others read the cache, so
    every process must call ``load`` for the same source (it is collective there).

    Raises:
        ConfigError: unknown task, option or column mapping.
        DataError: the source cannot be read or breaks the task's schema (file, row, column named).
    """
    if task is not None and task not in SCHEMAS:
        close = difflib.get_close_matches(str(task), SCHEMAS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown task '{task}'{hint} Tasks: {', '.join(SCHEMAS)}")
    task_options = SCHEMA_OPTIONS[task] if task else {}
    for name in options:
        owners = [other for other, allowed in SCHEMA_OPTIONS.items() if name in allowed]
        if name not in READ_OPTIONS and name not in task_options and owners:
            raise ConfigError(f"option '{name}' applies to task {' / '.join(owners)}, not to task {task!r}")
    reject_unknown(options, {**READ_OPTIONS, **task_options}, f"load(task={task!r})")
    if (
        task == "scored_pairs"
        and columns is None
        and not any(name in options for name in _LAYOUT_OPTIONS)
        and isinstance(source, (str, os.PathLike))
        and is_stsb_release_file(source)
    ):
        options["format"] = "stsb"
    if task == "scored_pairs" and options.get("format") == "stsb":
        options.setdefault("score_range", (0, 5))
    column_map = parse_columns(columns)
    read_options = {name: value for name, value in options.items() if name in READ_OPTIONS}
    schema_options = {name: value for name, value in options.items() if name in task_options}

    def build() -> Dataset:
        return apply_schema(read(source, **read_options), task, column_map, **schema_options)

    key = cache_key(source, task, column_map, options)
    return first_on_each_machine(lambda: cached(key, build))
