"""Matryoshka embeddings: the first ``d`` dimensions of every embedding trained as an embedding of their own.

With ``matryoshka_dims: [384, 256, 128, 64]`` (and optional ``matryoshka_weights``, default all 1) the
objective computes every one of its losses on the global batch truncated to each listed width and adds them:
``total = sum_d w_d * sum_loss weight_loss * loss(emb[:, :d])``. The truncation happens at the embeddings ->
loss boundary (:meth:`ContrastiveObjective.forward`), after the one cross-process gather at full width, so a
trainer that computes the loss from embeddings (plain step, gradient cache) trains Matryoshka without knowing
about it. The losses compare cosines (they L2-normalise what they get), so a truncated prefix is re-normalised
exactly as a normalising model's truncated output would be.

At inference, keep the first ``d`` dimensions and re-normalise: ``eval.* --truncate-dim d``,
``SentenceTransformer(merged, truncate_dim=d)`` (with ``normalize_embeddings=True`` or cosine similarity).

With ``matryoshka_distill: w`` each narrower width also learns the full width's *ranking*: every local anchor's
softmax over the global candidates at width ``d`` is pulled towards the same softmax at full width (the teacher,
detached), ``w_d * w * KL(teacher || width d)`` (:class:`WidthDistillation`). The contrastive losses only tell a
width which candidate is the positive; the distillation also passes on how the full width orders the negatives,
which is what retrieval at that width ranks by.

References: Kusupati et al. 2022, "Matryoshka Representation Learning"; sentence-transformers ``MatryoshkaLoss``;
Hinton et al. 2015 (distillation with a softmax temperature).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from lorasmith.errors import ConfigError
from train.contrastive.batch import GlobalBatch
from train.contrastive.losses import ContrastiveLoss, LossOutput, first_occurrences, share_of_global_mean


@dataclass(frozen=True)
class MatryoshkaDims:
    """The widths trained and their weights.

    Attributes:
        dims: strictly descending positive widths, e.g. ``(384, 256, 128, 64)``.
        weights: one weight ``>= 0`` per width (not all 0), same order.
        distill: weight ``>= 0`` of the full -> width distillation (:class:`WidthDistillation`) at every narrower
            width, on top of that width's weight; 0 = off.
        distill_temperature: softmax temperature ``> 0`` of the distillation.
    """

    dims: tuple[int, ...]
    weights: tuple[float, ...]
    distill: float = 0.0
    distill_temperature: float = 0.05

    def check_width(self, width: int) -> None:
        """ConfigError when the widest ``d`` exceeds the model's embedding width ``width`` (its hidden size)."""
        if self.dims[0] > width:
            raise ConfigError(
                f"matryoshka_dims {list(self.dims)}: {self.dims[0]} is wider than the model's embeddings ({width}); "
                f"use dimensions <= {width}"
            )


def matryoshka_dims(
    dims: Sequence[int] | None,
    weights: Sequence[float] | None = None,
    distill: float = 0.0,
    distill_temperature: float = 0.05,
) -> MatryoshkaDims | None:
    """The recipe's ``matryoshka_dims`` / ``matryoshka_weights`` / ``matryoshka_distill`` /
    ``matryoshka_distill_temperature`` validated; ``None`` when ``dims`` is unset/empty.

    Raises:
        ConfigError: a width that is not a positive integer, widths not strictly descending, weights or
            distillation without dims, a weight count that differs from the dim count, a negative or non-numeric
            weight, all weights 0, a negative distillation weight, a distillation temperature <= 0.
    """
    if not distill >= 0:
        raise ConfigError(f"matryoshka_distill must be >= 0 (0 = off); got {distill}")
    if not distill_temperature > 0:
        raise ConfigError(f"matryoshka_distill_temperature must be > 0; got {distill_temperature}")
    if not dims:
        if weights:
            raise ConfigError("matryoshka_weights needs matryoshka_dims (the widths the weights belong to)")
        if distill:
            raise ConfigError(
                "matryoshka_distill needs matryoshka_dims (e.g. 384 256 128 64): it distils the full width into "
                "the narrower ones"
            )
        return None
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(
            f"matryoshka_dims must be positive integers, e.g. [384, 256, 128, 64]; got {list(dims)}"
        )
    if any(a <= b for a, b in zip(dims, dims[1:], strict=False)):
        raise ConfigError(
            f"matryoshka_dims must be strictly descending (widest first), e.g. [384, 256, 128, 64]; got {list(dims)}"
        )
    weights = [1.0] * len(dims) if not weights else list(weights)
    if len(weights) != len(dims):
        raise ConfigError(
            f"matryoshka_weights has {len(weights)} values for {len(dims)} matryoshka_dims {list(dims)}; give one per dim"
        )
    if any(isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights):
        raise ConfigError(f"matryoshka_weights must be numbers >= 0; got {weights}")
    if not any(weights):
        raise ConfigError(f"matryoshka_weights are all 0 ({weights}); at least one width must be trained")
    return MatryoshkaDims(
        tuple(int(d) for d in dims), tuple(float(w) for w in weights), float(distill), float(distill_temperature)
    )


def truncate_view(view: GlobalBatch, dim: int) -> GlobalBatch:
    """``view`` with every embedding cut to its first ``dim`` columns: ``(B, D) -> (B, dim)`` for the local
    anchors and candidates, ``(M_g, D) -> (M_g, dim)`` for the gathered candidates, ``(N, D) -> (N, dim)`` for the
    gathered anchors. Ids, offsets, partner indices and scores are shared; slices keep the autograd graph."""
    local = dataclasses.replace(
        view.local, anchor=view.local.anchor[:, :dim], candidates=view.local.candidates[:, :dim]
    )
    return dataclasses.replace(
        view,
        local=local,
        candidates=view.candidates[:, :dim],
        anchors=None if view.anchors is None else view.anchors[:, :dim],
    )


class WidthDistillation(ContrastiveLoss):
    """Full-width -> width-``d`` ranking distillation over the global batch (``matryoshka_distill``).

    For each local anchor ``a`` and the distinct contents among the global candidates ``c`` (each scored at its
    first row, as the in-batch softmax losses count them): teacher ``p = softmax(cos(a, c) / t)`` at full width,
    detached; student ``q_d = softmax(cos(a[:d], c[:d]) / t)``; term ``KL(p || q_d)``. Loss = mean over the global
    anchors (this process returns its share, :func:`share_of_global_mean`). The gradient reaches only the first
    ``d`` dimensions; the full width is taught by the contrastive losses alone.

    Args:
        temperature: cosines are divided by it.
    """

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, view: GlobalBatch, width: int) -> LossOutput:
        """``view`` at full width; ``width`` the student's."""
        anchors, candidates = view.local.anchor, view.candidates
        distinct = first_occurrences(view.candidate_ids)[None, :]  # (1, M_g)
        teacher = self._log_softmax(anchors.detach(), candidates.detach(), distinct)  # (B, M_g)
        student = self._log_softmax(anchors[:, :width], candidates[:, :width], distinct)
        terms = (teacher.exp() * (teacher - student)).masked_fill(~distinct, 0.0).sum(dim=1)  # (B,)
        return LossOutput(share_of_global_mean(terms, view.world_size))

    def _log_softmax(self, anchors: Tensor, candidates: Tensor, distinct: Tensor) -> Tensor:
        logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / self.temperature
        return F.log_softmax(logits.masked_fill(~distinct, float("-inf")), dim=1)
