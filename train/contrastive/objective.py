"""The training objective of ``train/embed.py``: a weighted sum of contrastive losses over the global batch.

:meth:`ContrastiveObjective.from_config` turns a recipe's ``loss`` entry into losses, validated against the
task up front. :meth:`ContrastiveObjective.forward` gathers the batch across processes once (only what the
enabled losses use), computes every enabled loss, and returns this process's share of the big-batch loss
(its mean over processes is the big-batch loss, its gradient under DDP the big-batch gradient; see
``losses.py``) together with loggable numbers that are already global (identical on every process).

Recipe format (``loss:`` in a YAML recipe, or the ``loss`` argument)::

    loss: infonce                                  # one loss, weight 1
    loss: [cosent, angle]                          # several, weight 1 each
    loss:                                          # name -> weight, or name -> options
      cosent: {weight: 1, temperature: 0.05}
      ibn: {weight: 0}                             # weight 0 = off (not computed)
      angle: 1

Losses (options besides ``weight``): ``infonce`` (temperature, symmetric), ``ibn`` (temperature, threshold),
``cosent`` (temperature), ``angle`` (temperature), ``cosine_mse`` (none). Default per task: ``cosent`` for
``scored_pairs``, ``infonce`` otherwise.

In a trainer: embed the batch with the (DDP-wrapped) model, build an ``EmbeddedBatch`` (``batch.py`` has the
per-task table), and return ``objective(batch).loss`` from ``compute_loss`` unchanged: do not rescale it by the
world size (HF Trainer's default ``compute_loss`` may multiply by ``num_processes`` when
``average_tokens_across_devices`` is on; override it). Every process must call the objective every step (it
runs collectives), and the logged mean of the per-process losses is the big-batch loss.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lorasmith.errors import ConfigError
from train.contrastive.batch import EmbeddedBatch, GlobalBatch
from train.contrastive.gather import sum_over_ranks
from train.contrastive.losses import (
    AnglELoss,
    CoSENTLoss,
    CosineMSELoss,
    InBatchNegativesLoss,
    InfoNCELoss,
)


@dataclass(frozen=True)
class TaskTraits:
    """What a task's batches carry: gold scores, and anchors aligned with one partner each."""

    has_scores: bool
    aligned: bool


# train.embed's tasks (``simcse_unsup`` reads data_utils' ``sentences``).
TASKS = {
    "simcse_unsup": TaskTraits(has_scores=False, aligned=True),
    "pairs": TaskTraits(has_scores=False, aligned=True),
    "triplets": TaskTraits(has_scores=False, aligned=True),
    "tags": TaskTraits(has_scores=False, aligned=False),
    "scored_pairs": TaskTraits(has_scores=True, aligned=True),
}

LOSSES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "infonce": (InfoNCELoss, ("temperature", "symmetric")),
    "ibn": (InBatchNegativesLoss, ("temperature", "threshold")),
    "cosent": (CoSENTLoss, ("temperature",)),
    "angle": (AnglELoss, ("temperature",)),
    "cosine_mse": (CosineMSELoss, ()),
}


def _closest(name: str, known) -> str:
    """' (did you mean 'x'?)' for the nearest known name, or ''."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _loss_entries(loss: str | Sequence[str] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Normalise the recipe's ``loss`` value to ``name -> options`` (options include ``weight``)."""
    if isinstance(loss, str):
        return {loss: {}}
    if isinstance(loss, Mapping):
        entries = {}
        for name, options in loss.items():
            if isinstance(options, Mapping):
                entries[str(name)] = dict(options)
            elif isinstance(options, int | float) and not isinstance(options, bool):
                entries[str(name)] = {"weight": options}
            else:
                raise ConfigError(
                    f"loss '{name}': expected a weight or a mapping of options such as {{weight: 1, temperature: 0.05}}, "
                    f"got {options!r}"
                )
        return entries
    if isinstance(loss, Sequence) and all(isinstance(name, str) for name in loss):
        return {name: {} for name in loss}
    raise ConfigError(f"loss must be a name, a list of names or a mapping name -> options; got {loss!r}")


