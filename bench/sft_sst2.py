"""SST-2 with SmolLM2-135M: zero-shot vs LoRA-SFT label scoring, and the step-time overhead of sft_classify vs TRL.

    python bench/sft_sst2.py                       # 2,000 training rows, the full dev set (872 rows)
    python bench/sft_sst2.py --train-rows 500 --eval-rows 300 --skip-overhead

Part 1 runs ``train.sft_classify`` (the real entrypoint) on a random sample of SST-2 train rows with
``eval_before_training``: metrics.json holds the zero-shot label-scoring metrics (``before``) and those after
LoRA SFT (``eval``) on the dev set, with the same prompt.

Part 2 times training steps of ``PromptClassificationTrainer`` (what sft_classify trains with, here on padded
batches: bench/classify_throughput.py measures its packed ones) against a plain
``trl.SFTTrainer`` given the same rows as a conversational prompt-completion dataset: same model, LoRA, batch,
token sequences (the encoding is identical, see tests/test_prompts.py) and seed. Rounds alternate between the
two; steps are timed in CPU time of the process (robust to other jobs on a shared machine); the table reports
median step times and their ratio.

Dependencies are checked FIRST (``lorasmith.integrations``: TRL's SFTTrainer and SFTConfig, peft, the GGUF
loader): a part that cannot run is reported with the reason (the incompatible pair) before anything trains,
the rest still runs, and the exit code is 1. ``--check-deps`` runs only these checks.

Data: ``../shared/data/sst2`` (train.tsv ``label<TAB>sentence``, dev.tsv ``label<TAB>content``); the sampled rows
are written to a temporary folder, never into the repository.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import TrainerCallback  # noqa: E402

from lorasmith import integrations  # noqa: E402

SYSTEM = "You are a sentiment classifier for movie reviews. Answer with one word: positive or negative."
TEMPLATE = "Review: {text}\nIs this review positive or negative?"
LABELS = {0: "negative", 1: "positive"}


def write_split(source: Path, text_column: str, rows: int | None, seed: int, target: Path) -> Path:
    import pandas as pd

    frame = pd.read_csv(source, sep="\t", quoting=3, keep_default_na=False)
    if rows is not None and rows < len(frame):
        frame = frame.sample(n=rows, random_state=seed) if seed is not None else frame.head(rows)
    frame.rename(columns={text_column: "text"})[["text", "label"]].to_csv(target, index=False)
    return target


def recipe(folder: Path, train: Path, dev: Path, args) -> dict:
    return {
        "model_name_or_path": "smollm2",
        "train_data": str(train),
        "eval_data": str(dev),
        "labels": LABELS,
        "system_message": SYSTEM,
        "template": TEMPLATE,
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "max_length": 128,
        "num_train_epochs": 1,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": 16,
        "learning_rate": 2e-4,
        "activation_checkpointing": False,
        "logging_steps": 10,
        "eval_strategy": "no",  # zero-shot before training and the trained model at the end
        "load_best_model_at_end": False,
        "save_steps": 10_000,
        "eval_before_training": True,
        "export_merged": False,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 42,
        "output_dir": str(folder / "out"),
    }


def run_sft(folder: Path, train: Path, dev: Path, args) -> dict:
    import yaml

    from train.sft_classify import main

    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, train, dev, args)))
    start = time.perf_counter()
    main(["--config", str(path)])
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


class StepTimer(TrainerCallback):
    """CPU time of this process (all its threads) for every optimizer step.

    CPU time, not wall time: on a shared machine the wall time of a step mostly measures the other processes.
    """

    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.process_time() - self._start)


WARMUP_STEPS = 2


def time_steps(trainer_class, model, dataset, tokenizer, config, **extra) -> tuple[list[float], float]:
    """Step times of one short training run, without the first WARMUP_STEPS, and its mean training loss
    (equal for both trainers when they optimise the same answer-only objective on the same tokens)."""
    timer = StepTimer()
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
        **extra,
    )
    result = trainer.train()
    return timer.times[WARMUP_STEPS:], result.training_loss


def overhead(train: Path, args) -> dict:
    """Median step time of PromptClassificationTrainer vs plain SFTTrainer, alternating rounds."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import data_utils
    from lorasmith.prompts import PromptSpec, render, resolve_format
    from train.common.args import ModelArguments
    from train.common.modeling import apply_tuning, load_model, load_tokenizer
    from train.sft_classify.data import build_sft_rows, label_rows
    from train.sft_classify.trainer import PromptClassificationTrainer

    model_args = ModelArguments(
        model_name_or_path="smollm2",
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    tokenizer = load_tokenizer(model_args)
    base = load_model(model_args, AutoModelForCausalLM)
    rows = data_utils.load(train, task="labeled", label_names=["0", "1"]).select(
        range(args.batch_size * args.steps)
    )
    spec = PromptSpec(
        TEMPLATE,
        {str(k): v for k, v in LABELS.items()},
        SYSTEM,
        resolve_format("auto", tokenizer),
        max_length=128,
    )
    ours = build_sft_rows(rows, tokenizer, spec, str(train)).dataset
    plain = Dataset.from_list(
        [
            render(spec, row, str(label), tokenizer.eos_token)
            for row, label in zip(label_rows(rows, spec), rows["label"], strict=True)
        ]
    )
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4,
        max_length=128,
        activation_checkpointing=False,
        completion_only_loss=True,  # as sft_classify trains: loss on the answer tokens only, for both trainers
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        seed=42,
    )
    runs = {
        "sft_classify (PromptClassificationTrainer)": (
            PromptClassificationTrainer,
            ours,
            {"prompt_spec": spec},
        ),
        "plain trl.SFTTrainer": (SFTTrainer, plain, {}),
    }
    times = {name: [] for name in runs}
    losses = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (trainer_class, dataset, extra) in runs.items():
            model = apply_tuning(copy.deepcopy(base), model_args, "CAUSAL_LM")
            step_times, loss = time_steps(trainer_class, model, dataset, tokenizer, config, **extra)
            times[name] += step_times
            losses[name].append(loss)
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "steps": len(times[name]),
            "loss": statistics.mean(losses[name]),
        }
        for name in runs
    }


