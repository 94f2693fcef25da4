"""Gradient cache (GradCache, Gao et al. 2021): the big-batch contrastive gradient with the memory of one chunk.

A contrastive loss couples every text of the global batch, so a plain step keeps the activations of all of
them until the backward. :func:`gradient_cache_step` splits that backward in two:

1. embed every chunk under ``torch.no_grad`` (no activations kept), remembering each chunk's RNG state;
2. compute the loss on the full batch from those embeddings (a detached leaf that requires grad; the
   objective gathers it across processes exactly as in a plain step) and take ``g = d loss / d embeddings``;
3. re-encode chunk by chunk with autograd, each under the RNG state of its first pass (dropout masks replay,
   so unsupervised SimCSE's two views are the same in both passes), and backpropagate
   ``sum(embeddings_c * g_c)``, whose parameter gradient is ``g_c . d embeddings_c / d theta``. Summed over
   the chunks this is the chain rule of the plain step: same gradient up to float rounding.

Peak activation memory is one chunk's forward + backward, whatever the global batch; the price is a second
forward of every chunk. Distributed training: only the last chunk's forward/backward runs outside ``no_sync``
(DDP all-reduces once per step); the caller's ``backward`` decides how a chunk's surrogate loss is
backpropagated (``ContrastiveTrainer`` routes it through accelerate / the DeepSpeed engine, a test calls
``.backward()``). Every process must call :func:`gradient_cache_step` every step (the loss gathers), but the
number of chunks may differ between processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import get_device_states, set_device_states

from train.embed.model import in_text_order


def chunk_tensors(chunk: Any) -> list[Tensor]:
    """The tensors of one chunk (a tensor, or a dict of tensors) — where its RNG devices are read from."""
    if isinstance(chunk, Tensor):
        return [chunk]
    return [value for value in chunk.values() if isinstance(value, Tensor)]


class RandContext:
    """The CPU and accelerator RNG states at construction; ``with context:`` runs its block from those states
    and restores the states outside the block afterwards (GradCache's ``RandContext``)."""

    def __init__(self, *tensors: Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)
        self._fork = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def gradient_cache_step(
    chunks: Sequence[Any],
    text_order: Tensor,
    *,
    encode: Callable[[Any], Tensor],
    loss_of: Callable[[Tensor], Any],
    backward: Callable[[Tensor, bool], None],
    encode_without_grad: Callable[[Any], Tensor] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_scale: float = 1.0,
):
    """One training step's forward and backward with the gradient cache; returns ``loss_of``'s output.

    Args:
        chunks: the step's texts in chunks (whatever ``encode`` takes); their rows concatenated are the texts
            in the order ``text_order`` describes.
        text_order: ``(N,)`` text number of each row of the concatenated chunks (``in_text_order``).
        encode: chunk -> ``(n_c, D)`` embeddings, differentiable (e.g. the DDP-wrapped model).
        loss_of: ``(N, D)`` embeddings in text order -> an object with a scalar ``.loss`` (an
            ``ObjectiveOutput``); may gather across processes.
        backward: ``(surrogate scalar, is_last_chunk)`` -> backpropagates it (``surrogate.backward()`` or the
            trainer's accelerate backward).
        encode_without_grad: the first, gradient-free pass (e.g. the unwrapped model, to keep DDP's per-forward
            bookkeeping to the autograd pass); defaults to ``encode``.
        no_sync: context for every chunk but the last (``accelerator.no_sync(model)``): no gradient all-reduce.
        loss_scale: the gradient is that of ``loss_scale * loss`` (e.g. 1 / gradient-accumulation steps); the
            returned ``.loss`` is not scaled.
    """
    first_pass = encode_without_grad or encode
    states, parts = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandContext(*chunk_tensors(chunk)))
            parts.append(first_pass(chunk))
    cached = torch.cat(parts).detach().requires_grad_()  # (N, D) in chunk order
    output = loss_of(in_text_order(cached, text_order))
    (gradient,) = torch.autograd.grad(output.loss * loss_scale, cached)  # (N, D), d loss / d embeddings
    offset = 0
    for index, (chunk, state, part) in enumerate(zip(chunks, states, parts, strict=True)):
        last = index == len(chunks) - 1
        rows = slice(offset, offset + part.shape[0])
        offset += part.shape[0]
        with contextlib.nullcontext() if last else no_sync():
            with state:
                embeddings = encode(chunk)  # (n_c, D), with autograd, same dropout as the first pass
            backward((embeddings * gradient[rows].to(embeddings.dtype)).sum(), last)
    return output
