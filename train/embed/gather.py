"""Cross-process gathering for in-batch negatives, with the gradient of the big batch.

Every function is the identity (world size 1) on a single process, so the same loss code runs on one
process, under DDP / DeepSpeed, and in the single-process reference of the exactness test. Rank and world
size are accelerate's ``PartialState`` (the state ``Trainer`` / ``Accelerator`` set up).

Why the gradient is exact: :func:`gather_with_grad` uses the autograd all-gather of
``torch.distributed._functional_collectives``, whose backward *sums* the gradient of every rank's copy
and hands each rank the slice of its own rows. If rank ``r`` computes a loss ``L_r`` from its local rows
and the gathered rows, rank ``r``'s embeddings receive ``sum_s dL_s/de_r``; DDP then averages parameter
gradients, giving ``d/dtheta (mean_s L_s)``. So the gradient equals the big-batch gradient whenever
``mean_s L_s`` equals the big-batch loss (``objective.py`` arranges that). A plain ``dist.all_gather``
with the local shard put back keeps only the local path and is measurably wrong (a 14 % relative error of the
parameter gradient in a 2-process float64 check against one process with the whole batch).

Unequal shards (a short last batch, a varying number of tags per rank) are supported: sizes are
gathered first, every shard is zero-padded to the largest, gathered, and the padding is cut off, so
the result is always the exact concatenation in rank order. Pass ``sizes=`` (from :func:`gather_sizes`)
to skip the size exchange when it is already known.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import PartialState
from torch import Tensor
from torch.distributed._functional_collectives import all_gather_single_autograd


def world_size() -> int:
    """Number of processes, 1 when not distributed."""
    return PartialState().num_processes


def rank() -> int:
    """This process's index among all processes, 0 when not distributed."""
    return PartialState().process_index


def is_distributed() -> bool:
    """True when more than one process takes part (collectives are needed)."""
    return world_size() > 1


def gather_sizes(*n_local: int, device: torch.device | str = "cpu") -> list[tuple[int, ...]]:
    """Every rank's local sizes, in rank order: ``gather_sizes(B, M)`` -> ``[(B_0, M_0), (B_1, M_1), ...]``.

    One small collective for any number of sizes; ``device`` must suit the backend (CUDA for NCCL).
    """
    if not is_distributed():
        return [tuple(n_local)]
    local = torch.tensor(n_local, dtype=torch.int64, device=device)
    shards = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(shards, local)
    return [tuple(int(n) for n in shard.tolist()) for shard in shards]


def _gather(t: Tensor, sizes: Sequence[int] | None, with_grad: bool) -> Tensor:
    if not is_distributed():
        return t
    if sizes is None:
        sizes = [n for (n,) in gather_sizes(t.shape[0], device=t.device)]
    if sizes[rank()] != t.shape[0]:
        raise ValueError(f"sizes[{rank()}] = {sizes[rank()]} but the local tensor has {t.shape[0]} rows")
    longest = max(sizes)
    padded = F.pad(t, (0, 0) * (t.dim() - 1) + (0, longest - t.shape[0])) if t.shape[0] < longest else t
    if with_grad:
        gathered = all_gather_single_autograd(padded.contiguous(), 0, dist.group.WORLD)
    else:
        shards = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(shards, padded.detach().contiguous())
        gathered = torch.cat(shards)
    if all(n == longest for n in sizes):
        return gathered
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)])


def gather_with_grad(t: Tensor, *, sizes: Sequence[int] | None = None) -> Tensor:
    """``(n_r, ...)`` on each rank -> ``(sum_r n_r, ...)`` in rank order; backward sums all ranks' gradients.

    Shards may differ in length (padded internally); ``sizes`` is every rank's ``n_r`` if already known.
    Identity when not distributed.
    """
    return _gather(t, sizes, with_grad=True)


def gather_no_grad(t: Tensor, *, sizes: Sequence[int] | None = None) -> Tensor:
    """Like :func:`gather_with_grad` for tensors that need no gradient (ids, scores, counts); detached."""
    return _gather(t, sizes, with_grad=False)


def sum_over_ranks(t: Tensor) -> Tensor:
    """Element-wise sum of ``t`` over all ranks (detached copy; ``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    total = t.detach().clone()
    dist.all_reduce(total)
    return total