OURS, THEIRS = "sft_classify (part 1, and part 2's first row)", "plain trl.SFTTrainer (part 2's second row)"


def check_dependencies() -> dict[str, str | None]:
    """Per trainer: None when it can run, else why not (printed). Both load SmolLM2 from its GGUF file and add
    LoRA with peft; ours subclasses TRL's SFTTrainer, theirs is it."""
    needs = [integrations.check_trl_sft, integrations.check_peft_model, integrations.check_gguf]
    return integrations.check_comparisons({OURS: needs, THEIRS: needs})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=None, help="first N dev rows (default: all 872)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round (overhead)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (overhead)")
    parser.add_argument("--skip-sft", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--check-deps",
        action="store_true",
        help="only check that both trainers can run (seconds); exit 1 if not",
    )
    args = parser.parse_args()
    if args.check_deps:
        sys.exit(1 if any(check_dependencies().values()) else 0)

    data_dir = Path(args.data_dir)
    if not (data_dir / "train.tsv").is_file():
        sys.exit(f"SST-2 not found in {data_dir} (expected train.tsv, dev.tsv): nothing to benchmark")
    folder = Path(tempfile.mkdtemp(prefix="sft_sst2_"))
    train = write_split(data_dir / "train.tsv", "sentence", args.train_rows, 0, folder / "train.csv")
    dev = write_split(data_dir / "dev.tsv", "content", args.eval_rows, None, folder / "dev.csv")
    # before anything trains: a part that cannot run is named now, with why
    problems = check_dependencies()
    if problems[OURS]:
        args.skip_sft = True
    if any(problems.values()):
        args.skip_overhead = True  # the overhead ratio needs both trainers

    if not args.skip_sft:
        metrics = run_sft(folder, train, dev, args)
        print(f"\nSST-2 dev ({metrics['eval']['num_examples']} rows), SmolLM2-135M-Instruct, label scoring")
        print("| model | accuracy | macro-F1 | ECE |\n|---|---|---|---|")
        for name, key in (
            ("zero-shot", "before"),
            (f"LoRA SFT, {args.train_rows} train rows, 1 epoch", "eval"),
        ):
            m = metrics[key]
            print(f"| {name} | {100 * m['accuracy']:.1f} | {100 * m['f1_macro']:.1f} | {m['ece']:.3f} |")
        train_metrics = metrics["train"]
        print(
            f"training: {train_metrics['train_runtime']:.0f} s ({train_metrics['train_steps_per_second']:.2f} steps/s), "
            f"whole run {metrics['wall_s']:.0f} s"
        )
    if not args.skip_overhead:
        result = overhead(train, args)
        ours, plain = result.values()
        print(
            f"\nstep CPU time, batch {args.batch_size}, {args.rounds} alternating rounds (median over {ours['steps']} steps each)"
        )
        print("| trainer | median step CPU time (ms) | mean train loss |\n|---|---|---|")
        for name, row in result.items():
            print(f"| {name} | {1000 * row['median_s']:.0f} | {row['loss']:.4f} |")
        print(
            f"overhead ratio sft_classify / plain TRL: {ours['median_s'] / plain['median_s']:.3f} (target <= 1.02)"
        )
    sys.exit(integrations.report_not_run(problems))


if __name__ == "__main__":
    main()
