"""A minimal entrypoint with the real run lifecycle, for launch / resume / signal tests.

It takes the entrypoints' steps (``train.common.run``: recipe parsing, launch checks, plan, ``lifecycle_callbacks``,
``check_output_dir``, ``prepare_output_dir``, ``train``, ``finish``) around a transformers ``Trainer`` that fits a tiny causal LM (LoRA, dropout on, shuffled
data) on synthetic token sequences, so data order and RNG state both matter for exact resume.

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml tests/scripts/tiny_trainer.py \
        --model_name_or_path <tiny llama dir> --use_peft true --output_dir out --max_steps 6 --save_steps 2

Test hooks (environment): ``TINY_KILL_AT_STEP=k`` SIGKILLs rank 0 at the end of optimizer step k (before any save
of step k); ``TINY_STEP_SLEEP=s`` sleeps s seconds per step; each step rank 0 writes the step number to
``output_dir/progress`` (so a test knows when to send a signal); ``TINY_SAMPLES_LOG=path`` makes every rank append
the sample ids of each micro-batch it trains on to ``path.rank<r>`` (sample i starts with token 4 + i).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from lorasmith import recipe_parser, run_folder
from lorasmith.files import write_atomic
from lorasmith.process import run_main
from train.common import launch, run
from train.common.args import ModelArguments, RunArguments
from train.common.modeling import apply_tuning, count_parameters, load_model
from train.common.plan import print_plan, run_plan


@dataclass
class TinyArguments:
    num_samples: int = field(default=48, metadata={"help": "Synthetic training sequences."})
    sequence_length: int = field(default=12, metadata={"help": "Tokens per sequence."})


class TestHooks(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_atomic(os.path.join(args.output_dir, "progress"), str(state.global_step))
            if int(os.environ.get("TINY_KILL_AT_STEP", -1)) == state.global_step:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(os.environ.get("TINY_STEP_SLEEP", 0)))


def synthetic_dataset(tiny: TinyArguments, vocab_size: int) -> Dataset:
    """``num_samples`` random sequences; sample i starts with token 4 + i, so a batch tells which samples it holds."""
    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(4, vocab_size, (tiny.num_samples, tiny.sequence_length), generator=generator)
    ids[:, 0] = 4 + torch.arange(tiny.num_samples)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def logging_collator(features: list[dict]) -> dict:
    """``default_data_collator`` that appends the batch's sample ids to ``$TINY_SAMPLES_LOG.rank<r>``."""
    batch = default_data_collator(features)
    path = os.environ.get("TINY_SAMPLES_LOG")
    if path:
        with open(f"{path}.rank{PartialState().process_index}", "a") as stream:
            stream.write(" ".join(str(int(i) - 4) for i in batch["input_ids"][:, 0]) + "\n")
    return batch


def main(argv=None):
    args = recipe_parser.parse_recipe(recipe_parser.make_parser((TinyArguments, ModelArguments, RunArguments, TrainingArguments), module="tiny_trainer"), argv)
    tiny, model_args, run_args, parsed = args
    world_size = launch.check_launch(parsed, model_args)
    training_args = run.resolve_training_args(parsed, run_args, world_size, has_eval_data=False)
    args = (tiny, model_args, run_args, training_args)
    if run.check_output_dir(args):  # this recipe's run is finished
        return None
    set_seed(training_args.seed)  # the LoRA initialisation is random: same seed, same run
    model = apply_tuning(load_model(model_args, AutoModelForCausalLM), model_args, "CAUSAL_LM")
    print_plan("tiny trainer", run_plan(training_args, model_args, world_size, count_parameters(model)))
    if run_args.dry_run:
        return None
    train_dataset = synthetic_dataset(tiny, model.config.vocab_size)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset, data_collator=logging_collator,
        callbacks=[*run.lifecycle_callbacks(), TestHooks()]
    )
    recipe, resume_from = run.prepare_output_dir(args)
    if run.train(trainer, resume_from) is None:  # stopped by a signal
        return trainer
    metrics = {"world_size": world_size, "steps": trainer.state.global_step}
    run.finish(trainer, recipe, {}, run_folder.write_metrics, training_args.output_dir, metrics)
    return trainer


if __name__ == "__main__":
    sys.exit(run_main(main))
