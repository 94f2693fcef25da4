"""Ranking metrics for retrieval, from retrieved top-k lists (BEIR-style: the corpus may be too large for a
(Q, N) score matrix).

    _, indices = exact_topk(query_emb, corpus_emb, k)                            # (Q, k) best first
    topk_retrieval_metrics(indices, query_ids, corpus_ids, qrels, ks=(1, 5, 10))  # {"recall@1": ..., ...}

``tests/retrieval_reference.py`` computes the same metrics from a full (Q, C) score matrix with these per-query
functions and checks them against sklearn and brute force; the tests check this top-k path against it.

Conventions (those of trec_eval / pytrec_eval as used by BEIR, unless stated):

* grades are non-negative (bool or int); a document is *relevant* when its grade > 0.
* Queries without any relevant document are excluded from every mean (BEIR only evaluates queries that
  have judgments); the per-query functions return NaN for them. Note: ``sklearn.metrics.ndcg_score`` instead
  counts them as 0.
* Gains are linear in the grade and the discount is ``1 / log2(rank + 1)`` (trec_eval's ``ndcg_cut``,
  sklearn's ``ndcg_score``).
* ``precision@k`` divides by ``k`` even when fewer than ``k`` documents exist (trec_eval ``P_k``);
  ``map@k`` divides by the total number of relevant documents (trec_eval ``map_cut_k``).
* Ties in scores are broken by ``exact_topk``'s order (``torch.topk``); with float embeddings exact ties are rare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

METRIC_NAMES = ("recall", "precision", "ndcg", "mrr", "map", "hit_rate")


@dataclass(frozen=True)
class RankedJudgments:
    """What every metric needs, for Q queries.

    ranked_gains: (Q, K) float64, grade of the candidate at each rank (0 = not relevant).
    ideal_gains: (Q, K) float64, the K largest grades of each query in decreasing order (0-padded).
    num_relevant: (Q,) float64, number of candidates with grade > 0 over the whole candidate set.
    """

    ranked_gains: torch.Tensor
    ideal_gains: torch.Tensor
    num_relevant: torch.Tensor


def _discounts(length: int) -> torch.Tensor:
    """(length,) float64: 1 / log2(rank + 1) for ranks 1..length."""
    return 1.0 / torch.log2(torch.arange(2, length + 2, dtype=torch.float64))


def judgments_from_topk(
    topk_indices,
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
) -> tuple[RankedJudgments, list[str]]:
    """Judgments for the retrieved lists of the queries that have qrels.

    topk_indices: (Q, K) int, positions in ``corpus_ids`` of each query's retrieved documents, best
    first (as returned by ``exact_topk``). qrels: query id -> {document id: grade}. Queries absent
    from ``qrels`` are dropped (BEIR). Returns the judgments and the ids of the kept queries.
    """
    topk_indices = torch.as_tensor(topk_indices)
    if topk_indices.ndim != 2 or topk_indices.shape[0] != len(query_ids):
        raise ValueError(f"topk_indices must be (Q={len(query_ids)}, K); got {tuple(topk_indices.shape)}")
    depth = topk_indices.shape[1]
    kept, ranked_rows, ideal_rows, num_relevant = [], [], [], []
    for row, query_id in enumerate(query_ids):
        judged = qrels.get(query_id)
        if judged is None:
            continue
        kept.append(query_id)
        ranked_rows.append([float(judged.get(corpus_ids[i], 0)) for i in topk_indices[row].tolist()])
        grades = sorted((float(g) for g in judged.values() if g > 0), reverse=True)[:depth]
        ideal_rows.append(grades + [0.0] * (depth - len(grades)))
        num_relevant.append(float(sum(1 for g in judged.values() if g > 0)))
    shape = (len(kept), depth)
    judgments = RankedJudgments(
        torch.tensor(ranked_rows, dtype=torch.float64).reshape(shape),
        torch.tensor(ideal_rows, dtype=torch.float64).reshape(shape),
        torch.tensor(num_relevant, dtype=torch.float64),
    )
    return judgments, kept


# ---- per-query metrics on RankedJudgments: (Q,) float64, NaN for queries without relevant candidates ----


def _hits(judgments: RankedJudgments, k: int) -> torch.Tensor:
    """(Q, min(k, K)) bool: rank holds a relevant candidate."""
    return judgments.ranked_gains[:, :k] > 0


def _undefined_to_nan(values: torch.Tensor, judgments: RankedJudgments) -> torch.Tensor:
    return torch.where(judgments.num_relevant > 0, values, torch.full_like(values, float("nan")))


def per_query_recall(judgments: RankedJudgments, k: int) -> torch.Tensor:
    found = _hits(judgments, k).sum(dim=1).to(torch.float64)
    return _undefined_to_nan(found / judgments.num_relevant.clamp(min=1), judgments)


def per_query_precision(judgments: RankedJudgments, k: int) -> torch.Tensor:
    found = _hits(judgments, k).sum(dim=1).to(torch.float64)
    return _undefined_to_nan(found / k, judgments)


def per_query_hit_rate(judgments: RankedJudgments, k: int) -> torch.Tensor:
    return _undefined_to_nan(_hits(judgments, k).any(dim=1).to(torch.float64), judgments)


def per_query_mrr(judgments: RankedJudgments, k: int) -> torch.Tensor:
    hits = _hits(judgments, k).to(torch.float64)
    reciprocal_ranks = hits / torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    return _undefined_to_nan(reciprocal_ranks.max(dim=1).values, judgments)


def per_query_map(judgments: RankedJudgments, k: int) -> torch.Tensor:
    hits = _hits(judgments, k).to(torch.float64)
    precision_at_rank = hits.cumsum(dim=1) / torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    average_precision = (precision_at_rank * hits).sum(dim=1) / judgments.num_relevant.clamp(min=1)
    return _undefined_to_nan(average_precision, judgments)


def per_query_ndcg(judgments: RankedJudgments, k: int) -> torch.Tensor:
    ranked, ideal = judgments.ranked_gains[:, :k], judgments.ideal_gains[:, :k]
    discounts = _discounts(ranked.shape[1])
    ideal_dcg = (ideal * discounts).sum(dim=1)
    ndcg = (ranked * discounts).sum(dim=1) / ideal_dcg.clamp(min=torch.finfo(torch.float64).tiny)
    return _undefined_to_nan(ndcg, judgments)


PER_QUERY = {
    "recall": per_query_recall,
    "precision": per_query_precision,
    "ndcg": per_query_ndcg,
    "mrr": per_query_mrr,
    "map": per_query_map,
    "hit_rate": per_query_hit_rate,
}


def _mean_over_judged(values: torch.Tensor) -> float:
    """Mean of a per-query metric over the queries that have a relevant document (NaN when none has)."""
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else float("nan")


def _metrics_dict(judgments: RankedJudgments, num_queries: int, ks: Sequence[int]) -> dict[str, float]:
    result: dict[str, float] = {}
    for name in METRIC_NAMES:
        for k in ks:
            result[f"{name}@{k}"] = _mean_over_judged(PER_QUERY[name](judgments, k))
    result["num_queries"] = num_queries
    result["num_queries_without_relevant"] = int((judgments.num_relevant == 0).sum())
    return result


def _validate_ks(ks: Sequence[int]) -> None:
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")


def topk_retrieval_metrics(
    topk_indices,
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Every metric at every k from retrieved lists (Q, K) and BEIR qrels: keys ``"recall@1"``, ``"ndcg@10"``, ...
    (fractions in [0, 1]) plus ``num_queries`` and ``num_queries_without_relevant`` (excluded from the means).

    ``num_queries`` counts the queries that have qrels (the others are not evaluated). K should be
    >= max(ks); shorter lists simply have nothing at the missing ranks.
    """
    _validate_ks(ks)
    judgments, kept = judgments_from_topk(topk_indices, query_ids, corpus_ids, qrels)
    if not kept:
        raise ValueError("none of the queries has an entry in qrels")
    return _metrics_dict(judgments, len(kept), ks)


