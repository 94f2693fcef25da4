"""Rows of a task's dataset -> one training batch: tokenized anchors and candidates plus content ids.

A batch is a dict of tensors (``Trainer`` moves it to the device):

====================================  ===========  ==========================================================
key                                   shape        meaning
====================================  ===========  ==========================================================
``anchor_input_ids`` / ``_mask``      ``(B, T_a)`` anchors: texts / anchor / sentence1 (+ ``query_prefix``)
``candidate_input_ids`` / ``_mask``   ``(M, T_c)`` candidates in ``EmbeddedBatch`` order (see ``batch.py``)
``anchor_ids``                        ``(B,)``     content ids of the anchors (``text_ids`` of the raw text)
``candidate_ids``                     ``(M,)``     content ids of the candidates
``positive_ids``                      ``(B, P)``   tags only: each text's tag ids, padded with -1
``scores``                            ``(B,)``     scored_pairs only: gold similarity in [0, 1]
``real_tokens`` / ``padded_tokens``   ``()``       non-padding tokens / all token slots of the batch
====================================  ===========  ==========================================================

Content ids are computed on the text *without* prefixes so that the same sentence is recognised wherever it
appears. Symmetric tasks (SimCSE, STS) get no prefixes, as ``eval.sts`` embeds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from train.contrastive.batch import PAD_ID, text_ids
from train.contrastive.config import SYMMETRIC_TASKS


@dataclass
class ContrastiveCollator:
    """Callable ``rows -> batch`` for ``task`` (one of ``config.TASK_DATA_SCHEMA``)."""

    tokenizer: object
    task: str
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""

    def __post_init__(self):
        if self.task in SYMMETRIC_TASKS:
            self.query_prefix = self.document_prefix = ""

    def __call__(self, rows: Sequence[dict]) -> dict[str, Tensor]:
        anchors, candidates, positives, scores = self.roles(rows)
        batch = {
            **self.tokenize("anchor", [self.query_prefix + text for text in anchors]),
            **self.tokenize("candidate", [self.document_prefix + text for text in candidates]),
            "anchor_ids": text_ids(anchors),
            "candidate_ids": text_ids(candidates),
        }
        if positives is not None:
            width = max(len(ids) for ids in positives)
            batch["positive_ids"] = torch.tensor([ids + [PAD_ID] * (width - len(ids)) for ids in positives])
        if scores is not None:
            batch["scores"] = torch.tensor(scores, dtype=torch.float32)
        masks = (batch["anchor_attention_mask"], batch["candidate_attention_mask"])
        batch["real_tokens"] = sum(mask.sum() for mask in masks)
        batch["padded_tokens"] = torch.tensor(sum(mask.numel() for mask in masks))
        return batch

    def roles(
        self, rows: Sequence[dict]
    ) -> tuple[list[str], list[str], list[list[int]] | None, list[float] | None]:
        """(anchor texts, candidate texts, tags: each text's tag ids, scored pairs: scores)."""
        if self.task == "simcse_unsup":
            texts = [row["text"] for row in rows]
            return texts, texts, None, None
        if self.task == "pairs":
            return [row["anchor"] for row in rows], [row["positive"] for row in rows], None, None
        if self.task == "triplets":
            negatives = [negative for row in rows for negative in row["negatives"]]  # B*K, row-major
            return [row["anchor"] for row in rows], [row["positive"] for row in rows] + negatives, None, None
        if self.task == "scored_pairs":
            return (
                [row["sentence1"] for row in rows],
                [row["sentence2"] for row in rows],
                None,
                [float(row["score"]) for row in rows],
            )
        # tags: the candidates are the batch's distinct tags
        tags = list(dict.fromkeys(tag for row in rows for tag in row["tags"]))
        tag_id = dict(zip(tags, text_ids(tags).tolist(), strict=True))
        positives = [[tag_id[tag] for tag in row["tags"]] for row in rows]
        return [row["text"] for row in rows], tags, positives, None

    def tokenize(self, role: str, texts: list[str]) -> dict[str, Tensor]:
        """``{role}_input_ids`` / ``{role}_attention_mask`` ``(N, T)``, padded to the longest, truncated to
        ``max_length`` (exactly as ``eval.encoder.Embedder.tokenize``)."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {
            f"{role}_input_ids": encoded["input_ids"],
            f"{role}_attention_mask": encoded["attention_mask"],
        }
