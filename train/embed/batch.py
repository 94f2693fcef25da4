"""What the contrastive objective consumes: one process's embedded batch, and its gathered (global) view.

The trainer embeds a batch and builds an :class:`EmbeddedBatch` (local tensors only); the objective turns it
into a :class:`GlobalBatch` (candidates from every process, plus whatever else the enabled losses need) and
hands that to the losses. Texts are identified by a content hash (:func:`text_ids`), so a text that occurs
twice in the global batch (a duplicate sentence, a tag shared by two texts) is recognised as the same
content on every process and is never used as a negative of an anchor it is positive for.

An ``EmbeddedBatch`` (``B`` anchors, ``M`` candidates, ``D`` embedding size) has one of two shapes; the task's
record (``tasks.EmbedTask.aligned``) says which:

- **aligned** (:meth:`EmbeddedBatch.aligned`): the first ``B`` candidates are the anchors' partners in order
  (``pair_index = arange(B)``), further rows are hard negatives; ``positive_ids (B, 1)`` is the partner's id,
  or the anchor's own for two views of one text (unsupervised SimCSE). ``scores (B,)``, when the task is
  scored, are the gold similarities rescaled to ``[0, 1]``.
- **multi-positive**: the candidates are the batch's distinct positives (tags), ``positive_ids (B, P)`` each
  anchor's positive ids padded with ``-1``, no ``pair_index``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from train.embed.gather import gather_no_grad, gather_sizes, gather_with_grad, rank, world_size

PAD_ID = -1  # padding in positive_ids; text_ids never returns it (hashes are non-negative)


def text_ids(texts: list[str]) -> Tensor:
    """``(len(texts),)`` int64 content ids: the first 63 bits of blake2b(utf-8 text), identical on every process/run."""
    ids = [
        int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1
        for text in texts
    ]
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class EmbeddedBatch:
    """This process's embeddings of one batch (local, not gathered).

    Attributes:
        anchor: ``(B, D)`` anchors (queries / texts / sentence1 / SimCSE view 1).
        candidates: ``(M, D)`` candidates: positives, hard negatives, tags, sentence2 / SimCSE view 2.
        anchor_ids: ``(B,)`` int64 content ids (:func:`text_ids`) of the anchors.
        candidate_ids: ``(M,)`` int64 content ids of the candidates.
        positive_ids: ``(B, P)`` int64 content ids of each anchor's positives, padded with -1, ``P >= 1``.
            Every id must occur among the candidates of the *global* batch (normally the local one).
        pair_index: ``(B,)`` int64 row in ``candidates`` of each anchor's aligned partner (its positive for
            pairs / triplets / SimCSE, sentence2 for scored pairs); ``None`` for tags.
        scores: ``(B,)`` gold similarity of (anchor, partner) in ``[0, 1]`` for scored pairs, else ``None``.

    Embeddings need not be normalised (the losses use cosine similarity). Shapes are checked on construction.
    """

    anchor: Tensor
    candidates: Tensor
    anchor_ids: Tensor
    candidate_ids: Tensor
    positive_ids: Tensor
    pair_index: Tensor | None = None
    scores: Tensor | None = None

    def __post_init__(self) -> None:
        b, m = self.anchor.shape[0], self.candidates.shape[0]
        expected = {
            "anchor": (self.anchor.dim() == 2, "(B, D)"),
            "candidates": (
                self.candidates.dim() == 2 and self.candidates.shape[1] == self.anchor.shape[1],
                "(M, D)",
            ),
            "anchor_ids": (tuple(self.anchor_ids.shape) == (b,), f"({b},)"),
            "candidate_ids": (tuple(self.candidate_ids.shape) == (m,), f"({m},)"),
            "positive_ids": (self.positive_ids.dim() == 2 and self.positive_ids.shape[0] == b, f"({b}, P)"),
            "pair_index": (self.pair_index is None or tuple(self.pair_index.shape) == (b,), f"({b},)"),
            "scores": (self.scores is None or tuple(self.scores.shape) == (b,), f"({b},)"),
        }
        for name, (ok, shape) in expected.items():
            if not ok:
                raise ValueError(
                    f"EmbeddedBatch.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
                )
        if self.scores is not None and self.pair_index is None:
            raise ValueError("EmbeddedBatch.scores needs pair_index (scores belong to aligned pairs)")

    @classmethod
    def aligned(
        cls,
        anchor: Tensor,
        candidates: Tensor,
        anchor_ids: Tensor,
        candidate_ids: Tensor,
        *,
        scores: Tensor | None = None,
        positive_is_anchor: bool = False,
    ) -> EmbeddedBatch:
        """Pairs, triplets, scored pairs, SimCSE: the first ``B`` candidates are the anchors' partners in order,
        any further rows are hard negatives. ``positive_is_anchor`` (unsupervised SimCSE) takes the anchor's
        own id as its positive id, otherwise the partner's id."""
        b = anchor.shape[0]
        partner_ids = anchor_ids if positive_is_anchor else candidate_ids[:b]
        pair_index = torch.arange(b, device=candidate_ids.device)
        return cls(anchor, candidates, anchor_ids, candidate_ids, partner_ids[:, None], pair_index, scores)