def merge_topk(
    best_scores: torch.Tensor, best_indices: torch.Tensor, block: torch.Tensor, block_start: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``k`` after one more block of scores.

    best_scores / best_indices: ``(Q, k')`` the top so far (k' <= k; ``(Q, 0)`` to start); block: ``(Q, c)`` scores of
    the documents ``block_start .. block_start + c - 1``. Returns the new ``(Q, min(k, k' + c))`` scores and indices.
    """
    block_indices = torch.arange(block_start, block_start + block.shape[1], device=block.device)
    merged_scores = torch.cat([best_scores, block], dim=1)
    merged_indices = torch.cat([best_indices, block_indices.expand(block.shape[0], -1)], dim=1)
    top_scores, positions = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
    return top_scores, merged_indices.gather(1, positions)


def exact_topk(
    query_emb: torch.Tensor,
    corpus_emb: torch.Tensor,
    k: int,
    *,
    chunk_size: int = 50_000,
    query_chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by dot product without materialising the (Q, N) score matrix.

    query_emb: (Q, D), corpus_emb: (N, D) on the same device (L2-normalise the rows for cosine).
    Scores are computed for blocks of ``query_chunk_size`` queries x ``chunk_size`` documents and merged
    into a running top-k, so peak extra memory is ``query_chunk_size * (chunk_size + k)`` scores.
    Returns ``(scores (Q, k'), indices (Q, k'))`` sorted by decreasing score, k' = min(k, N).
    """
    if query_emb.ndim != 2 or corpus_emb.ndim != 2 or query_emb.shape[1] != corpus_emb.shape[1]:
        raise ValueError(
            f"expected (Q, D) and (N, D); got {tuple(query_emb.shape)} and {tuple(corpus_emb.shape)}"
        )
    if k < 1 or chunk_size < 1 or query_chunk_size < 1:
        raise ValueError("k, chunk_size and query_chunk_size must be >= 1")
    depth = min(k, corpus_emb.shape[0])
    all_scores, all_indices = [], []
    for q_start in range(0, query_emb.shape[0], query_chunk_size):
        queries = query_emb[q_start : q_start + query_chunk_size]
        best_scores = torch.empty(queries.shape[0], 0, dtype=queries.dtype, device=queries.device)
        best_indices = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)
        for c_start in range(0, corpus_emb.shape[0], chunk_size):
            block = queries @ corpus_emb[c_start : c_start + chunk_size].T  # (q, c)
            best_scores, best_indices = merge_topk(best_scores, best_indices, block, c_start, depth)
        all_scores.append(best_scores)
        all_indices.append(best_indices)
    return torch.cat(all_scores), torch.cat(all_indices)
