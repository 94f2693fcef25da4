"""Validate a data source for a task before launching a long job, and summarise it.

    python -m data_utils.check --task pairs --data train.jsonl --columns anchor=question,positive=answer
    python -m data_utils.check --task scored_pairs --data sts.tsv --score_range 0,5 \\
        --tokenizer sentence-transformers/all-MiniLM-L6-v2 --max_length 128
    python -m data_utils.check --task labeled --data nli.csv --text_columns premise,hypothesis

The reader flags (``--sep tab``, ``--header false``, ``--quoting none``, ``--encoding utf-16``, ``--format tsv``
...) are ``data_utils.options.ReadOptions``; any other ``--key value`` is passed to ``data_utils.load`` as a
task option (``--label_names neg,pos``, ``--multi_label`` ...). Prints rows, columns, duplicate
counts and a task summary (label distribution, tags per row, score histogram); with ``--tokenizer``,
token lengths per text column and how many rows exceed ``--max_length``. Exit status: 0 when the
data is valid, 2 on a data or configuration error (message on stderr, no traceback).
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np
from datasets import ClassLabel, Dataset

from data_utils.loader import load
from data_utils.options import ReadOptions
from data_utils.readers import column_values
from data_utils.schemas import SCHEMAS
from lorasmith.embedded_models import embedded_model_files
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser, parse_cli
from lorasmith.tokenizer_inputs import model_max_length

_BAR_WIDTH = 30
_TOP_TAGS = 10


@dataclasses.dataclass(kw_only=True)
class CheckArguments(ReadOptions):
    """The flags of ``python -m data_utils.check``; any other ``--key value`` is a task option for ``load``."""

    _argument_group_name = "Check"

    task: str | None = option(
        "task schema to validate (default: only read)", default=None, choices=tuple(SCHEMAS)
    )
    data: str = option("file, glob, save_to_disk folder or hub dataset id")
    columns: str | None = option("column mapping, e.g. anchor=question,negative=n1+n2", default=None)
    tokenizer: str | None = option(
        "tokenizer name or path, or an embedded model ('minilm'): report token lengths", default=None
    )
    max_length: int | None = option(
        "count rows longer than this (default: the tokenizer's limit)", default=None
    )


def make_parser() -> RecipeParser:
    return make_cli_parser([CheckArguments], module="data_utils.check", description=__doc__)


def parse_load_options(tokens: Sequence[str]) -> dict[str, str]:
    """``["--score_range", "0,5", "--multi-label"]`` -> ``{"score_range": "0,5", "multi_label": "true"}``."""
    options: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"unexpected argument {token!r}: load options are written --key value")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is None or following.startswith("--"):
                value = "true"
            else:
                value = following
                i += 1
        options[key.replace("-", "_")] = value
        i += 1
    return options


def text_columns_of(dataset: Dataset, task: str | None) -> list[str]:
    """Columns holding text (str, or lists of str for ``negatives``), in dataset order."""
    if task is None:
        return [
            name for name, feature in dataset.features.items() if getattr(feature, "dtype", None) == "string"
        ]
    return [name for name in dataset.column_names if name not in ("score", "label", "tags")]


def _texts(dataset: Dataset, column: str) -> list[str]:
    values = column_values(dataset, column)
    return [text for row in values for text in row] if values and isinstance(values[0], list) else values


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f}%)" if total else str(count)


def summarize(dataset: Dataset, task: str | None) -> list[str]:
    """Report lines: shape, empties/duplicates, and the task's own summary."""
    rows = dataset.num_rows
    columns = ", ".join(f"{name} ({_feature_name(feature)})" for name, feature in dataset.features.items())
    lines = [f"rows: {rows}", f"columns: {columns}"]
    text_columns = text_columns_of(dataset, task)
    if task is None:
        for column in dataset.column_names:
            values = column_values(dataset, column)
            empty = sum(value is None or (isinstance(value, str) and not value.strip()) for value in values)
            lines.append(f"empty or null in '{column}': {_share(empty, rows)}")
    records = list(
        zip(*(map(repr, column_values(dataset, column)) for column in dataset.column_names), strict=True)
    )
    lines.append(f"duplicate rows: {_share(rows - len(set(records)), rows)}")
    for column in text_columns:
        if column != "negatives":
            values = column_values(dataset, column)
            lines.append(f"duplicate '{column}': {_share(rows - len(set(values)), rows)}")
    if task in ("pairs", "triplets"):
        same = sum(
            a == p
            for a, p in zip(column_values(dataset, "anchor"), column_values(dataset, "positive"), strict=True)
        )
        lines.append(f"anchor == positive: {_share(same, rows)}")
    if task == "triplets":
        negatives = column_values(dataset, "negatives")
        false_negatives = sum(
            p in row for p, row in zip(column_values(dataset, "positive"), negatives, strict=True)
        )
        lines.append(
            f"negatives per row: {len(negatives[0])}; positive among its negatives: {_share(false_negatives, rows)}"
        )
    if task == "scored_pairs":
        lines += _score_summary(np.asarray(column_values(dataset, "score"), dtype=float))
    if task == "tags":
        lines += _tag_summary(column_values(dataset, "tags"))
    if task == "labeled":
        lines += _label_summary(dataset)
    return lines


