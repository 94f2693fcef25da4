"""Task schemas: turn a dataset as read into the canonical columns a task trains on, validated.

| task           | output columns (in this order)                        |
|----------------|-------------------------------------------------------|
| `sentences`    | `text` str                                             |
| `pairs`        | `anchor` str, `positive` str                           |
| `triplets`     | `anchor` str, `positive` str, `negatives` list[str] (same length N >= 1 on every row) |
| `scored_pairs` | `sentence1` str, `sentence2` str, `score` float in [0, 1] |
| `tags`         | `text` str, `tags` list[str] (non-empty, stripped, deduplicated in order) |
| `labeled`      | the `text_columns` (str), then `label` ClassLabel / Sequence(ClassLabel) |

``columns`` maps a canonical name to the source column holding it; unmapped names default to
themselves. Every required text is a non-empty, non-whitespace string. The first bad row is
reported with the count and the list of rows like it, so one run shows the whole problem.
Source columns the task does not use are dropped.

String columns are validated and assembled as Arrow arrays (a regular expression finds empty and
whitespace-only texts, with Python's ``str.isspace`` set), so a million-row file never becomes a
million Python objects; only the rows named in an error are read into Python.
Labels inferred from the data that differ only by letter case ("Positive" and "positive") are logged
as a warning naming both spellings: they become two classes.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetInfo, Features, Value
from datasets import Sequence as SequenceFeature
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from data_utils.labels import (
    LabelEncoder,
    infer_label_names,
    label_key,
    normalize_label_names,
    split_multi_label,
)
from data_utils.options import as_bool, as_range, as_str_list
from data_utils.readers import ReadResult
from lorasmith.errors import ConfigError, DataError

# The data schemas ``load(task=...)`` validates against (``train.embed``'s training objectives are another list).
SCHEMAS = ("sentences", "pairs", "triplets", "scored_pairs", "tags", "labeled")

SCHEMA_OPTIONS: dict[str, dict[str, str]] = {
    "sentences": {},
    "pairs": {},
    "triplets": {},
    "scored_pairs": {
        "score_range": "(lo, hi) of the raw scores, mapped to [0, 1]; default: (0, 1) or (0, 5) when the data fits",
    },
    "tags": {"tag_delimiter": "separator of tags written as one string (default ',')"},
    "labeled": {
        "text_columns": "text columns, names after column mapping (default ['text'])",
        "label_names": "class names in id order: a list, or a dict {id: name}; default: sorted distinct labels",
        "multi_label": "each row holds a set of labels (default false)",
        "label_delimiter": "separator of multi-labels written as one string (default ',')",
    },
}

_CANONICAL = {
    "sentences": ("text",),
    "pairs": ("anchor", "positive"),
    "triplets": ("anchor", "positive", "negative", "negatives"),
    "scored_pairs": ("sentence1", "sentence2", "score"),
    "tags": ("text", "tags"),
}
_TEXT = Value("string")
ColumnMap = dict[str, "str | list[str]"]
# Empty or only characters Python's ``str.isspace`` accepts (all of them lie below U+3001).
_BLANK = "^[" + "".join(f"\\x{{{code:x}}}" for code in range(0x3001) if chr(code).isspace()) + "]*$"
logger = logging.getLogger(__name__)


def parse_columns(columns) -> ColumnMap:
    """``{canonical: source}`` from a dict or the CLI string ``"anchor=question,negative=n1+n2"``
    (``+`` joins several source columns, used for ``negative``). A source given as an integer is a column
    position of a file read with ``header=false`` (named ``'0'``, ``'1'``, ...): ``{anchor: 0}``."""
    if columns is None:
        return {}
    if isinstance(columns, Mapping):
        mapping = dict(columns)
    else:
        mapping = {}
        for item in str(columns).split(","):
            canonical, sep, source = (part.strip() for part in item.partition("="))
            if not sep or not canonical or not source:
                raise ConfigError(
                    f"columns entry {item.strip()!r} is not canonical=source (e.g. 'anchor=question,positive=answer')"
                )
            mapping[canonical] = source.split("+") if "+" in source else source
    mapping = {
        canonical: [_position_name(item) for item in source]
        if isinstance(source, (list, tuple))
        else _position_name(source)
        for canonical, source in mapping.items()
    }
    for canonical, source in mapping.items():
        if not isinstance(source, str) and not (
            isinstance(source, (list, tuple)) and source and all(isinstance(s, str) for s in source)
        ):
            raise ConfigError(
                f"columns['{canonical}'] must be a column name or a list of names, got {source!r}"
            )
    return {key: list(value) if isinstance(value, tuple) else value for key, value in mapping.items()}


def _position_name(source):
    """Column ``2`` (a position) -> ``'2'``, the name ``header=false`` gives it; anything else unchanged."""
    return str(source) if isinstance(source, int) and not isinstance(source, bool) else source


def apply_schema(raw: ReadResult, task: str | None, columns: ColumnMap, **options) -> Dataset:
    """Validate ``raw`` against ``task`` and return the canonical dataset (``task=None``: only rename
    the mapped columns)."""
    if task is None:
        return _rename_only(raw, columns)
    known = _canonical_names(task, options)
    unknown = [name for name in columns if name not in known]
    if unknown:
        raise ConfigError(
            f"columns names '{unknown[0]}', which task '{task}' does not use; its columns are: {', '.join(known)}"
        )
    return _BUILDERS[task](_Source(raw, columns), **options)


def _canonical_names(task: str, options: Mapping) -> list[str]:
    if task == "labeled":
        return [*as_str_list("text_columns", options.get("text_columns", ["text"])), "label"]
    return list(_CANONICAL[task])


def _rename_only(raw: ReadResult, columns: ColumnMap) -> Dataset:
    if any(isinstance(source, list) for source in columns.values()):
        raise ConfigError(
            "a list of source columns needs a task (it is only meaningful for 'negative' of triplets)"
        )
    source = _Source(raw, columns)
    renames = {source.name(canonical): canonical for canonical in columns}
    return raw.dataset.rename_columns({old: new for old, new in renames.items() if old != new})


class _Source:
    """The read dataset seen through a column map: resolves names, reads validated columns."""

    def __init__(self, raw: ReadResult, columns: ColumnMap):
        self.raw = raw
        self.columns = columns

    def has(self, canonical: str) -> bool:
        return canonical in self.columns or canonical in self.raw.dataset.column_names

    def name(self, canonical: str) -> str:
        """Source column holding ``canonical``; ``DataError`` naming close columns when absent."""
        name = self.columns.get(canonical, canonical)
        if isinstance(name, list):
            raise ConfigError(f"columns['{canonical}'] must be one column name, got a list {name}")
        return self.require(name, canonical)

    def require(self, name: str, canonical: str) -> str:
        """``name`` if the source has that column, else a ``DataError`` suggesting the closest one."""
        available = self.raw.dataset.column_names
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            mapped = f" (the column for '{canonical}')" if name != canonical else ""
            if close:
                hint = f"; did you mean '{close[0]}'? map it with columns={{'{canonical}': '{close[0]}'}}"
            else:
                hint = f"; map your column with columns={{'{canonical}': '<column>'}} (CLI: --columns {canonical}=<column>)"
            raise DataError(f"no column '{name}'{mapped}{hint}", source=self.raw.source, available=available)
        return name

    def reject(self, bad: Sequence[int], column: str, problem: Callable[[int], str], expected: str) -> None:
        """Raise ``DataError`` on the first bad record (``problem(index)`` words it), counting the rest."""
        if not bad:
            return
        name, row = self.raw.locate(bad[0])
        text = problem(bad[0])
        if len(bad) > 1:
            text += f" ({len(bad)} rows like this: {self.raw.describe_rows(bad)})"
        raise DataError(text, source=name, row=row, column=column, expected=expected)

    def texts(self, canonical: str) -> pa.ChunkedArray:
        """Column ``canonical`` as non-empty strings (numbers are written as text)."""
        return self.texts_of(self.name(canonical))

    def texts_of(self, column: str) -> pa.ChunkedArray:
        """Column ``column`` as an Arrow string array of non-empty, non-whitespace texts."""
        array = self.raw.dataset.data.column(column)
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            blank = pc.or_(pc.is_null(array), pc.fill_null(pc.match_substring_regex(array, _BLANK), True))
            bad = np.flatnonzero(blank.to_numpy(zero_copy_only=False)).tolist()
            texts = array.cast(pa.string())
        else:
            values = self.raw.values(column)
            as_texts = [_as_text(value) for value in values]
            bad = [i for i, text in enumerate(as_texts) if text is None or not text.strip()]
            texts = pa.chunked_array([pa.array(as_texts, type=pa.string())])
        # array[i] reads one row: only the reported one becomes a Python value
        self.reject(bad, column, lambda i: f"text {_describe_bad_text(array[i].as_py())}", "non-empty text")
        return texts


def _as_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (list, dict)) or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _describe_bad_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "is missing (null)"
    if isinstance(value, (list, dict)):
        return f"is a {type(value).__name__}, not text"
    return "is empty" if value == "" else "is only whitespace"


def _build(columns: dict[str, list | pa.ChunkedArray], features: dict) -> Dataset:
    """In-memory dataset of already validated columns (lists or Arrow arrays), typed by ``features``
    (no per-row encoding)."""
    typed = Features(features)
    return Dataset(
        InMemoryTable(pa.table(columns, schema=typed.arrow_schema)),
        info=DatasetInfo(features=typed),
        fingerprint=generate_random_fingerprint(),  # hashing the rows would cost a pickle of the table
    )


def _sentences(source: _Source) -> Dataset:
    return _build({"text": source.texts("text")}, {"text": _TEXT})


def _pairs(source: _Source) -> Dataset:
    return _build(
        {"anchor": source.texts("anchor"), "positive": source.texts("positive")},
        {"anchor": _TEXT, "positive": _TEXT},
    )


def _triplets(source: _Source) -> Dataset:
    columns = {
        "anchor": source.texts("anchor"),
        "positive": source.texts("positive"),
        "negatives": _negatives(source),
    }
    return _build(columns, {"anchor": _TEXT, "positive": _TEXT, "negatives": SequenceFeature(_TEXT)})


def _rows_of(columns: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """(rows, N) list array whose row i holds ``columns[0][i], ..., columns[N-1][i]`` (Arrow, no Python rows)."""
    width = len(columns)
    if width == 1:
        return pa.chunked_array(
            [pa.ListArray.from_arrays(pa.array(np.arange(len(chunk) + 1, dtype=np.int32)), chunk) for chunk in columns[0].chunks],
            type=pa.list_(pa.string()),
        )
    rows = len(columns[0])
    values = pa.concat_arrays([chunk for column in columns for chunk in column.chunks])
    order = (np.arange(width)[None, :] * rows + np.arange(rows)[:, None]).ravel()  # row-major: (rows, N)
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.chunked_array([pa.ListArray.from_arrays(offsets, values.take(pa.array(order)))])


def _negatives(source: _Source) -> pa.ChunkedArray | list[list[str]]:
    """(rows, N) negatives from one or several ``negative`` columns, or a ``negatives`` list column."""
    single = source.columns.get("negative")
    if isinstance(single, list):
        return _rows_of(
            [source.texts_of(source.require(name, "negative")) for name in single]
        )
    if single is not None or ("negatives" not in source.columns and not source.has("negatives")):
        if not source.has("negative"):
            available = source.raw.dataset.column_names
            raise DataError(
                "no column 'negative' or 'negatives'; map yours with columns={'negative': 'col'} "
                "or columns={'negative': ['neg1', 'neg2']} (CLI: --columns negative=neg1+neg2)",
                source=source.raw.source,
                available=available,
            )
        return _rows_of([source.texts("negative")])
    column = source.name("negatives")
    values = source.raw.values(column)
    width = len(values[0]) if isinstance(values[0], list) else 0

    def problem_of(value) -> str | None:
        if not isinstance(value, list):
            return f"holds a {type(value).__name__}, not a list of texts"
        if not value:
            return "has no negatives"
        if any(_as_text(item) is None or not _as_text(item).strip() for item in value):
            return "has an empty or missing negative"
        if len(value) != width:
            return f"has {len(value)} negatives but the first row has {width}"
        return None

    problems = [problem_of(value) for value in values]
    bad = [i for i, problem in enumerate(problems) if problem]
    source.reject(
        bad,
        column,
        lambda i: problems[i],
        "a list of N >= 1 non-empty texts, the same N on every row (a CSV cell holds no list: put one negative "
        "per column and map them with columns={'negative': ['neg1', 'neg2']})",
    )
    return [[_as_text(item) for item in value] for value in values]


def _scored_pairs(source: _Source, score_range=None) -> Dataset:
    column = source.name("score")
    values = source.raw.values(column)
    scores = [_as_number(value) for value in values]
    bad = [i for i, score in enumerate(scores) if score is None]
    source.reject(bad, column, lambda i: f"score is not a number: {values[i]!r}", "a number")
    lo, hi = (
        as_range("score_range", score_range)
        if score_range is not None
        else _infer_score_range(source, scores)
    )
    outside = [i for i, score in enumerate(scores) if not lo <= score <= hi]
    source.reject(
        outside,
        column,
        lambda i: f"score {values[i]!r} is outside score_range ({lo:g}, {hi:g})",
        f"a number between {lo:g} and {hi:g}",
    )
    columns = {
        "sentence1": source.texts("sentence1"),
        "sentence2": source.texts("sentence2"),
        "score": [(score - lo) / (hi - lo) for score in scores],
    }
    return _build(columns, {"sentence1": _TEXT, "sentence2": _TEXT, "score": Value("float64")})


def _as_number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _infer_score_range(source: _Source, scores: list[float]) -> tuple[float, float]:
    low, high = min(scores), max(scores)
    for candidate in ((0.0, 1.0), (0.0, 5.0)):
        if candidate[0] <= low and high <= candidate[1]:
            return candidate
    raise DataError(
        f"cannot infer the score range: scores go from {low:g} to {high:g}",
        source=source.raw.source,
        column=source.name("score"),
        expected="score_range=(lo, hi), e.g. score_range=(0, 10) or --score_range 0,10",
    )


def _tags(source: _Source, tag_delimiter: str = ",") -> Dataset:
    column = source.name("tags")
    values = source.raw.values(column)
    tags = [_tag_list(value, tag_delimiter) for value in values]
    bad = [i for i, row in enumerate(tags) if not row]
    source.reject(
        bad,
        column,
        lambda i: f"tag list is empty: {values[i]!r}",
        f"at least one tag (a list, or a string split on {tag_delimiter!r})",
    )
    return _build(
        {"text": source.texts("text"), "tags": tags}, {"text": _TEXT, "tags": SequenceFeature(_TEXT)}
    )


def _tag_list(value, delimiter: str) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(delimiter)
    stripped = (str(item).strip() for item in items if item is not None)
    return list(dict.fromkeys(tag for tag in stripped if tag))


def _labeled(
    source: _Source, text_columns=("text",), label_names=None, multi_label=False, label_delimiter: str = ","
) -> Dataset:
    text_columns = as_str_list("text_columns", text_columns)
    if "label" in text_columns:
        raise ConfigError("text_columns cannot contain 'label': that is the output label column")
    multi_label = as_bool("multi_label", multi_label)
    texts = {name: source.texts(name) for name in text_columns}
    column = source.name("label")
    values = source.raw.values(column)
    if multi_label:
        keys = [split_multi_label(value, label_delimiter) for value in values]
        missing = [i for i, row in enumerate(keys) if row is None]
        all_keys = (key for row in keys if row for key in row)
    else:
        keys = [label_key(value) for value in values]
        missing = [i for i, key in enumerate(keys) if key is None]
        all_keys = (key for key in keys if key is not None)
    source.reject(missing, column, lambda i: f"label is missing: {values[i]!r}", "a label")
    if label_names is not None:
        names = normalize_label_names(label_names)
    else:
        names = infer_label_names(all_keys)
        _warn_case_variants(names, source.raw.source, column)
    encoder = LabelEncoder(names)
    rows = keys if multi_label else [[key] for key in keys]
    ids = [[encoder.encode(key) for key in row] for row in rows]
    unknown = {
        i: next(key for key, id_ in zip(rows[i], row_ids, strict=True) if id_ is None)
        for i, row_ids in enumerate(ids)
        if None in row_ids
    }
    source.reject(
        list(unknown),
        column,
        lambda i: f"unknown label {unknown[i]!r}",
        f"one of the label_names: {', '.join(names)}",
    )
    labels = ids if multi_label else [row_ids[0] for row_ids in ids]
    label_feature = SequenceFeature(ClassLabel(names=names)) if multi_label else ClassLabel(names=names)
    return _build(
        {**texts, "label": labels}, {**{name: _TEXT for name in text_columns}, "label": label_feature}
    )


def _warn_case_variants(names: Sequence[str], source: str, column: str) -> None:
    """Log label names that are equal but for letter case: each spelling is a class of its own."""
    spellings: dict[str, list[str]] = {}
    for name in names:
        spellings.setdefault(name.casefold(), []).append(name)
    variants = [group for group in spellings.values() if len(group) > 1]
    if variants:
        listed = "; ".join(" / ".join(repr(name) for name in group) for group in variants)
        logger.warning(
            "%s, column '%s': labels that differ only by letter case are separate classes: %s. If they are one "
            "class, write them alike in the data (or give label_names and fix the rows it then reports)",
            source,
            column,
            listed,
        )


_BUILDERS: dict[str, Callable[..., Dataset]] = {
    "sentences": _sentences,
    "pairs": _pairs,
    "triplets": _triplets,
    "scored_pairs": _scored_pairs,
    "tags": _tags,
    "labeled": _labeled,
}
