"""Rows of a task's dataset -> one training batch: every text of the step tokenized in length-sorted chunks,
plus content ids.

A batch is a dict (``Trainer`` moves its tensors to the device); which texts play which role is the task's
``EmbedTask.roles`` (``tasks.py``). The step's ``N = B + M`` texts are numbered anchors first (``0..B-1``),
then candidates in ``EmbeddedBatch`` order (``B..N-1``):

======================  ==================  ====================================================================
key                     shape               meaning
======================  ==================  ====================================================================
``chunks``              list of dicts       ``input_ids`` / ``attention_mask`` ``(n_c, T_c)`` per chunk, each
                                            padded to its own longest text; the encoder runs once per chunk
``text_order``          ``(N,)``            text number of each row of the chunks concatenated (a permutation)
``anchor_ids``          ``(B,)``            content ids of the anchors (``text_ids`` of the raw text)
``candidate_ids``       ``(M,)``            content ids of the candidates
``positive_ids``        ``(B, P)``          tasks that are not aligned: each anchor's positive ids, -1 pad
``scores``              ``(B,)``            scored tasks: gold similarity in [0, 1]
``real_tokens``         ``()``              non-padding tokens of the step
``padded_tokens``       ``()``              token slots the encoder runs on (sum over chunks of ``n_c x T_c``)
======================  ==================  ====================================================================

Chunking (``mini_batch_size``): 0 keeps the two role forwards (anchors, then candidates, each padded to its
longest: ``text_order`` is the identity); ``k > 0`` sorts all ``N`` texts by token length (longest first, ties
by position) and cuts them into chunks of ``k`` (:func:`length_sorted_chunks`), so a chunk pads only to texts
of similar length. The texts, their roles and therefore the loss are the same in both layouts.

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


def length_sorted_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Text numbers sorted by ``lengths`` (longest first, ties in text order) cut into chunks of ``size``
    (the last one may be shorter). Longest first: a step that does not fit in memory fails on its first chunk."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + size] for start in range(0, len(order), size)]


@dataclass
class ContrastiveCollator:
    """Callable ``rows -> batch`` for ``task``; ``mini_batch_size`` texts per chunk (0: one chunk per role)."""

    tokenizer: object
    task: EmbedTask
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    mini_batch_size: int = 0

    def __post_init__(self):
        if self.task.symmetric:
            self.query_prefix = self.document_prefix = ""

    def __call__(self, rows: Sequence[dict]) -> dict:
        roles = self.task.roles(rows)
        texts = [self.query_prefix + text for text in roles.anchors]
        texts += [self.document_prefix + text for text in roles.candidates]
        token_ids = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=True
        )["input_ids"]
        lengths = [len(ids) for ids in token_ids]
        if self.mini_batch_size:
            chunks = length_sorted_chunks(lengths, self.mini_batch_size)
        else:
            b = len(roles.anchors)
            chunks = [list(range(b)), list(range(b, len(texts)))]
        padded = [self.pad([token_ids[i] for i in chunk]) for chunk in chunks]
        batch = {
            "chunks": padded,
            "text_order": torch.tensor([i for chunk in chunks for i in chunk], dtype=torch.int64),
            "anchor_ids": text_ids(roles.anchors),
            "candidate_ids": text_ids(roles.candidates),
            "real_tokens": torch.tensor(sum(lengths)),
            "padded_tokens": torch.tensor(sum(chunk["attention_mask"].numel() for chunk in padded)),
        }
        if roles.positives is not None:
            width = max(len(texts) for texts in roles.positives)
            batch["positive_ids"] = torch.tensor(
                [text_ids(texts).tolist() + [PAD_ID] * (width - len(texts)) for texts in roles.positives]
            )
        if roles.scores is not None:
            batch["scores"] = torch.tensor(roles.scores, dtype=torch.float32)
        return batch

    def pad(self, token_ids: list[list[int]]) -> dict[str, Tensor]:
        """One chunk: ``input_ids`` / ``attention_mask`` ``(n, T)`` padded to its longest text with the tokenizer's
        pad token on its padding side (the tensors ``eval.encoder.Embedder.tokenize`` gives for these texts)."""
        width = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), width), self.tokenizer.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.int64)
        left = self.tokenizer.padding_side == "left"
        for row, ids in enumerate(token_ids):
            columns = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[row, columns] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
