"""Contrastive training throughput: train.embed (packed forwards, or length-sorted chunks with ``--packing false``)
vs sentence-transformers' trainer on the same run, and train.embed's framework overhead over a bare forward +
backward loop. Prints one table per dataset.

    python bench/embed_throughput.py [--data-root ../shared/data] [--steps 150] [--mini-batch-size 32] [--repeats 1]
        [--packing true] [--runs stsb stackoverflow_tags] [--smoke]

Runs (packaged MiniLM, LoRA r=16 alpha 32 dropout 0.05 on query/key/value/dense, lr 2e-4, seed 42, fp32, CPU):
- STS-B train, CoSENT (temperature 0.05), batch 16, max length 128;
- StackOverflow tags train (title -> tag), InfoNCE (sentence-transformers: MultipleNegativesRankingLoss on
  (title, tag) pairs), batch 32, max length 64.
train.embed runs with its defaults: packed forwards (``--packing false``: length-sorted padded chunks) of at most
``--mini-batch-size`` x max_length token slots.
Each trainer trains ``--steps`` optimizer steps on ``steps x batch`` rows drawn at random (seed 0) from the whole
train set, in a random order; pairs/s = rows / the trainer's ``train_runtime``. Padding share = padded token slots
/ all slots the encoder runs on: train.embed's from its training log (``real_tokens`` / ``padded_tokens`` summed
over the run), sentence-transformers' computed on the same batches in its layout (each column padded to its
longest, i.e. train.embed's ``mini_batch_size: 0``).
Overhead: train.embed reads the rows in order (``train_sampling_strategy: sequential``) and a bare PyTorch loop
(the same EmbeddingModel, collator, objective and AdamW; no Trainer) runs the very same batches in this process;
overhead = train.embed's seconds for steps 11-N (its logged windows of 10 steps: data, forward, backward,
optimizer; the first window, with the one-time warm-up, left out) / the bare loop's seconds for the same steps
(batches collated before the clock starts). The targets are printed next to the numbers.
``--repeats R`` runs the three R times in turn (train.embed, bare loop, sentence-transformers, again...) and prints
the medians, with the speed ratio of each repeat: on a shared machine identical runs differ by +-10 %, so the
median of paired ratios is the number to quote.

Dependencies are checked first (``lorasmith.integrations.check_comparisons``, as bench/embed_stsb.py); a trainer
that cannot run is named with the reason and the rest still runs. ``--smoke`` runs 20 steps (two logging windows;
a minute; the numbers mean nothing). Run it alone on a quiet machine. Exits 0 with a note when the data folder is
absent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embed_stsb import LORA, sentence_transformers_trainer_ready  # noqa: E402

from eval.report import format_table  # noqa: E402
from lorasmith import integrations  # noqa: E402
from lorasmith.embedded_models import embedded_model_files  # noqa: E402

TARGETS = {"padding share": "<= 0.10", "vs sentence-transformers": ">= 1.3x", "overhead": "<= 1.05x"}
OURS, THEIRS = "train.embed", "sentence-transformers"
LOG_EVERY = 10  # train.embed's logging window, in steps
RUNS = {  # name -> (task, loss, batch, max_length)
    "stsb": ("scored_pairs", "cosent", 16, 128),
    "stackoverflow_tags": ("tags", "infonce", 32, 64),
}


def load_rows(data_root: Path, name: str, limit: int) -> list[dict]:
    """``limit`` training rows of a run drawn at random (seed 0) from its whole train set, in train.embed's schema
    and in random order: batches with the dataset's spread of lengths (STS-B's first rows are all short captions)."""
    if name == "stsb":
        from eval.sts import load_sts_data

        rows = [dict(row) for row in load_sts_data(str(data_root / "stsb" / "raw" / "sts-train.csv"))]
    else:
        with open(data_root / "stackoverflow_tags" / "train.jsonl") as stream:
            rows = [{"text": row["title"], "tags": [row["tag"]]} for row in map(json.loads, stream)]
    return [rows[i] for i in random.Random(0).sample(range(len(rows)), min(limit, len(rows)))]


def train_ours(name: str, rows: list[dict], work: Path, steps: int, mini_batch_size: int, packing: bool) -> dict:
    """``python -m train.embed`` on ``rows`` in order; its train_runtime, padding share (real / padded tokens summed
    over the logged windows) and the seconds of its steps after the first logging window (``LOG_EVERY`` steps)."""
    task, loss, batch, max_length = RUNS[name]
    data = work / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [
        sys.executable, "-m", "train.embed", "--model_name_or_path", "minilm", "--task", task, "--train_data", str(data),
        "--output_dir", str(work / f"ours-{name}"), "--overwrite_output_dir", "true", "--use_peft", "true",
        "--loss", f"{{{loss}: {{temperature: 0.05}}}}", "--lora_r", str(LORA["r"]), "--lora_alpha", str(LORA["lora_alpha"]),
        "--lora_dropout", str(LORA["lora_dropout"]), "--lora_target_modules", *LORA["target_modules"],
        "--learning_rate", "2e-4", "--per_device_train_batch_size", str(batch), "--max_length", str(max_length),
        "--max_steps", str(steps), "--seed", "42", "--mini_batch_size", str(mini_batch_size), "--eval_data", "",
        "--packing", str(packing).lower(),
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--export_merged", "false",
        "--logging_steps", str(LOG_EVERY), "--train_sampling_strategy", "sequential", "--report_to", "none",
        "--disable_tqdm", "true", "--bf16", "false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    logged = {key: [float(x) for x in re.findall(rf"'{key}': '?([0-9.e+-]+)", result.stdout)]
              for key in ("real_tokens", "padded_tokens", "pairs_per_second")}  # fmt: skip
    if len(logged["pairs_per_second"]) != steps // LOG_EVERY:
        raise RuntimeError(f"expected {steps // LOG_EVERY} logged windows in train.embed's output:\n{result.stdout}")
    runtime = json.loads((work / f"ours-{name}" / "metrics.json").read_text())["train"]["train_runtime"]
    return {
        "runtime": runtime,
        "padding_share": 1 - sum(logged["real_tokens"]) / sum(logged["padded_tokens"]),
        "steady_seconds": sum(LOG_EVERY * batch / rate for rate in logged["pairs_per_second"][1:]),
    }


def train_sentence_transformers(name: str, rows: list[dict], work: Path, steps: int) -> float:
    """sentence-transformers' trainer on the same rows / LoRA / loss / batch; its train_runtime."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MultipleNegativesRankingLoss

    _, _, batch, max_length = RUNS[name]
    model = SentenceTransformer(str(embedded_model_files("minilm")[0]), device="cpu")
    model.max_seq_length = max_length
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, **LORA))
    if name == "stsb":
        dataset = Dataset.from_list(rows)
        loss = CoSENTLoss(model, scale=20.0)
    else:
        dataset = Dataset.from_list([{"anchor": r["text"], "positive": r["tags"][0]} for r in rows])
        loss = MultipleNegativesRankingLoss(model, scale=20.0)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / f"st-{name}"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-4,
        seed=42, use_cpu=True, bf16=False, save_strategy="no", logging_steps=50, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    return trainer.train().metrics["train_runtime"]