def _feature_name(feature) -> str:
    if isinstance(feature, ClassLabel):
        return f"ClassLabel[{len(feature.names)}]"
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"list[{_feature_name(inner)}]"
    return str(getattr(feature, "dtype", type(feature).__name__))


def _bars(labels: Sequence[str], counts: Sequence[int]) -> list[str]:
    """One text bar per label, scaled to the largest count."""
    peak = max(max(counts), 1)
    width = max(len(label) for label in labels)
    return [
        f"  {label:>{width}} {count:6d} {'#' * round(_BAR_WIDTH * count / peak)}"
        for label, count in zip(labels, counts, strict=True)
    ]


def _score_summary(scores: np.ndarray) -> list[str]:
    edges = np.linspace(0.0, 1.0, 6)
    labels = [
        f"[{lo:.1f}, {hi:.1f}{']' if hi == 1 else ')'}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    return [
        f"score (normalised to [0, 1]): min {scores.min():.3f}, mean {scores.mean():.3f}, "
        f"median {np.median(scores):.3f}, max {scores.max():.3f}",
        *_bars(labels, np.histogram(scores, bins=edges)[0].tolist()),
    ]


def _tag_summary(tag_lists: list[list[str]]) -> list[str]:
    counts = Counter(tag for tags in tag_lists for tag in tags)
    per_row = np.asarray([len(tags) for tags in tag_lists])
    top = ", ".join(f"{tag} {count}" for tag, count in counts.most_common(_TOP_TAGS))
    once = sum(count == 1 for count in counts.values())
    return [
        f"distinct tags: {len(counts)}; tags per row: min {per_row.min()}, mean {per_row.mean():.2f}, max {per_row.max()}",
        f"most frequent: {top}",
        f"tags seen once: {once}",
    ]


def _label_summary(dataset: Dataset) -> list[str]:
    feature = dataset.features["label"]
    names = feature.names if isinstance(feature, ClassLabel) else feature.feature.names
    values = column_values(dataset, "label")
    multi = not isinstance(feature, ClassLabel)
    counts = Counter(label for row in values for label in row) if multi else Counter(values)
    rows = dataset.num_rows
    lines = [f"labels: {len(names)}" + (" (multi-label)" if multi else "")]
    lines += _bars(names, [counts[i] for i in range(len(names))])
    missing = [name for i, name in enumerate(names) if counts[i] == 0]
    if missing:
        lines.append(f"warning: labels with no rows: {', '.join(missing)}")
    if multi:
        per_row = np.asarray([len(row) for row in values])
        lines.append(
            f"labels per row: mean {per_row.mean():.2f}; rows with no label: {_share(int((per_row == 0).sum()), rows)}"
        )
    return lines


def token_length_summary(
    dataset: Dataset, task: str | None, tokenizer_name: str, max_length: int | None
) -> list[str]:
    """Token counts (special tokens included) per text column: min / median / p95 / max, rows over ``max_length``."""
    from transformers import AutoTokenizer

    embedded = embedded_model_files(tokenizer_name)
    source, gguf = (str(embedded[0]), embedded[1]) if embedded else (tokenizer_name, None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load tokenizer '{tokenizer_name}': {error}") from error
    if max_length is None:
        max_length = model_max_length(tokenizer, default=None)
    lines = [f"token lengths ({tokenizer_name}" + (f", max length {max_length}):" if max_length else "):")]
    columns = text_columns_of(dataset, task)
    batches = {column: (_texts(dataset, column),) for column in columns}
    if task == "labeled" and len(columns) == 2:
        batches[f"{columns[0]} + {columns[1]}"] = tuple(_texts(dataset, column) for column in columns)
    for name, texts in batches.items():
        lengths = np.asarray([len(ids) for ids in tokenizer(*texts)["input_ids"]])
        line = (
            f"  {name}: min {lengths.min()}, median {np.median(lengths):.0f}, "
            f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}"
        )
        if max_length:
            line += f"; longer than {max_length}: {_share(int((lengths > max_length).sum()), len(lengths))}"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(lambda: _check(*parse_cli(make_parser(), argv, remaining=True)))


def _check(args: CheckArguments, extra: list[str]) -> None:
    options = {**args.read_options(), **parse_load_options(extra)}
    dataset = load(args.data, task=args.task, columns=args.columns, **options)
    lines = [
        f"data: {args.data}",
        f"task: {args.task or '(none: read only)'}",
        *summarize(dataset, args.task),
    ]
    if args.tokenizer:
        lines += token_length_summary(dataset, args.task, args.tokenizer, args.max_length)
    print("\n".join(lines))
    print("OK: the data is valid for task " + repr(args.task) if args.task else "OK: the data was read")


if __name__ == "__main__":
    sys.exit(main())
