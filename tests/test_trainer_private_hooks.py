"""transformers / TRL Trainer internals our trainers override or set: a rename or a signature change there would
make an override silently dead (the Trainer stops calling it) or break it at the first call mid-training.

transformers and TRL are not pinned from above, so every method or attribute a lorasmith trainer relies on is
listed here with the parameters (in order) the override receives; a new override adds one row to ``HOOKS``.
"""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer
from trl import SFTTrainer

COMPUTE_LOSS = ("self", "model", "inputs", "return_outputs", "num_items_in_batch")
EVALUATION_LOOP = ("self", "dataloader", "description", "prediction_loss_only", "ignore_keys", "metric_key_prefix")

# (library class, method name, its parameters in order); who overrides it is in the id
HOOKS = [
    pytest.param(Trainer, "compute_loss", COMPUTE_LOSS, id="SeqClassifyTrainer.compute_loss"),
    pytest.param(SFTTrainer, "compute_loss", COMPUTE_LOSS, id="PromptClassificationTrainer.compute_loss"),
    pytest.param(SFTTrainer, "evaluation_loop", EVALUATION_LOOP, id="PromptClassificationTrainer.evaluation_loop"),
    pytest.param(Trainer, "compute_loss", COMPUTE_LOSS, id="ContrastiveTrainer.compute_loss"),
    pytest.param(Trainer, "log", ("self", "logs", "start_time"), id="ContrastiveTrainer.log"),
    pytest.param(
        Trainer, "training_step", ("self", "model", "inputs", "num_items_in_batch"), id="ContrastiveTrainer.training_step"
    ),
    pytest.param(
        Trainer, "evaluate", ("self", "eval_dataset", "ignore_keys", "metric_key_prefix"), id="ContrastiveTrainer.evaluate"
    ),
    # private: Trainer's own versions would save / load the EmbeddingModel wrapper, not the PEFT adapter it holds
    pytest.param(Trainer, "_save", ("self", "output_dir", "state_dict"), id="ContrastiveTrainer._save"),
    pytest.param(
        Trainer,
        "_load_from_checkpoint",
        ("self", "resume_from_checkpoint", "model"),
        id="ContrastiveTrainer._load_from_checkpoint",
    ),
    pytest.param(Trainer, "_load_best_model", ("self",), id="ContrastiveTrainer._load_best_model"),
    # private: each process's chunker state is saved and restored with its RNG state (exact resume)
    pytest.param(Trainer, "_save_rng_state", ("self", "output_dir"), id="ContrastiveTrainer._save_rng_state"),
    pytest.param(Trainer, "_load_rng_state", ("self", "checkpoint"), id="ContrastiveTrainer._load_rng_state"),
]

# (Trainer method, the private override it must still call): otherwise the override would be silently dead
PRIVATE_CALLS = [
    ("save_model", "self._save("),
    ("train", "self._load_from_checkpoint("),
    ("_finalize_training", "self._load_best_model("),
    ("_save_checkpoint", "self._save_rng_state("),
    ("_run_epoch", "self._load_rng_state("),
]


@pytest.mark.parametrize("owner, name, parameters", HOOKS)
def test_overridden_trainer_method_keeps_its_name_and_parameters(owner, name, parameters):
    method = getattr(owner, name, None)
    assert callable(method), f"{owner.__module__}.{owner.__name__}.{name} is gone: our override is never called"
    assert tuple(inspect.signature(method).parameters) == parameters, (
        f"{owner.__name__}.{name} changed its parameters: update our override to the new signature"
    )


def test_trainer_still_reads_loss_is_scaled_for_ga():
    """``SeqClassifyTrainer`` sets it so that the Trainer divides its per-batch mean loss by the accumulation steps."""
    assert "loss_is_scaled_for_ga" in vars(Trainer), "Trainer.loss_is_scaled_for_ga is gone: check the loss scaling"
    assert "loss_is_scaled_for_ga" in inspect.getsource(Trainer.training_step)


@pytest.mark.parametrize("caller, call", PRIVATE_CALLS)
def test_trainer_still_calls_the_private_methods_contrastive_trainer_overrides(caller, call):
    assert call in inspect.getsource(getattr(Trainer, caller)), (
        f"Trainer.{caller} no longer calls {call.removeprefix('self.').rstrip('(')}: ContrastiveTrainer's "
        "checkpoint override would be skipped"
    )
