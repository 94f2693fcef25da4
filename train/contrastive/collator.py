"""Rows of a task's dataset -> one training batch: tokenized anchors and candidates plus content ids.

A batch is a dict of tensors (``Trainer`` moves it to the device); which texts play which role is the task's
``EmbedTask.roles`` (``tasks.py``):

====================================  ===========  ==========================================================
key                                   shape        meaning
====================================  ===========  ==========================================================
``anchor_input_ids`` / ``_mask``      ``(B, T_a)`` anchors (+ ``query_prefix``)
``candidate_input_ids`` / ``_mask``   ``(M, T_c)`` candidates in ``EmbeddedBatch`` order (+ ``document_prefix``)
``anchor_ids``                        ``(B,)``     content ids of the anchors (``text_ids`` of the raw text)
``candidate_ids``                     ``(M,)``     content ids of the candidates
``positive_ids``                      ``(B, P)``   tasks that are not aligned: each anchor's positive ids, -1 pad
``scores``                            ``(B,)``     scored tasks: gold similarity in [0, 1]
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
from train.contrastive.tasks import EmbedTask


@dataclass
class ContrastiveCollator:
    """Callable ``rows -> batch`` for ``task``."""

    tokenizer: object
    task: EmbedTask
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""

    def __post_init__(self):
        if self.task.symmetric:
            self.query_prefix = self.document_prefix = ""

    def __call__(self, rows: Sequence[dict]) -> dict[str, Tensor]:
        roles = self.task.roles(rows)
        batch = {
            **self.tokenize("anchor", [self.query_prefix + text for text in roles.anchors]),
            **self.tokenize("candidate", [self.document_prefix + text for text in roles.candidates]),
            "anchor_ids": text_ids(roles.anchors),
            "candidate_ids": text_ids(roles.candidates),
        }
        if roles.positives is not None:
            width = max(len(texts) for texts in roles.positives)
            batch["positive_ids"] = torch.tensor(
                [text_ids(texts).tolist() + [PAD_ID] * (width - len(texts)) for texts in roles.positives]
            )
        if roles.scores is not None:
            batch["scores"] = torch.tensor(roles.scores, dtype=torch.float32)
        masks = (batch["anchor_attention_mask"], batch["candidate_attention_mask"])
        batch["real_tokens"] = sum(mask.sum() for mask in masks)
        batch["padded_tokens"] = torch.tensor(sum(mask.numel() for mask in masks))
        return batch

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
