"""Retrieval metrics from a full (Q, C) score matrix: the reference for ``eval.metrics.retrieval``'s top-k path.

Every query is scored against every candidate and ranked by a full sort, with the per-query metric functions of
``eval.metrics.retrieval``; ``tests/test_eval_metrics.py`` checks these against sklearn and brute force, then the
top-k path (``exact_topk`` + ``topk_retrieval_metrics``) against them.

Ties in ``scores``: ``ndcg_at_k`` averages the gain over each tied group, exactly like
``sklearn.metrics.ndcg_score`` (``ignore_ties=False``), i.e. the expected NDCG over all orderings of the ties.
The other metrics break ties by candidate index (earlier candidate ranked first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eval.metrics.retrieval import (
    METRIC_NAMES,
    PER_QUERY,
    RankedJudgments,
    per_query_hit_rate,
    per_query_map,
    per_query_mrr,
    per_query_ndcg,
    per_query_precision,
    per_query_recall,
)


def _validate_dense(scores: torch.Tensor, relevance: torch.Tensor, k: int) -> None:
    if scores.ndim != 2 or scores.shape != relevance.shape:
        raise ValueError(
            f"scores and relevance must both be (Q, C) matrices of the same shape; got "
            f"{tuple(scores.shape)} and {tuple(relevance.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.shape[1] == 0:
        raise ValueError("there must be at least one candidate (C >= 1)")
    if bool((relevance < 0).any()):
        raise ValueError("relevance grades must be >= 0")


def _as_tensors(scores, relevance) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(relevance).to(torch.float64)


def _tie_averaged_gains(sorted_scores: torch.Tensor, sorted_gains: torch.Tensor) -> torch.Tensor:
    """(Q, C) gains in which every run of equal scores carries the mean gain of the run.

    ``sorted_scores`` is sorted in decreasing order along dim 1; ``sorted_gains`` follows that order.
    """
    num_queries, num_candidates = sorted_scores.shape
    new_group = torch.ones_like(sorted_scores, dtype=torch.long)
    new_group[:, 1:] = (sorted_scores[:, 1:] != sorted_scores[:, :-1]).long()
    group = new_group.cumsum(dim=1) - 1  # (Q, C), group id within the row
    flat_group = group + torch.arange(num_queries).unsqueeze(1) * num_candidates
    sums = torch.zeros(num_queries * num_candidates, dtype=torch.float64)
    counts = torch.zeros(num_queries * num_candidates, dtype=torch.float64)
    sums.index_add_(0, flat_group.flatten(), sorted_gains.flatten())
    counts.index_add_(0, flat_group.flatten(), torch.ones(flat_group.numel(), dtype=torch.float64))
    return (sums / counts.clamp(min=1))[flat_group]


def judgments_from_scores(scores, relevance, k: int, *, average_ties: bool = False) -> RankedJudgments:
    """Rank the C candidates of each query by decreasing score and keep the first ``min(k, C)`` ranks.

    scores: (Q, C) float; relevance: (Q, C) non-negative grades (bool or int).
    ``average_ties=True`` gives each rank the mean grade of its tied group (see module docstring).
    """
    scores, relevance = _as_tensors(scores, relevance)
    _validate_dense(scores, relevance, k)
    depth = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranked = relevance.gather(1, order)
    if average_ties:
        ranked = _tie_averaged_gains(scores.gather(1, order), ranked)
    ideal = torch.sort(relevance, dim=1, descending=True).values
    return RankedJudgments(ranked[:, :depth], ideal[:, :depth], (relevance > 0).sum(dim=1).to(torch.float64))


def _reduce(values: torch.Tensor, per_query: bool) -> torch.Tensor | float:
    """(Q,) values, or their mean over the queries with a relevant candidate (NaN rows dropped)."""
    if per_query:
        return values
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else float("nan")


def recall_at_k(scores, relevance, k: int, *, per_query: bool = False):
    """Fraction of each query's relevant candidates found in its top k. Mean over queries, or (Q,)."""
    return _reduce(per_query_recall(judgments_from_scores(scores, relevance, k), k), per_query)


def precision_at_k(scores, relevance, k: int, *, per_query: bool = False):
    """Relevant candidates in the top k divided by k. Mean over queries, or (Q,)."""
    return _reduce(per_query_precision(judgments_from_scores(scores, relevance, k), k), per_query)


def hit_rate_at_k(scores, relevance, k: int, *, per_query: bool = False):
    """1 when at least one relevant candidate is in the top k (sentence-transformers' accuracy@k)."""
    return _reduce(per_query_hit_rate(judgments_from_scores(scores, relevance, k), k), per_query)


def mrr_at_k(scores, relevance, k: int, *, per_query: bool = False):
    """Reciprocal rank of the first relevant candidate within the top k (0 when none is)."""
    return _reduce(per_query_mrr(judgments_from_scores(scores, relevance, k), k), per_query)


def map_at_k(scores, relevance, k: int, *, per_query: bool = False):
    """Average precision over the top k, normalised by the total number of relevant candidates."""
    return _reduce(per_query_map(judgments_from_scores(scores, relevance, k), k), per_query)


def ndcg_at_k(scores, relevance, k: int, *, ignore_ties: bool = False, per_query: bool = False):
    """Graded NDCG@k; equals ``sklearn.metrics.ndcg_score(relevance, scores, k=k, ignore_ties=...)``
    per query (ties averaged unless ``ignore_ties``), averaged over queries with a relevant candidate."""
    judgments = judgments_from_scores(scores, relevance, k, average_ties=not ignore_ties)
    return _reduce(per_query_ndcg(judgments, k), per_query)


def retrieval_metrics(scores, relevance, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """All metrics at every k: keys ``"recall@1"``, ``"ndcg@10"``, ... plus ``num_queries`` and
    ``num_queries_without_relevant`` (excluded from the means). Values are fractions in [0, 1].

    scores: (Q, C) float, higher = more similar; relevance: (Q, C) non-negative grades.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    scores, relevance = _as_tensors(scores, relevance)
    stable = judgments_from_scores(scores, relevance, max(ks))
    tie_averaged = judgments_from_scores(scores, relevance, max(ks), average_ties=True)
    result: dict[str, float] = {}
    for name in METRIC_NAMES:
        for k in ks:
            source = tie_averaged if name == "ndcg" else stable
            result[f"{name}@{k}"] = _reduce(PER_QUERY[name](source, k), per_query=False)
    result["num_queries"] = scores.shape[0]
    result["num_queries_without_relevant"] = int((stable.num_relevant == 0).sum())
    return result
