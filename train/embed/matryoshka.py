"""Matryoshka embeddings: the first ``d`` dimensions of every embedding trained as an embedding of their own.

With ``matryoshka_dims: [384, 256, 128, 64]`` (and optional ``matryoshka_weights``, default all 1) the
objective computes every one of its losses on the global batch truncated to each listed width and adds them:
``total = sum_d w_d * sum_loss weight_loss * loss(emb[:, :d])``. The truncation happens at the embeddings ->
loss boundary (:meth:`ContrastiveObjective.forward`), after the one cross-process gather at full width, so a
trainer that computes the loss from embeddings (plain step, gradient cache) trains Matryoshka without knowing
about it. The losses compare cosines (they L2-normalise what they get), so a truncated prefix is re-normalised
exactly as a normalising model's truncated output would be.

At inference, keep the first ``d`` dimensions and re-normalise: ``eval.* --truncate_dim d``,
``SentenceTransformer(merged, truncate_dim=d)`` (with ``normalize_embeddings=True`` or cosine similarity).

Reference: Kusupati et al. 2022, "Matryoshka Representation Learning"; sentence-transformers ``MatryoshkaLoss``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from lorasmith.errors import ConfigError
from train.embed.batch import GlobalBatch


@dataclass(frozen=True)
class MatryoshkaDims:
    """The widths trained and their weights.

    Attributes:
        dims: strictly descending positive widths, e.g. ``(384, 256, 128, 64)``.
        weights: one weight ``>= 0`` per width (not all 0), same order.
    """

    dims: tuple[int, ...]
    weights: tuple[float, ...]

    def check_width(self, width: int) -> None:
        """ConfigError when the widest ``d`` exceeds the model's embedding width ``width`` (its hidden size)."""
        if self.dims[0] > width:
            raise ConfigError(
                f"matryoshka_dims {list(self.dims)}: {self.dims[0]} is wider than the model's embeddings ({width}); "
                f"use dimensions <= {width}"
            )


def matryoshka_dims(
    dims: Sequence[int] | None, weights: Sequence[float] | None = None
) -> MatryoshkaDims | None:
    """The recipe's ``matryoshka_dims`` / ``matryoshka_weights`` validated; ``None`` when ``dims`` is unset/empty.

    Raises:
        ConfigError: a width that is not a positive integer, widths not strictly descending, weights without
            dims, a weight count that differs from the dim count, a negative or non-numeric weight, all weights 0.
    """
    if not dims:
        if weights:
            raise ConfigError("matryoshka_weights needs matryoshka_dims (the widths the weights belong to)")
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
    return MatryoshkaDims(tuple(int(d) for d in dims), tuple(float(w) for w in weights))


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
