"""Embedding-quality metrics of an eval dataset, computed with ``eval/`` (the same code as ``python -m eval.*``).

- ``scored_pairs``: cosine(sentence1, sentence2) vs the gold score -> ``spearman``, ``pearson`` (x 100) via
  ``eval.sts.sts_correlations``.
- ``pairs``: each distinct anchor retrieves its positive(s) among all distinct positives of the set;
  ``tags``: each distinct text retrieves its tags among all distinct tags -> ``recall@k``, ``ndcg@k``,
  ``mrr@k``, ``map@k``, ``precision@k``, ``hit_rate@k`` (x 100) via ``eval.retrieval.run_retrieval``.

With Matryoshka widths (``dims``), the eval set is embedded once at full width and the task's main metric
(``tasks.EVAL_METRICS``) is also reported for each narrower width ``d`` as ``<metric>@<d>`` (``spearman@64``,
``ndcg@10@64``): the first ``d`` dimensions, re-normalised, as ``eval.* --truncate_dim d`` embeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from datasets import Dataset

from eval.metrics.retrieval import METRIC_NAMES
from eval.retrieval import run_retrieval, task_from_positives
from eval.sts import sts_correlations
from lorasmith.encoder import Embedder, truncate
from train.embed.tasks import EVAL_METRICS

# Counts that accompany every result (kept), as opposed to descriptive strings (dropped).
RETRIEVAL_COUNTS = ("num_queries", "num_documents")


class TruncatedEmbeddings:
    """An ``Embedder`` whose embeddings are computed once (per texts and prefix) and served cut to ``dim``
    columns, re-normalised when the embedder normalises (``dim`` None: full width). Other attributes are the
    embedder's."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.dim: int | None = None
        self.cache: dict[tuple, torch.Tensor] = {}

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def encode(self, texts: Sequence[str], batch_size: int = 64, prefix: str = "", **options) -> torch.Tensor:
        """``(N, dim)`` embeddings of ``texts`` (``Embedder.encode`` at full width once, then truncated)."""
        key = (tuple(texts), prefix)
        if key not in self.cache:
            self.cache[key] = self.embedder.encode(texts, batch_size, prefix, **options)
        return truncate(self.cache[key], self.dim, self.embedder.normalize)


def embedding_metrics(
    embedder: Embedder,
    eval_task: str,
    dataset: Dataset,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    *,
    dims: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics (name -> number, x 100 for scores) of ``embedder`` on ``dataset`` in the ``eval_task`` schema; with
    ``dims`` also ``<main metric>@<d>`` for every ``d`` narrower than the embeddings (module docstring)."""
    narrower = [d for d in dims or () if d < embedder.dimension]
    if not narrower:
        return task_metrics(embedder, eval_task, dataset, ks, batch_size)
    cached = TruncatedEmbeddings(embedder)
    metrics = task_metrics(cached, eval_task, dataset, ks, batch_size)
    main = EVAL_METRICS[eval_task]
    for dim in narrower:
        cached.dim = dim
        metrics[f"{main}@{dim}"] = task_metrics(cached, eval_task, dataset, ks, batch_size)[main]
    return metrics


def metric_names(eval_task: str, ks: Sequence[int], dims: Sequence[int] | None = None) -> list[str]:
    """The names :func:`embedding_metrics` reports for ``eval_task`` (with every width of ``dims``, as it would for a
    model wider than all of them), what ``metric_for_best_model`` may name."""
    if eval_task == "scored_pairs":
        names = ["spearman", "pearson", "num_pairs"]
    else:
        names = [f"{name}@{k}" for name in METRIC_NAMES for k in ks] + list(RETRIEVAL_COUNTS)
    return names + [f"{EVAL_METRICS[eval_task]}@{dim}" for dim in dims or ()]


def task_metrics(
    embedder: Embedder, eval_task: str, dataset: Dataset, ks: Sequence[int], batch_size: int
) -> dict[str, float]:
    """Every metric of ``eval_task`` on ``dataset`` with the embeddings ``embedder`` returns."""
    if eval_task == "scored_pairs":
        scores = list(dataset["score"])
        correlations = sts_correlations(
            embedder, dataset["sentence1"], dataset["sentence2"], scores, batch_size
        )
        return {**correlations, "num_pairs": float(len(scores))}
    if eval_task == "pairs":
        task = task_from_positives(dataset["anchor"], [[positive] for positive in dataset["positive"]])
    else:
        task = task_from_positives(dataset["text"], dataset["tags"])
    result = run_retrieval(embedder, task, ks, batch_size=batch_size)
    return {key: float(value) for key, value in result.items() if "@" in key or key in RETRIEVAL_COUNTS}
