"""The training objective of ``train/embed/__main__.py``: a weighted sum of contrastive losses over the global batch.

:meth:`ContrastiveObjective.forward` gathers the batch across processes once (only what the enabled losses
declare in their ``needs``), computes every loss, and returns this process's share of the big-batch loss
(its mean over processes is the big-batch loss, its gradient under DDP the big-batch gradient; see
``losses.py``) together with loggable numbers that are already global (identical on every process). A
recipe's ``loss:`` entry becomes an objective in ``loss_spec.py``. With Matryoshka widths (``matryoshka.py``) every
loss is also computed on the gathered batch truncated to each width, and the weighted sum covers them all.

In a trainer: embed the batch with the (DDP-wrapped) model, build an ``EmbeddedBatch`` (``batch.py``), and
return ``objective(batch).loss`` from ``compute_loss`` unchanged: do not rescale it by the world size (HF
Trainer's default ``compute_loss`` may multiply by ``num_processes`` when ``average_tokens_across_devices``
is on; override it). Every process must call the objective every step (it runs collectives), and the logged
mean of the per-process losses is the big-batch loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from operator import or_

import torch
from torch import Tensor, nn

from train.embed.batch import EmbeddedBatch, GlobalBatch
from train.embed.gather import sum_over_ranks
from train.embed.losses import ContrastiveLoss
from train.embed.matryoshka import MatryoshkaDims, truncate_view


@dataclass
class ObjectiveOutput:
    """Result of one objective step.

    Attributes:
        loss: scalar, this process's share of the weighted big-batch loss (mean over processes = big-batch
            loss); call ``backward`` on it.
        value: the weighted big-batch loss as a number (global, identical on every process).
        components: loss name -> its unweighted big-batch value (global, identical on every process); with
            Matryoshka widths, ``name@d`` for each width ``d`` narrower than the embeddings.
        telemetry: global numbers: ``global_batch_size`` (anchors), ``global_candidates`` and, per component
            ``name``, ``name/<statistic>`` from its loss's ``summarize`` (the in-batch softmax losses:
            ``top1_accuracy``, ``negatives_per_anchor``, ``masked_false_negatives``).
    """

    loss: Tensor
    value: float
    components: dict[str, float]
    telemetry: dict[str, float]


class ContrastiveObjective(nn.Module):
    """Weighted sum of contrastive losses, each computed on local anchors against the gathered global batch.

    Args:
        losses: name -> (weight > 0, loss), at least one (``loss_spec.build_objective`` drops weight 0).
        matryoshka: widths to train every loss at (``None``: the full embeddings only). The batch is gathered
            once at full width and truncated per width; widths of weight 0 are not computed.
    """

    def __init__(
        self, losses: Mapping[str, tuple[float, ContrastiveLoss]], matryoshka: MatryoshkaDims | None = None
    ):
        super().__init__()
        self.weights = {name: float(weight) for name, (weight, _) in losses.items()}
        self.losses = nn.ModuleDict({name: loss for name, (_, loss) in losses.items()})
        self.needs = reduce(or_, (loss.needs for loss in self.losses.values()))
        self.matryoshka = matryoshka

    def widths(self, full: int) -> list[tuple[int, float]]:
        """``(width, weight)`` of each width the losses are computed at, for embeddings ``full`` wide."""
        if self.matryoshka is None:
            return [(full, 1.0)]
        pairs = zip(self.matryoshka.dims, self.matryoshka.weights, strict=True)
        return [(dim, weight) for dim, weight in pairs if weight > 0]

    def narrower_than(self, full: int) -> ContrastiveObjective | None:
        """The same losses at only the Matryoshka widths narrower than ``full`` (their weights unchanged): what an
        orthogonal map of ``full``-wide embeddings can still change, since it keeps every full-width cosine.
        ``None`` without a narrower width of weight > 0."""
        narrow = [(dim, weight) for dim, weight in self.widths(full) if dim < full]
        if not narrow:
            return None
        losses = {name: (self.weights[name], loss) for name, loss in self.losses.items()}
        dims, weights = zip(*narrow, strict=True)
        return ContrastiveObjective(losses, MatryoshkaDims(dims, weights))

    def forward(self, batch: EmbeddedBatch, *, across_processes: bool = True) -> ObjectiveOutput:
        """Loss of ``batch`` as part of the global batch of all processes.

        ``across_processes=False`` treats ``batch`` as the whole global batch (nothing gathered, world size 1),
        e.g. for a single-process reference or for evaluation on one process.
        """
        if self.needs.scores and batch.scores is None:
            raise ValueError(f"losses {list(self.losses)} need EmbeddedBatch.scores")
        if (self.needs.anchors or self.needs.pairs) and batch.pair_index is None:
            raise ValueError(f"losses {list(self.losses)} need EmbeddedBatch.pair_index")
        view = (
            GlobalBatch.gather(batch, self.needs) if across_processes else GlobalBatch.single_process(batch)
        )

        full = view.candidates.shape[1]
        total = 0.0
        shares, stats, weights, owners = {}, {}, {}, {}
        for width, width_weight in self.widths(full):
            truncated = view if width == full else truncate_view(view, width)
            for name, loss in self.losses.items():
                component = name if width == full else f"{name}@{width}"
                output = loss(truncated)
                shares[component] = output.loss
                weights[component] = width_weight * self.weights[name]
                owners[component] = loss
                stats.update({(component, key): value for key, value in output.stats.items()})
                total = total + weights[component] * output.loss

        # One collective for every logged number: shares average to the global losses, stats add up.
        logged = torch.stack(
            [value.detach().to(torch.float64) for value in (*shares.values(), *stats.values())]
        )
        if view.world_size > 1:
            logged = sum_over_ranks(logged)
        values = logged.tolist()
        components = {
            name: value / view.world_size for name, value in zip(shares, values[: len(shares)], strict=True)
        }
        sums = dict(zip(stats, values[len(shares) :], strict=True))
        telemetry = {
            "global_batch_size": float(view.num_anchors),
            "global_candidates": float(view.candidates.shape[0]),
        }
        for component, loss in owners.items():
            own = {key: value for (owner, key), value in sums.items() if owner == component}
            telemetry.update({f"{component}/{key}": value for key, value in loss.summarize(own).items()})
        value = sum(weights[name] * component for name, component in components.items())
        return ObjectiveOutput(loss=total, value=value, components=components, telemetry=telemetry)
