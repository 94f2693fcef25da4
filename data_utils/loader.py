"""``load``: read any supported source and apply a task schema, in one call."""

from __future__ import annotations

import difflib

from datasets import Dataset

from data_utils.options import reject_unknown
from data_utils.readers import READ_OPTIONS, read
from data_utils.schemas import SCHEMA_OPTIONS, SCHEMAS, apply_schema, parse_columns
from lorasmith.errors import ConfigError


def load(source, *, task: str | None = None, columns=None, **options) -> Dataset:
    """Read ``source`` and return it in the canonical columns of ``task``.

    Args:
        source: a file path (csv, tsv, json, jsonl, parquet, xlsx, txt, pkl; ``.gz`` of each), a glob,
            a ``save_to_disk`` folder, a hub dataset id (when not offline), or a ``Dataset``.
        task: one of ``SCHEMAS``, or ``None`` to read only (no schema, mapped columns renamed).
        columns: ``{canonical: source_column}`` or ``"anchor=question,negative=n1+n2"``.
        **options: read options (``readers.READ_OPTIONS``: header, quoting, sep, encoding, sheet,
            split, field, format) and the task's options (``schemas.SCHEMA_OPTIONS``: score_range,
            tag_delimiter, text_columns, label_names, multi_label, label_delimiter). Strings in the
            command-line form are accepted ("0,5", "a,b", "true").

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
    read_options = {name: value for name, value in options.items() if name in READ_OPTIONS}
    schema_options = {name: value for name, value in options.items() if name in task_options}
    return apply_schema(read(source, **read_options), task, parse_columns(columns), **schema_options)