@dataclass(frozen=True)
class BatchNeeds:
    """What a loss reads from the :class:`GlobalBatch` besides the local anchors and the global candidates.

    Attributes:
        scores: gold similarity scores (``EmbeddedBatch.scores``): only scored tasks can feed the loss.
        anchors: every process's anchors and anchor ids (``GlobalBatch.anchors`` / ``anchor_ids``, gathered).
        pairs: every anchor's partner row and score (``GlobalBatch.pair_index`` / ``scores``, gathered):
            only aligned tasks can feed the loss.
    """

    scores: bool = False
    anchors: bool = False
    pairs: bool = False

    def __or__(self, other: BatchNeeds) -> BatchNeeds:
        """What two losses need together."""
        return BatchNeeds(
            self.scores or other.scores, self.anchors or other.anchors, self.pairs or other.pairs
        )


@dataclass
class GlobalBatch:
    """The global view of one step: local anchors plus what was gathered from every process (rank order).

    ``N`` = global number of anchors, ``M_g`` = global number of candidates. Fields a loss does not need
    may be ``None`` (the objective gathers only what its enabled losses use).

    Attributes:
        local: this process's :class:`EmbeddedBatch`.
        candidates: ``(M_g, D)`` all candidates, gradient flows back to every process.
        candidate_ids: ``(M_g,)`` their content ids.
        anchor_offset: row of ``local.anchor[0]`` among the ``N`` global anchors.
        candidate_offset: row of ``local.candidates[0]`` in ``candidates``.
        world_size: number of processes the batch was gathered from (1 for a single-process batch).
        num_anchors: ``N``, the global number of anchors (the global batch size).
        anchors: ``(N, D)`` all anchors (with gradient), or ``None``.
        anchor_ids: ``(N,)``, or ``None``.
        pair_index: ``(N,)`` row in ``candidates`` of each global anchor's partner, or ``None``.
        scores: ``(N,)`` gold scores, or ``None``.
    """

    local: EmbeddedBatch
    candidates: Tensor
    candidate_ids: Tensor
    anchor_offset: int
    candidate_offset: int
    world_size: int
    num_anchors: int
    anchors: Tensor | None = None
    anchor_ids: Tensor | None = None
    pair_index: Tensor | None = None
    scores: Tensor | None = None

    @property
    def local_pair_index(self) -> Tensor:
        """``(B,)`` row in ``candidates`` (global) of each local anchor's partner."""
        return self.local.pair_index + self.candidate_offset

    @classmethod
    def single_process(cls, batch: EmbeddedBatch) -> GlobalBatch:
        """The batch as the whole global batch (world size 1, nothing gathered), e.g. for a reference run."""
        return cls(
            local=batch,
            candidates=batch.candidates,
            candidate_ids=batch.candidate_ids,
            anchor_offset=0,
            candidate_offset=0,
            world_size=1,
            num_anchors=batch.anchor.shape[0],
            anchors=batch.anchor,
            anchor_ids=batch.anchor_ids,
            pair_index=batch.pair_index,
            scores=batch.scores,
        )

    @classmethod
    def gather(cls, batch: EmbeddedBatch, needs: BatchNeeds) -> GlobalBatch:
        """Gather ``batch`` across processes, each tensor once: candidates and their ids always; anchors and
        anchor ids when ``needs.anchors``; partner indices and scores when ``needs.pairs``. One extra small
        collective exchanges the local sizes (shards may differ in length)."""
        sizes = gather_sizes(
            batch.anchor.shape[0], batch.candidates.shape[0], device=batch.candidate_ids.device
        )
        anchor_sizes = [b for b, _ in sizes]
        candidate_sizes = [m for _, m in sizes]
        candidate_offset = sum(candidate_sizes[: rank()])
        view = cls(
            local=batch,
            candidates=gather_with_grad(batch.candidates, sizes=candidate_sizes),
            candidate_ids=gather_no_grad(batch.candidate_ids, sizes=candidate_sizes),
            anchor_offset=sum(anchor_sizes[: rank()]),
            candidate_offset=candidate_offset,
            world_size=world_size(),
            num_anchors=sum(anchor_sizes),
        )
        if needs.anchors:
            view.anchors = gather_with_grad(batch.anchor, sizes=anchor_sizes)
            view.anchor_ids = gather_no_grad(batch.anchor_ids, sizes=anchor_sizes)
        if needs.pairs:
            view.pair_index = gather_no_grad(batch.pair_index + candidate_offset, sizes=anchor_sizes)
            if batch.scores is not None:
                view.scores = gather_no_grad(batch.scores, sizes=anchor_sizes)
        return view