def role_padding_share(name: str, rows: list[dict]) -> float:
    """Padding share with every role padded to its longest per batch (sentence-transformers' layout)."""
    batches = list(collated(name, rows, mini_batch_size=0, packing=False))
    from train.embed.collator import token_slots

    real = sum(int(b["real_tokens"]) for b, _ in batches)
    return 1 - real / sum(token_slots(chunks) for _, chunks in batches)


def collated(name: str, rows: list[dict], mini_batch_size: int, packing: bool):
    """(batch, its chunks) of the run's steps in order, cut as train.embed cuts them (one chunker for the run)."""
    from transformers import AutoTokenizer

    from train.embed.collator import ContrastiveCollator
    from train.embed.tasks import EMBED_TASKS

    task, _, batch, max_length = RUNS[name]
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_files("minilm")[0]))
    collator = ContrastiveCollator(
        tokenizer, EMBED_TASKS[task], max_length, mini_batch_size=mini_batch_size, packing=packing
    )
    chunker = collator.chunker()
    for start in range(0, len(rows) - batch + 1, batch):
        inputs = collator(rows[start : start + batch])
        yield inputs, collator.chunks(inputs, chunker)


def bare_loop_seconds(name: str, rows: list[dict], mini_batch_size: int, packing: bool) -> float:
    """Seconds of a bare PyTorch loop over the same collated batches (forward, objective, backward, AdamW step),
    steps after the first ``LOG_EVERY`` (the warm-up train.embed's measure leaves out too)."""
    import torch

    from train.common.args import ModelArguments
    from train.embed.loss_spec import build_objective
    from train.embed.model import build_embedding_model, in_text_order
    from train.embed.tasks import EMBED_TASKS
    from train.embed.trainer import embedded_batch

    task_name, loss, _, max_length = RUNS[name]
    task = EMBED_TASKS[task_name]
    torch.manual_seed(42)
    args = ModelArguments(model_name_or_path="minilm", use_peft=True, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                          lora_dropout=LORA["lora_dropout"], lora_target_modules=LORA["target_modules"],
                          max_length=max_length)  # fmt: skip
    model = build_embedding_model(args, "mean", True).train()
    objective = build_objective(task, {loss: {"temperature": 0.05}})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batches = list(collated(name, rows, mini_batch_size, packing))
    for step, (batch, chunks) in enumerate(batches):
        if step == LOG_EVERY:
            start = time.perf_counter()
        b = batch["anchor_ids"].shape[0]
        embeddings = in_text_order(model(chunks), batch["text_order"])
        objective(embedded_batch(task, embeddings[:b], embeddings[b:], batch)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure_once(name: str, rows: list[dict], work: Path, steps: int, mini_batch_size: int, packing: bool,
                 problems) -> dict:
    """One repeat of the runnable trainers in turn: seconds (``runtime``: train.embed's train_runtime, ``steady``:
    its steps 11-N, ``bare``: the bare loop's, ``theirs``: sentence-transformers') and train.embed's padding."""
    run = {}
    if not problems[OURS]:
        ours = train_ours(name, rows, work, steps, mini_batch_size, packing)
        run.update(runtime=ours["runtime"], steady=ours["steady_seconds"], padding_share=ours["padding_share"])
        run["bare"] = bare_loop_seconds(name, rows, mini_batch_size, packing)
    if not problems[THEIRS]:
        run["theirs"] = train_sentence_transformers(name, rows, work, steps)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per trainer and run")
    parser.add_argument("--mini-batch-size", type=int, default=32, help="train.embed's most texts per forward")
    parser.add_argument("--packing", choices=("true", "false"), default="true", help="train.embed's packing")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each trainer, in turn; medians are printed")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help=f"{2 * LOG_EVERY} steps: checks the script runs"
    )
    args = parser.parse_args()
    if not (args.data_root / "stsb").is_dir():
        print(f"note: {args.data_root} not found; nothing to benchmark")
        return 0
    steps = 2 * LOG_EVERY if args.smoke else args.steps
    if steps % LOG_EVERY or steps < 2 * LOG_EVERY:
        parser.error(f"--steps: a multiple of {LOG_EVERY} (train.embed's logging window), at least {2 * LOG_EVERY}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    problems = integrations.check_comparisons(
        {
            OURS: [integrations.check_peft_model, integrations.check_trainer],
            THEIRS: [sentence_transformers_trainer_ready],
        }
    )
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="embed-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in args.runs:
        rows = load_rows(args.data_root, name, steps * RUNS[name][2])
        packing = args.packing == "true"
        runs = [measure_once(name, rows, work, steps, args.mini_batch_size, packing, problems)
                for _ in range(args.repeats)]  # fmt: skip
        table, ours = [], None
        if not problems[OURS]:
            ours = {key: statistics.median(run[key] for run in runs) for key in ("runtime", "steady", "bare")}
            steady_rows = len(rows) - LOG_EVERY * RUNS[name][2]
            mode = f"mini_batch_size {args.mini_batch_size}" + (", packing" if packing else "")
            table.append([f"{OURS} ({mode})", len(rows) / ours["runtime"],
                          runs[0]["padding_share"], "",
                          f"{statistics.median(run['steady'] / run['bare'] for run in runs):.2f}x"])  # fmt: skip
            table.append(["bare forward+backward, same batches (steps 11-N)", steady_rows / ours["bare"], "", "",
                          "1.00x"])  # fmt: skip
        if not problems[THEIRS]:
            theirs = statistics.median(run["theirs"] for run in runs)
            table.append([THEIRS, len(rows) / theirs, role_padding_share(name, rows), "1.00x", ""])
            if ours:
                ratios = [run["theirs"] / run["runtime"] for run in runs]
                table[0][3] = f"{statistics.median(ratios):.2f}x"
        task, loss, batch, max_length = RUNS[name]
        print(
            f"\n{name}: {task}, {loss}, batch {batch}, max_length {max_length}, {steps} steps, {len(rows)} rows"
        )
        print(
            format_table(
                ["trainer", "pairs/s", "padding share", "vs sentence-transformers", "overhead"], table
            )
        )
        if ours and not problems[THEIRS] and args.repeats > 1:
            print("vs sentence-transformers per repeat: " + ", ".join(f"{ratio:.2f}x" for ratio in ratios))
        print("targets: " + ", ".join(f"{key} {value}" for key, value in TARGETS.items()), flush=True)
    return integrations.report_not_run(problems)


if __name__ == "__main__":
    raise SystemExit(main())
