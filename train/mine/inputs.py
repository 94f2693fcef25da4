"""Pairs and a corpus -> what mining embeds and which (query, document) pairs are never negatives.

Texts are compared exactly as ``data_utils.load`` returned them (the data layer keeps texts verbatim, and
``train.embed`` identifies texts by their exact content), without the query/document prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MiningInputs:
    """Indices that tie pair rows, queries and documents together.

    Attributes:
        queries: the distinct anchors, in first-occurrence order (``Q``).
        documents: the distinct corpus texts (the first ``corpus_size``: the only negative candidates), then
            the positives that are not in the corpus (embedded only to score their pair).
        corpus_size: ``C``.
        row_query: ``(R,)`` int64, the query index of each pair row.
        row_positive: ``(R,)`` int64, the document index of each pair row's positive.
        excluded: ``(E, 2)`` int64 ``(query, document)`` with ``document < C``: every known positive of the
            query (all positives it has in any row) and the query's own text when the corpus holds it.
    """

    queries: list[str]
    documents: list[str]
    corpus_size: int
    row_query: Tensor
    row_positive: Tensor
    excluded: Tensor

    @property
    def known_positives_in_corpus(self) -> int:
        return int(self.excluded.shape[0])


def build_inputs(
    anchors: Sequence[str], positives: Sequence[str], corpus: Sequence[str] | None = None
) -> MiningInputs:
    """``corpus=None``: the corpus is every distinct positive of the pairs. Duplicated corpus texts count once."""
    if len(anchors) != len(positives):
        raise ValueError(f"{len(anchors)} anchors but {len(positives)} positives")
    queries, query_index = _distinct(anchors)
    documents, document_index = _distinct(positives if corpus is None else corpus)
    corpus_size = len(documents)
    for text in positives:
        if text not in document_index:
            document_index[text] = len(documents)
            documents.append(text)
    row_query = torch.tensor([query_index[text] for text in anchors], dtype=torch.int64)
    row_positive = torch.tensor([document_index[text] for text in positives], dtype=torch.int64)
    known: dict[int, set[int]] = {}
    for query, document in zip(row_query.tolist(), row_positive.tolist(), strict=True):
        if document < corpus_size:
            known.setdefault(query, set()).add(document)
    for query, text in enumerate(queries):
        own = document_index.get(text)
        if own is not None and own < corpus_size:
            known.setdefault(query, set()).add(own)
    pairs = [(query, document) for query in sorted(known) for document in sorted(known[query])]
    excluded = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    return MiningInputs(queries, documents, corpus_size, row_query, row_positive, excluded)


def _distinct(texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """(distinct texts in first-occurrence order, text -> its index)."""
    index: dict[str, int] = {}
    for text in texts:
        index.setdefault(text, len(index))
    return list(index), index
