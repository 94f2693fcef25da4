"""Stop a run that diverged: at the first optimizer step after which the loss is inf / NaN or a trainable weight
is non-finite or has exploded.

A learning rate far too high does not always give a non-finite loss: in fp32 a normalised model keeps its loss
finite (bounded for contrastive losses, ~1e6 for a classification head) while its weights grow by about the
learning rate every step. So a step diverged when any micro-batch loss of it was non-finite on any process, or when
the largest trainable weight is non-finite or above ``max(EXPLODED, GROWTH x its value when training began)``;
healthy fine-tuning moves weights by small fractions. The check runs after each optimizer step, before that step's
checkpoint is written, with one gather of two floats per process; the run then raises ``TrainingDiverged`` (exit
4) naming the step and what to try. Checkpoints already written stay; nothing is evaluated or exported after it,
and the run is not marked complete. (Under DeepSpeed ZeRO-3 a process holds no whole weight: only the loss counts.)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from lorasmith.errors import TrainingDiverged
from train.common.resume import checkpoints, read_marker

EXPLODED = 1e4  # no trainable weight of a healthy transformer comes near this magnitude
GROWTH = 100.0


class StopOnDivergence(TrainerCallback):
    """Installed on a trainer by :func:`guard`: records each micro-batch loss, checks after each optimizer step."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.non_finite_loss: torch.Tensor | None = None  # on the device: a micro-batch loss of this step not finite
        self.start_weight: float | None = None

    def record(self, loss: torch.Tensor) -> None:
        """Note whether ``loss`` is finite, on its device (no host sync per micro-batch)."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.non_finite_loss = bad if self.non_finite_loss is None else self.non_finite_loss | bad

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start_weight = float(largest_trainable_weight(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        device = self.trainer.accelerator.device
        bad = self.non_finite_loss if self.non_finite_loss is not None else torch.tensor(False)
        local = torch.stack([bad.to(device).float(), largest_trainable_weight(model).to(device)])
        bad_loss, weight = self.trainer.accelerator.gather(local).reshape(-1, 2).T
        self.non_finite_loss = None
        limit = max(EXPLODED, GROWTH * (self.start_weight or 0.0))
        largest = float(weight.max())  # inf when a weight is not finite on some process
        if bool(bad_loss.max() > 0):
            raise TrainingDiverged(diverged_message(self.trainer, "the loss was inf or NaN"))
        if largest > limit:
            shown = "inf or NaN" if math.isinf(largest) else f"{largest:.3g}"
            raise TrainingDiverged(diverged_message(
                self.trainer, f"a trainable weight reached {shown} (at most {self.start_weight:.3g} when training "
                f"began; the limit is {limit:.3g})"))  # fmt: skip


def guard(trainer) -> None:
    """Make ``trainer`` stop with :class:`TrainingDiverged` on every process at the first diverged step: its
    ``training_step`` (wrapped on this instance, whatever the trainer's own step is) records each loss."""
    callback = StopOnDivergence(trainer)
    training_step = trainer.training_step

    def recorded_step(model, inputs, num_items_in_batch=None):
        loss = training_step(model, inputs, num_items_in_batch)
        callback.record(loss)
        return loss

    trainer.training_step = recorded_step
    trainer.add_callback(callback)


def largest_trainable_weight(model) -> torch.Tensor:
    """The largest magnitude of a trainable weight this process holds, a 0-dim tensor on the weights' device
    (inf when one is not finite; 0 for none)."""
    weights = [p.detach() for p in model.parameters() if p.requires_grad and p.numel() > 0]
    if not weights:
        return torch.zeros(())
    largest = torch.stack([w.abs().max().float() for w in weights]).max()
    return torch.where(torch.isnan(largest), torch.full_like(largest, math.inf), largest)


def diverged_message(trainer, what: str) -> str:
    """What happened, what was kept, and what to try."""
    args, state = trainer.args, trainer.state
    kept = [folder.name for _, folder in checkpoints(Path(args.output_dir)) if read_marker(folder) is not None]
    tips = [f"a lower learning_rate (the recipe's: {args.learning_rate:g})", "more warmup_steps"]
    tips.append(f"max_grad_norm below {args.max_grad_norm:g}" if args.max_grad_norm else "max_grad_norm 1.0")
    if args.fp16:
        tips.append("bf16 instead of fp16")
    saved = f"the checkpoints already written stay ({', '.join(kept)})" if kept else "no checkpoint was written yet"
    rerun = (
        f"Re-running the same recipe resumes from {kept[-1]} and may diverge again: change the recipe and pass "
        "--overwrite_output_dir true (this run moves to previous-runs/) or use another --output_dir."
        if kept else "Change the recipe and run again."
    )
    return (
        f"training diverged at step {state.global_step} (epoch {state.epoch or 0:.2f}): {what}. It was not saved "
        f"and nothing was exported; {saved}. Try {', '.join(tips)}. {rerun}"
    )
