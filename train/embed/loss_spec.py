"""A recipe's ``loss:`` entry -> a validated :class:`~train.embed.objective.ContrastiveObjective`.

Recipe format (``loss:`` in a YAML recipe, ``--loss`` on the command line)::

    loss: infonce                                  # one loss, weight 1
    loss: [cosent, angle]                          # several, weight 1 each
    loss:                                          # name -> weight, or name -> options
      cosent: {weight: 1, temperature: 0.05}
      ibn: {weight: 0}                             # weight 0 = off (not computed)
      angle: 1

Losses and their options besides ``weight``: :data:`LOSSES` (a new loss is its class in ``losses.py`` and one
entry there; ``--help`` lists them from it, :func:`losses_help`). Default: the task's
``EmbedTask.default_loss`` (``cosent`` for ``scored_pairs``, ``infonce`` otherwise). Every mistake is a
``ConfigError`` raised here, before any data or model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lorasmith.errors import ConfigError
from train.embed.losses import (
    AnglELoss,
    ContrastiveLoss,
    CoSENTLoss,
    CosineMSELoss,
    InBatchNegativesLoss,
    InfoNCELoss,
)
from train.embed.matryoshka import MatryoshkaDims
from train.embed.objective import ContrastiveObjective
from train.embed.tasks import EmbedTask, closest_hint

# loss name -> (class, its options besides weight)
LOSSES: dict[str, tuple[type[ContrastiveLoss], tuple[str, ...]]] = {
    "infonce": (InfoNCELoss, ("temperature", "symmetric")),
    "ibn": (InBatchNegativesLoss, ("temperature", "threshold")),
    "cosent": (CoSENTLoss, ("temperature",)),
    "angle": (AnglELoss, ("temperature",)),
    "cosine_mse": (CosineMSELoss, ()),
}

LossRecipe = str | Sequence[str] | Mapping[str, Any]


def losses_help() -> str:
    """The losses and their options for ``--help``, e.g. ``infonce (temperature, symmetric), ..., cosine_mse``."""
    return ", ".join(f"{name} ({', '.join(options)})" if options else name for name, (_, options) in LOSSES.items())


def loss_entries(loss: LossRecipe) -> dict[str, dict[str, Any]]:
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


def build_loss(
    task: EmbedTask, name: str, options: dict[str, Any], temperature: float | None
) -> tuple[float, ContrastiveLoss]:
    """(weight, loss) of one recipe entry, its options and its ``needs`` checked against the task."""
    if name not in LOSSES:
        raise ConfigError(
            f"unknown loss '{name}'{closest_hint(name, LOSSES)}. Known losses: {', '.join(LOSSES)}"
        )
    loss_class, allowed = LOSSES[name]
    weight = options.pop("weight", 1.0)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"loss '{name}': unknown option(s) {', '.join(unknown)}{closest_hint(unknown[0], (*allowed, 'weight'))}. "
            f"Options of '{name}': {', '.join(('weight', *allowed))}"
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ConfigError(f"loss '{name}': weight must be a number >= 0, got {weight!r}")
    if "temperature" in allowed and temperature is not None:
        options.setdefault("temperature", temperature)
    if "temperature" in options and not (
        isinstance(options["temperature"], int | float) and options["temperature"] > 0
    ):
        raise ConfigError(f"loss '{name}': temperature must be a number > 0, got {options['temperature']!r}")
    loss = loss_class(**options)
    if loss.needs.scores and not task.scored:
        raise ConfigError(
            f"loss '{name}' needs gold similarity scores, which task '{task.name}' does not have "
            f"(use it with task scored_pairs; for {task.name} use infonce)"
        )
    if name == "infonce" and task.scored:
        raise ConfigError(
            "loss 'infonce' would treat every scored pair as a positive; for task scored_pairs use 'ibn' "
            "(in-batch negatives whose positives are the pairs scored above its threshold)"
        )
    if loss.needs.pairs and not task.aligned:
        option = ": symmetric" if options.get("symmetric") else ""
        raise ConfigError(
            f"loss '{name}'{option} needs one aligned partner per anchor, which task '{task.name}' lacks"
        )
    return float(weight), loss


def build_objective(
    task: EmbedTask,
    loss: LossRecipe | None = None,
    *,
    temperature: float | None = None,
    matryoshka: MatryoshkaDims | None = None,
) -> ContrastiveObjective:
    """The objective of a recipe: its ``loss`` entry (see the module docstring) for ``task``.

    Args:
        task: the recipe's task record (``tasks.embed_task``).
        loss: ``None`` = the task's ``default_loss``.
        temperature: default temperature of every loss that has one and does not set its own
            (``None`` = each loss's own default, 0.05).
        matryoshka: widths every loss is also trained at (``matryoshka.matryoshka_dims``), or ``None``.

    Raises:
        ConfigError: unknown loss or option (with the closest known name), a loss the task cannot feed
            (scores, aligned pairs), a bad weight or temperature, or every weight 0.
    """
    entries = loss_entries(task.default_loss if loss is None else loss)
    if not entries:
        raise ConfigError(f"loss is empty; name at least one of {', '.join(LOSSES)}")
    losses = {name: build_loss(task, name, options, temperature) for name, options in entries.items()}
    enabled = {name: entry for name, entry in losses.items() if entry[0] != 0}
    if not enabled:
        raise ConfigError(f"every loss has weight 0 ({', '.join(losses)}); enable at least one")
    return ContrastiveObjective(enabled, matryoshka)
