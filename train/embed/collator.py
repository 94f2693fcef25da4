"""Rows of a task's dataset -> one training batch (every text of the step tokenized, padded once to the step's
longest text, plus content ids), and the cut of that batch into the chunks the encoder runs on.

A batch is a dict (``Trainer`` moves its tensors to the device); which texts play which role is the task's
``EmbedTask.roles`` (``tasks.py``). The step's ``N = B + M`` texts are numbered anchors first (``0..B-1``),
then candidates in ``EmbeddedBatch`` order (``B..N-1``):

======================  ==================  ====================================================================
key                     shape               meaning
======================  ==================  ====================================================================
``input_ids``           ``(N, T)``          every text's tokens, padded to the step's longest ``T`` with the
``attention_mask``      ``(N, T)``          tokenizer's pad token on its padding side; rows in ``text_order``
``lengths``             ``(N,)``            tokens of each row (non-increasing when ``mini_batch_size > 0``)
``text_order``          ``(N,)``            text number of each row (a permutation)
``anchor_ids``          ``(B,)``            content ids of the anchors (``text_ids`` of the raw text)
``candidate_ids``       ``(M,)``            content ids of the candidates
``positive_ids``        ``(B, P)``          tasks that are not aligned: each anchor's positive ids, -1 pad
``scores``              ``(B,)``            scored tasks: gold similarity in [0, 1]
``real_tokens``         ``()``              non-padding tokens of the step
======================  ==================  ====================================================================

Chunking (``mini_batch_size``): 0 keeps the two role forwards (rows in text order; anchors, then candidates,
each padded to its longest). ``k > 0`` sorts the rows by token length (longest first, ties by text number) and
:meth:`ContrastiveCollator.chunks` cuts them into consecutive chunks of at most ``k`` where the length drops, as a
:class:`LengthSortedChunker` decides (fewest forwards for at most 10 % padding over all the steps it has cut), so
a chunk pads only to texts of similar length. The texts, their roles and therefore the loss are the same in both
layouts. The collator itself keeps no state (it may run in dataloader workers, ahead of the step); the chunker's
running totals belong to the training step, which cuts its batches in order and saves the chunker with each
checkpoint (``ContrastiveTrainer``), so a resumed run cuts its steps as the uninterrupted run did.

Packing (``packing``, the default with ``mini_batch_size > 0`` where the model supports it):
:meth:`ContrastiveCollator.chunks` lays the sorted texts several to a row instead (``packing.py``): forwards of at
most ``mini_batch_size x max_length`` token slots (the memory of ``mini_batch_size`` full-length texts), little
padding, and far fewer forwards when texts are short. Its cut depends on the step alone (no chunker).

Content ids are computed on the text *without* prefixes so that the same sentence is recognised wherever it
appears. Symmetric tasks (SimCSE, STS) get no prefixes, as ``eval.sts`` embeds them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from train.common.packing import cheapest_cut, pack_chunk, pack_steps
from train.embed.batch import PAD_ID, text_ids
from train.embed.tasks import EmbedTask, Roles

# Cost of one more encoder forward (+ its backward) in padded token slots: the fixed per-call work. Measured by
# bench/chunk_cost.py on the packaged MiniLM + LoRA r=16, 2 CPU cores: 20 ms per forward / 0.35 ms per slot = 57.
FORWARD_COST_TOKENS = 57
# Padding the chunking accepts in exchange for fewer forwards, over all of a run's steps: above it, forwards are
# priced lower until it holds.
MAX_PADDING_SHARE = 0.10


def length_sorted_chunks(
    lengths: Sequence[int],
    max_size: int,
    forward_cost: float = FORWARD_COST_TOKENS,
    max_padding_share: float = MAX_PADDING_SHARE,
) -> list[list[int]]:
    """One step cut on its own: :class:`LengthSortedChunker` with no earlier steps (the step's own padded share of
    the slots is at most ``max_padding_share``)."""
    return LengthSortedChunker(max_size, max_padding_share, forward_cost)(lengths)


class LengthSortedChunker:
    """Cuts each step's texts into length-sorted chunks of at most ``max_size`` texts, keeping the padded share
    of the token slots of ALL the steps it has cut so far at most ``max_padding_share``.

    A step's text numbers are sorted by length (longest first, ties in text order) and cut into consecutive
    chunks: the cut that minimises ``padded slots + price x chunks`` (:func:`cheapest_cut`), where ``price`` is
    ``forward_cost x 0.7^level`` (0 past the last level). A chunk pads to its first (longest) text, so cutting
    where the length drops saves padding and each cut costs one more forward: similar lengths share a large
    chunk, a long text does not drag short ones with it. Longest first: a step that does not fit in memory fails
    on its first chunk.

    The bound is kept over the steps, not per step: a step raises the level until the running totals (earlier
    steps + this one) are within the bound, and the next step starts one level lower. The level settles where the
    steps pad ``max_padding_share`` on average, one price for all of them — the cheapest way to meet an average
    bound (a per-step bound makes steps with awkward lengths pay for many more forwards). At price 0 every
    distinct length can have its own chunk (no padding), so a step always fits: the invariant holds after every
    step. The cut of a step depends on the steps before it, so the state (:meth:`state_dict`) goes into
    checkpoints and a resumed run loads it back (:meth:`load_state_dict`).
    """

    def __init__(
        self,
        max_size: int,
        max_padding_share: float = MAX_PADDING_SHARE,
        forward_cost: float = FORWARD_COST_TOKENS,
    ):
        self.max_size, self.max_padding_share, self.forward_cost = max_size, max_padding_share, forward_cost
        self.free_level = 0 if forward_cost == 0 else math.ceil(math.log(1 / forward_cost, 0.7)) + 1
        self.level = 0  # where the next step starts
        self.real_tokens = self.token_slots = 0  # running totals of the steps cut so far

    def state_dict(self) -> dict[str, int]:
        return {"level": self.level, "real_tokens": self.real_tokens, "token_slots": self.token_slots}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.level, self.real_tokens, self.token_slots = state["level"], state["real_tokens"], state["token_slots"]

    def price(self, level: int) -> float:
        return 0.0 if level >= self.free_level else self.forward_cost * 0.7**level

    def __call__(self, lengths: Sequence[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        sorted_lengths = [lengths[i] for i in order]
        real = self.real_tokens + sum(lengths)
        allowed = real / (1 - self.max_padding_share) if self.max_padding_share < 1 else float("inf")
        level = self.level
        while True:
            starts = cheapest_cut(sorted_lengths, self.max_size, self.price(level))
            slots = sum(sorted_lengths[a] * (b - a) for a, b in itertools.pairwise((*starts, len(order))))
            if self.token_slots + slots <= allowed or level >= self.free_level:
                break
            level += 1
        self.real_tokens, self.token_slots, self.level = real, self.token_slots + slots, max(level - 1, 0)
        return [order[a:b] for a, b in itertools.pairwise((*starts, len(order)))]


def token_slots(chunks: Sequence[dict[str, Tensor]]) -> int:
    """Token slots the encoder runs on for ``chunks`` (real + padding: the sum of ``rows x row length``)."""
    return sum(chunk["input_ids"].numel() for chunk in chunks)


@dataclass
class ContrastiveCollator:
    """Callable ``rows -> batch`` for ``task`` (rows length-sorted when ``mini_batch_size > 0``), and
    :meth:`chunks` ``batch -> chunks`` of at most ``mini_batch_size`` texts (0: one chunk per role; with
    ``packing``, packed chunks of at most ``mini_batch_size x max_length`` token slots)."""

    tokenizer: object
    task: EmbedTask
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    mini_batch_size: int = 0
    packing: bool = False

    def __post_init__(self):
        if self.task.symmetric:  # one instruction, both sides (instructions.py)
            self.document_prefix = self.query_prefix
        if self.packing and not self.mini_batch_size:
            raise ValueError("packing needs mini_batch_size > 0 (the length-sorted rows it packs)")

    def texts(self, roles: Roles) -> list[str]:
        """The texts of a batch's ``roles`` as the encoder sees them: anchors with ``query_prefix``, then
        candidates with ``document_prefix`` (the query prefix, for symmetric tasks)."""
        return [self.query_prefix + text for text in roles.anchors] + [
            self.document_prefix + text for text in roles.candidates
        ]

    def __call__(self, rows: Sequence[dict]) -> dict:
        roles = self.task.roles(rows)
        texts = self.texts(roles)
        token_ids = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=True
        )["input_ids"]
        text_order = list(range(len(texts)))
        if self.mini_batch_size:
            text_order.sort(key=lambda i: -len(token_ids[i]))  # stable: ties keep text order
        return {
            **self.pad([token_ids[i] for i in text_order]),
            "lengths": torch.tensor([len(token_ids[i]) for i in text_order], dtype=torch.int64),
            "text_order": torch.tensor(text_order, dtype=torch.int64),
            "real_tokens": torch.tensor(sum(map(len, token_ids))),
            **self.labels(roles),
        }

    @staticmethod
    def labels(roles: Roles) -> dict[str, Tensor]:
        """What a batch's loss reads besides its embeddings: ``anchor_ids (B,)``, ``candidate_ids (M,)``, and
        ``positive_ids (B, P)`` (tasks that are not aligned) / ``scores (B,)`` (scored tasks) when they apply."""
        labels = {"anchor_ids": text_ids(roles.anchors), "candidate_ids": text_ids(roles.candidates)}
        if roles.positives is not None:
            width = max(len(texts) for texts in roles.positives)
            labels["positive_ids"] = torch.tensor(
                [text_ids(texts).tolist() + [PAD_ID] * (width - len(texts)) for texts in roles.positives]
            )
        if roles.scores is not None:
            labels["scores"] = torch.tensor(roles.scores, dtype=torch.float32)
        return labels

    def chunker(self) -> LengthSortedChunker | None:
        """A fresh chunker for this collator's batches (None with ``mini_batch_size`` 0 or ``packing``: the cut
        depends on the step alone)."""
        return LengthSortedChunker(self.mini_batch_size) if self.mini_batch_size and not self.packing else None

    def chunks(self, batch: dict, chunker: LengthSortedChunker | None = None) -> list[dict[str, Tensor]]:
        """The chunks the encoder runs on, in row order: ``input_ids`` / ``attention_mask`` ``(n_c, T_c)``, each
        the batch's rows ``[a, b)`` padded to their own longest (slices of the batch's tensors, on its device).

        ``chunker`` cuts the length-sorted rows and advances its running totals (the training step passes its
        own, in step order); None: a fresh chunker, i.e. the step cut on its own. With ``mini_batch_size`` 0
        the chunks are the anchors and the candidates; with ``packing``, packed chunks (``packing.py``)."""
        lengths = batch["lengths"].tolist()
        left = self.tokenizer.padding_side == "left"
        if self.packing:
            slots = self.mini_batch_size * self.max_length
            forwards = pack_steps(lengths, slots, self.max_length, FORWARD_COST_TOKENS, self.mini_batch_size)
            return [
                pack_chunk(batch["input_ids"], lengths, first, rows, left, self.tokenizer.pad_token_id)
                for first, rows in forwards
            ]
        if self.mini_batch_size:
            starts = [chunk[0] for chunk in (chunker or self.chunker())(lengths)]
        else:
            starts = [0, batch["anchor_ids"].shape[0]]
        width = batch["input_ids"].shape[1]
        chunks = []
        for a, b in itertools.pairwise((*starts, len(lengths))):
            columns = slice(width - max(lengths[a:b]), width) if left else slice(0, max(lengths[a:b]))
            chunks.append({key: batch[key][a:b, columns] for key in ("input_ids", "attention_mask")})
        return chunks

    def pad(self, token_ids: list[list[int]]) -> dict[str, Tensor]:
        """``input_ids`` / ``attention_mask`` ``(n, T)`` padded to the longest text with the tokenizer's pad token
        on its padding side (the tensors ``lorasmith.encoder.Embedder.tokenize`` gives for these texts)."""
        width = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), width), self.tokenizer.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.int64)
        left = self.tokenizer.padding_side == "left"
        for row, ids in enumerate(token_ids):
            columns = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[row, columns] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
