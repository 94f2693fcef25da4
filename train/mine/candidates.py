"""Exact top-k of every query over the corpus, in bounded memory, shared out over processes.

Queries are cut into blocks of ``query_block_size`` rows; block ``b`` is scored by process ``b % world``. The
corpus is read in chunks of ``chunk_size`` rows (each chunk moved to the device once for all of this
process's blocks); every block keeps a running top-k that is merged with each chunk's scores by
``torch.topk`` over ``[running (b, k) | chunk (b, chunk)]``. Peak memory: ``Q x k`` running results
+ ``chunk x D`` corpus rows + ``block x (k + chunk)`` scores, never ``Q x C``.

A block's arithmetic does not depend on the world size (same rows, same chunks, same order), so 2 processes
return bit for bit what 1 process returns. Rows come back sorted by score, ties by corpus index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from eval.metrics.retrieval import merge_topk

MISSING = -1  # index of an empty slot (excluded document, or fewer than k documents)


def block_ranges(num_queries: int, query_block_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the query blocks."""
    return [
        (start, min(start + query_block_size, num_queries))
        for start in range(0, num_queries, query_block_size)
    ]


def exact_topk(
    queries: Tensor,
    corpus: Tensor,
    k: int,
    *,
    excluded: Tensor | None = None,
    chunk_size: int = 16384,
    query_block_size: int = 1024,
    blocks: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Top-``k`` dot products of the queries in ``blocks`` (default: all) over ``corpus``.

    Args:
        queries: ``(Q, D)``, any float dtype (scored in fp32).
        corpus: ``(C, D)``, any float dtype; read ``chunk_size`` rows at a time.
        k: results per query; ``min(k, C)`` slots are returned.
        excluded: ``(E, 2)`` int64 ``(query, document)`` pairs scored ``-inf`` (never returned as candidates).
        blocks: indices into ``block_ranges(Q, query_block_size)`` this process scores.

    Returns:
        ``{block: (scores (b, k) fp32 CPU, indices (b, k) int64 CPU)}``; rows sorted by decreasing score, ties
        by increasing corpus index; empty slots have score ``-inf`` and index ``MISSING``.
    """
    if chunk_size < 1 or query_block_size < 1 or k < 1:
        raise ValueError("k, chunk_size and query_block_size must be >= 1")
    device = torch.device(device) if device is not None else queries.device
    ranges = block_ranges(queries.shape[0], query_block_size)
    blocks = range(len(ranges)) if blocks is None else list(blocks)
    k = min(k, corpus.shape[0])
    excluded = excluded if excluded is not None else torch.empty(0, 2, dtype=torch.int64)
    local_queries = {b: queries[slice(*ranges[b])].to(device, torch.float32) for b in blocks}
    local_excluded = {b: _excluded_in_block(excluded, *ranges[b]) for b in blocks}
    running: dict[int, tuple[Tensor, Tensor]] = {
        b: (
            torch.empty(len(local_queries[b]), 0, device=device),
            torch.empty(len(local_queries[b]), 0, dtype=torch.int64, device=device),
        )
        for b in blocks
    }
    starts = range(0, corpus.shape[0], chunk_size)
    for start in tqdm(starts, desc="score", unit="chunk", disable=not progress or not blocks):
        chunk = corpus[start : start + chunk_size].to(device, torch.float32)  # (c, D)
        for b in blocks:
            scores = local_queries[b] @ chunk.T  # (b, c)
            rows, documents = local_excluded[b]
            inside = (documents >= start) & (documents < start + chunk.shape[0])
            scores[rows[inside].to(device), (documents[inside] - start).to(device)] = float("-inf")
            running[b] = merge_topk(*running[b], scores, start, k)
    return {b: _canonical_order(*running[b]) for b in blocks}


def _excluded_in_block(excluded: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
    """(rows relative to the block, documents) of the excluded pairs whose query is in ``[start, end)``."""
    inside = (excluded[:, 0] >= start) & (excluded[:, 0] < end)
    return excluded[inside, 0] - start, excluded[inside, 1]


def _canonical_order(scores: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by decreasing score, ties by increasing index; ``-inf`` slots get index ``MISSING``."""
    scores, indices = scores.cpu(), indices.cpu()
    by_index = indices.argsort(dim=1)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    scores, indices = scores.gather(1, by_score), indices.gather(1, by_score)
    indices[torch.isneginf(scores)] = MISSING
    return scores, indices


def sharded_topk(
    queries: Tensor,
    corpus: Tensor,
    k: int,
    *,
    rank: int = 0,
    world: int = 1,
    query_block_size: int = 1024,
    **options,
) -> tuple[Tensor, Tensor]:
    """``exact_topk`` of every query, blocks shared round-robin over ``world`` processes and all-gathered.

    Returns ``(scores (Q, k), indices (Q, k))`` on every process, equal to the 1-process result. ``options``:
    those of ``exact_topk`` (excluded, chunk_size, device, progress).
    """
    num_blocks = len(block_ranges(queries.shape[0], query_block_size))
    mine = exact_topk(
        queries,
        corpus,
        k,
        query_block_size=query_block_size,
        blocks=range(rank, num_blocks, world),
        **options,
    )
    results = list(mine.items())
    if world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)  # [(block, (scores, indices)), ...] of every process
    by_block = dict(results)
    width = min(k, corpus.shape[0])
    if not by_block:
        return torch.empty(0, width), torch.empty(0, width, dtype=torch.int64)
    ordered = [by_block[b] for b in range(num_blocks)]
    return torch.cat([s for s, _ in ordered]), torch.cat([i for _, i in ordered])
