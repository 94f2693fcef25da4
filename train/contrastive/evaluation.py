"""Embedding-quality metrics of an eval dataset, computed with ``eval/`` (the same code as ``python -m eval.*``).

- ``scored_pairs``: cosine(sentence1, sentence2) vs the gold score -> ``spearman``, ``pearson`` (x 100) via
  ``eval.sts.sts_correlations``.
- ``pairs``: each distinct anchor retrieves its positive(s) among all distinct positives of the set;
  ``tags``: each distinct text retrieves its tags among all distinct tags -> ``recall@k``, ``ndcg@k``,
  ``mrr@k``, ``map@k``, ``precision@k``, ``hit_rate@k`` (x 100) via ``eval.retrieval.run_retrieval``.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from eval.encoder import Embedder
from eval.retrieval import run_retrieval, task_from_positives
from eval.sts import sts_correlations

# Counts that accompany every result (kept), as opposed to descriptive strings (dropped).
RETRIEVAL_COUNTS = ("num_queries", "num_documents")


def embedding_metrics(
    embedder: Embedder, eval_task: str, dataset: Dataset, ks: Sequence[int] = (1, 5, 10), batch_size: int = 64
) -> dict[str, float]:
    """Metrics (name -> number, x 100 for scores) of ``embedder`` on ``dataset`` in the ``eval_task`` schema."""
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
