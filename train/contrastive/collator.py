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
by position) and cuts them into chunks of at most ``k`` where the length drops (:func:`length_sorted_chunks`:
fewest forwards for at most 10 % padding), so a chunk pads only to texts of similar length. The texts, their
roles and therefore the loss are the same in both layouts.

Content ids are computed on the text *without* prefixes so that the same sentence is recognised wherever it
appears. Symmetric tasks (SimCSE, STS) get no prefixes, as ``eval.sts`` embeds them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from train.contrastive.batch import PAD_ID, text_ids
from train.contrastive.tasks import EmbedTask

# Cost of one more encoder forward (+ its backward) in padded token slots: the fixed per-call work. Measured by
# bench/chunk_cost.py on the packaged MiniLM + LoRA r=16, 2 CPU cores: 20 ms per forward / 0.35 ms per slot = 57.
FORWARD_COST_TOKENS = 57
# Padding the chunking accepts in exchange for fewer forwards: above it, forwards are priced lower until it holds.
MAX_PADDING_SHARE = 0.10


def length_sorted_chunks(
    lengths: Sequence[int],
    max_size: int,
    forward_cost: float = FORWARD_COST_TOKENS,
    max_padding_share: float = MAX_PADDING_SHARE,
) -> list[list[int]]:
    """Text numbers sorted by ``lengths`` (longest first, ties in text order) cut into consecutive chunks of at
    most ``max_size`` texts: the cut that minimises ``padded token slots + forward_cost x chunks``, with
    ``forward_cost`` lowered in steps of 30 % (down to 0) until the padded share of the slots is at most
    ``max_padding_share``.

    A chunk pads to its first (longest) text, so cutting where the length drops saves padding and each cut costs
    one more forward: similar lengths share a large chunk, a long text does not drag short ones with it. At
    ``forward_cost`` 0 every distinct length can have its own chunk (no padding), so the bound always holds.
    Longest first: a step that does not fit in memory fails on its first chunk.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sorted_lengths = [lengths[i] for i in order]
    allowed_slots = sum(lengths) / (1 - max_padding_share) if max_padding_share < 1 else float("inf")
    while True:
        starts = cheapest_cut(sorted_lengths, max_size, forward_cost)
        slots = sum(sorted_lengths[a] * (b - a) for a, b in itertools.pairwise((*starts, len(order))))
        if slots <= allowed_slots or forward_cost == 0:
            return [order[a:b] for a, b in itertools.pairwise((*starts, len(order)))]
        forward_cost = forward_cost * 0.7 if forward_cost > 1 else 0


def cheapest_cut(sorted_lengths: Sequence[int], max_size: int, forward_cost: float) -> list[int]:
    """Start positions of the chunks of ``sorted_lengths`` (non-increasing) that minimise padded slots +
    ``forward_cost`` per chunk, chunks of at most ``max_size``: exact dynamic programme, ``O(N x max_size)``."""
    # best[j]: least cost of the first j texts; start[j]: where the last chunk of that cover begins
    best, start = [0.0] + [float("inf")] * len(sorted_lengths), [0] * (len(sorted_lengths) + 1)
    for end in range(1, len(sorted_lengths) + 1):
        for begin in range(max(0, end - max_size), end):
            cost = best[begin] + (end - begin) * sorted_lengths[begin] + forward_cost
            if cost < best[end]:
                best[end], start[end] = cost, begin
    starts, end = [], len(sorted_lengths)
    while end:
        end = start[end]
        starts.append(end)
    return starts[::-1]


@dataclass
class ContrastiveCollator:
    """Callable ``rows -> batch`` for ``task``; at most ``mini_batch_size`` texts per chunk (0: one chunk per
    role)."""

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
