"""Mined negatives -> triplets rows, the atomic JSONL write and the end-of-run summary.

Formats (both read by ``data_utils.load(task="triplets")`` and ``train.embed`` as they are):

- ``n-tuple``: one row per pair, ``{"anchor", "positive", "negatives": [N texts]}``; the triplets schema needs
  the same N on every row, so pairs short of N negatives are dropped.
- ``triplet``: one row per negative, ``{"anchor", "positive", "negative"}``; pairs short of N negatives are
  dropped, or kept with the negatives they have (``keep_short``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from lorasmith.files import open_atomic

FORMATS = ("n-tuple", "triplet")


def triplet_rows(
    anchors: Sequence[str],
    positives: Sequence[str],
    negatives: Sequence[Sequence[str]],
    *,
    num_negatives: int,
    output_format: str = "n-tuple",
    keep_short: bool = False,
) -> tuple[list[dict], list[int]]:
    """(rows to write, indices of the pairs that made it into the file)."""
    if output_format not in FORMATS:
        raise ValueError(f"output_format must be one of {FORMATS}, got {output_format!r}")
    if keep_short and output_format == "n-tuple":
        raise ValueError(
            "n-tuple rows must all hold num_negatives negatives; keep_short needs format 'triplet'"
        )
    rows, written = [], []
    for index, (anchor, positive, mined) in enumerate(zip(anchors, positives, negatives, strict=True)):
        if not mined or (len(mined) < num_negatives and not keep_short):
            continue
        written.append(index)
        if output_format == "n-tuple":
            rows.append({"anchor": anchor, "positive": positive, "negatives": list(mined)})
        else:
            rows.extend({"anchor": anchor, "positive": positive, "negative": text} for text in mined)
    return rows, written


def write_jsonl_atomic(rows: Sequence[dict], path: Path, *, overwrite: bool = False) -> None:
    """Write ``rows`` as JSON lines to a temporary file next to ``path``, then rename it onto ``path``: a
    reader never sees half a file. ``FileExistsError`` when ``path`` exists and not ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    with open_atomic(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass
class MiningSummary:
    """What a mining run wrote; ``gaps`` are positive score - negative score of every written negative."""

    pairs: int
    queries: int
    corpus_size: int
    rows_written: int
    negatives_written: int
    pairs_short: int
    short_policy: str
    num_negatives: int
    excluded: int
    removed: dict[str, int] = field(default_factory=dict)
    gaps: list[float] = field(default_factory=list)

    def gap_stats(self) -> dict[str, float]:
        if not self.gaps:
            return {}
        return {
            "min": min(self.gaps),
            "median": statistics.median(self.gaps),
            "mean": statistics.fmean(self.gaps),
            "max": max(self.gaps),
        }

    def lines(self) -> list[str]:
        lines = [
            f"pairs: {self.pairs} ({self.queries} distinct queries), corpus: {self.corpus_size} distinct documents",
            f"rows written: {self.rows_written}, negatives written: {self.negatives_written}",
            f"pairs short of {self.num_negatives} negatives: {self.pairs_short} ({self.short_policy})",
            f"known positives / query texts kept out of the ranking: {self.excluded} (query, document) pairs",
        ]
        removed = ", ".join(f"{name} {count}" for name, count in self.removed.items())
        lines.append(f"candidates removed by filter: {removed}")
        stats = self.gap_stats()
        if stats:
            lines.append(
                "score gap positive - negative: "
                + ", ".join(f"{name} {value:.4f}" for name, value in stats.items())
            )
        return lines


def gaps_of(
    positive_scores: Tensor, negative_scores: Tensor, columns: Tensor, rows: Sequence[int]
) -> list[float]:
    """positive - negative for every chosen column (``>= 0``) of the given pair rows."""
    gaps = []
    for row in rows:
        for column in columns[row].tolist():
            if column >= 0:
                gaps.append(float(positive_scores[row] - negative_scores[row, column]))
    return gaps
