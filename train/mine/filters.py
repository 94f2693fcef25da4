"""Which ranked candidates may be negatives, and which of those are taken: pure functions on score tensors.

Inputs are one pair row per line: ``scores (R, K)`` the candidates of the row's query sorted by decreasing
score (column ``j`` = rank ``j`` among the corpus documents that are not known positives of the query;
empty slots ``-inf``) and ``positive_scores (R,)`` the score of the row's own positive.

Filters run in this order; each counts the candidates it removed among those still kept:

==================  ===========================================================================
``window``          rank ``j`` outside ``[range_min, range_max)``
``max_score``       score > ``max_score`` (too close to the query to trust as a negative)
``min_score``       score < ``min_score`` (too far to be hard)
``margin``          score > positive - ``margin``
``relative_margin`` score > positive - ``relative_margin`` x ``|positive|`` (= positive x (1 - margin) for a
                    positive score >= 0; NV-Retriever's TopK-PercPos uses 0.05)
==================  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SAMPLING = ("top", "random")


@dataclass(frozen=True)
class FilterSettings:
    """The thresholds of the filters (``None``: filter off); see the module docstring."""

    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    margin: float | None = None
    relative_margin: float | None = None


def window_mask(shape: tuple[int, int], range_min: int, range_max: int | None) -> Tensor:
    """``(R, K)`` bool: rank (column) ``j`` with ``range_min <= j < range_max``."""
    ranks = torch.arange(shape[1])
    keep = ranks >= range_min
    if range_max is not None:
        keep &= ranks < range_max
    return keep.expand(shape)


def max_score_mask(scores: Tensor, max_score: float) -> Tensor:
    """``(R, K)`` bool: score <= ``max_score``."""
    return scores <= max_score


def min_score_mask(scores: Tensor, min_score: float) -> Tensor:
    """``(R, K)`` bool: score >= ``min_score``."""
    return scores >= min_score


def margin_mask(scores: Tensor, positive_scores: Tensor, margin: float) -> Tensor:
    """``(R, K)`` bool: score <= positive - ``margin`` (absolute margin below the row's positive)."""
    return scores <= positive_scores[:, None] - margin


def relative_margin_mask(scores: Tensor, positive_scores: Tensor, relative_margin: float) -> Tensor:
    """``(R, K)`` bool: score <= positive - ``relative_margin`` x |positive| (false-negative guard)."""
    positive = positive_scores[:, None]
    return scores <= positive - relative_margin * positive.abs()


def apply_filters(
    scores: Tensor, positive_scores: Tensor, settings: FilterSettings
) -> tuple[Tensor, dict[str, int]]:
    """``(keep (R, K) bool, {filter: candidates it removed})``; empty (``-inf``) slots are never kept
    and counted by no filter."""
    keep = torch.isfinite(scores)
    masks = {
        "window": lambda: window_mask(tuple(scores.shape), settings.range_min, settings.range_max),
        "max_score": lambda: max_score_mask(scores, settings.max_score),
        "min_score": lambda: min_score_mask(scores, settings.min_score),
        "margin": lambda: margin_mask(scores, positive_scores, settings.margin),
        "relative_margin": lambda: relative_margin_mask(scores, positive_scores, settings.relative_margin),
    }
    active = {
        "window": True,
        "max_score": settings.max_score is not None,
        "min_score": settings.min_score is not None,
        "margin": settings.margin is not None,
        "relative_margin": settings.relative_margin is not None,
    }
    removed = {}
    for name, mask in masks.items():
        if not active[name]:
            continue
        passed = mask()
        removed[name] = int((keep & ~passed).sum())
        keep = keep & passed
    return keep, removed


def select_negatives(
    keep: Tensor, num_negatives: int, sampling: str = "top", generator: torch.Generator | None = None
) -> Tensor:
    """``(R, num_negatives)`` int64 columns of the chosen candidates, in rank order, ``-1`` where a row has
    fewer than ``num_negatives`` kept candidates.

    ``top``: the best-ranked kept candidates. ``random``: a uniform sample of the kept candidates drawn from
    ``generator`` (seed it for a reproducible file); never a candidate outside ``keep``.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    rows, width = keep.shape
    if sampling == "top":
        keys = -torch.arange(width, dtype=torch.float32).expand(rows, width)
    else:
        keys = torch.rand(rows, width, generator=generator)
    keys = keys.masked_fill(~keep, float("-inf"))
    count = min(num_negatives, width)
    chosen_keys, columns = keys.topk(count, dim=1)
    columns = columns.masked_fill(torch.isneginf(chosen_keys), width)  # missing sorts last
    columns = columns.sort(dim=1).values
    columns[columns == width] = -1
    if count < num_negatives:
        columns = torch.cat([columns, torch.full((rows, num_negatives - count), -1)], dim=1)
    return columns