def _build_loss(
    task: str, name: str, options: dict[str, Any], temperature: float | None
) -> tuple[float, nn.Module]:
    """(weight, loss module) for one recipe entry, checked against the task."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}'{_closest(name, LOSSES)}. Known losses: {', '.join(LOSSES)}")
    loss_class, allowed = LOSSES[name]
    weight = options.pop("weight", 1.0)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"loss '{name}': unknown option(s) {', '.join(unknown)}{_closest(unknown[0], (*allowed, 'weight'))}. "
            f"Options of '{name}': {', '.join(('weight', *allowed))}"
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ConfigError(f"loss '{name}': weight must be a number >= 0, got {weight!r}")
    traits = TASKS[task]
    if loss_class.needs_scores and not traits.has_scores:
        raise ConfigError(
            f"loss '{name}' needs gold similarity scores, which task '{task}' does not have "
            f"(use it with task scored_pairs; for {task} use infonce)"
        )
    if name == "infonce" and traits.has_scores:
        raise ConfigError(
            "loss 'infonce' would treat every scored pair as a positive; for task scored_pairs use 'ibn' "
            "(in-batch negatives whose positives are the pairs scored above its threshold)"
        )
    if options.get("symmetric") and not traits.aligned:
        raise ConfigError(
            f"loss '{name}': symmetric needs one aligned partner per anchor, which task '{task}' lacks"
        )
    if "temperature" in allowed and temperature is not None:
        options.setdefault("temperature", temperature)
    if "temperature" in options and not (
        isinstance(options["temperature"], int | float) and options["temperature"] > 0
    ):
        raise ConfigError(f"loss '{name}': temperature must be a number > 0, got {options['temperature']!r}")
    return float(weight), loss_class(**options)


@dataclass
class ObjectiveOutput:
    """Result of one objective step.

    Attributes:
        loss: scalar, this process's share of the weighted big-batch loss (mean over processes = big-batch
            loss); call ``backward`` on it.
        components: loss name -> its unweighted big-batch value (global, identical on every process).
        telemetry: global numbers: ``global_batch_size`` (anchors), ``global_candidates`` and, per in-batch
            softmax loss ``name``: ``name/top1_accuracy`` (share of anchors whose best-scoring candidate is a
            positive), ``name/negatives_per_anchor`` (after masking) and ``name/masked_false_negatives``
            (candidates with a positive's content removed from the negatives, summed over the global batch).
    """

    loss: Tensor
    components: dict[str, float]
    telemetry: dict[str, float]


class ContrastiveObjective(nn.Module):
    """Weighted sum of contrastive losses, each computed on local anchors against the gathered global batch.

    Args:
        losses: name -> (weight, loss module); weight 0 turns a loss off (it is not computed).
    """

    def __init__(self, losses: Mapping[str, tuple[float, nn.Module]]):
        super().__init__()
        enabled = {name: (float(weight), loss) for name, (weight, loss) in losses.items() if weight != 0}
        if not enabled:
            raise ConfigError(
                f"every loss has weight 0 ({', '.join(losses) or 'none given'}); enable at least one"
            )
        self.weights = {name: weight for name, (weight, _) in enabled.items()}
        self.losses = nn.ModuleDict({name: loss for name, (_, loss) in enabled.items()})

    @classmethod
    def from_config(
        cls,
        task: str,
        loss: str | Sequence[str] | Mapping[str, Any] | None = None,
        *,
        temperature: float | None = None,
    ) -> ContrastiveObjective:
        """Build and validate the objective of a recipe.

        Args:
            task: one of ``TASKS`` (simcse_unsup, pairs, triplets, tags, scored_pairs), as in ``train.embed``.
            loss: see the module docstring; ``None`` = the task's default (cosent / infonce).
            temperature: default temperature of every loss that has one and does not set its own
                (``None`` = each loss's own default, 0.05).

        Raises:
            ConfigError: unknown task, loss or option (with the closest known name), a loss the task cannot
                feed (scores, aligned pairs), a bad weight or temperature, or every weight 0.
        """
        if task not in TASKS:
            raise ConfigError(
                f"unknown contrastive task '{task}'{_closest(task, TASKS)}. Known tasks: {', '.join(TASKS)}"
            )
        if loss is None:
            loss = "cosent" if TASKS[task].has_scores else "infonce"
        entries = _loss_entries(loss)
        if not entries:
            raise ConfigError(f"loss is empty; name at least one of {', '.join(LOSSES)}")
        return cls({name: _build_loss(task, name, options, temperature) for name, options in entries.items()})

    def forward(self, batch: EmbeddedBatch, *, across_processes: bool = True) -> ObjectiveOutput:
        """Loss of ``batch`` as part of the global batch of all processes.

        ``across_processes=False`` treats ``batch`` as the whole global batch (nothing gathered, world size 1),
        e.g. for a single-process reference or for evaluation on one process.
        """
        losses = list(self.losses.items())
        if any(loss.needs_scores for _, loss in losses) and batch.scores is None:
            raise ValueError(f"losses {list(self.losses)} need EmbeddedBatch.scores")
        if any(loss.needs_anchors or loss.needs_pairs for _, loss in losses) and batch.pair_index is None:
            raise ValueError(f"losses {list(self.losses)} need EmbeddedBatch.pair_index")
        if across_processes:
            view = GlobalBatch.gather(
                batch,
                with_anchors=any(loss.needs_anchors for _, loss in losses),
                with_pairs=any(loss.needs_pairs for _, loss in losses),
            )
        else:
            view = GlobalBatch.single_process(batch)

        total = 0.0
        shares, stats = {}, {}
        for name, loss in losses:
            if isinstance(loss, InfoNCELoss):
                shares[name], loss_stats = loss.compute(view)
                stats.update({f"{name}/{key}": value for key, value in loss_stats.items()})
            else:
                shares[name] = loss(view)
            total = total + self.weights[name] * shares[name]

        # One collective for every logged number: shares average to the global losses, stats add up.
        logged = torch.stack(
            [value.detach().to(torch.float64) for value in (*shares.values(), *stats.values())]
        )
        if view.world_size > 1:
            logged = sum_over_ranks(logged)
        logged = dict(zip([*shares, *stats], logged.tolist(), strict=True))
        components = {name: logged[name] / view.world_size for name in shares}
        telemetry = {
            "global_batch_size": float(view.num_anchors),
            "global_candidates": float(view.candidates.shape[0]),
        }
        for name, loss in losses:
            if isinstance(loss, InfoNCELoss):
                queries = max(logged[f"{name}/queries"], 1.0)
                telemetry[f"{name}/top1_accuracy"] = logged[f"{name}/top1_correct"] / queries
                telemetry[f"{name}/negatives_per_anchor"] = logged[f"{name}/negatives"] / queries
                telemetry[f"{name}/masked_false_negatives"] = logged[f"{name}/masked_false_negatives"]
        return ObjectiveOutput(loss=total, components=components, telemetry=telemetry)
