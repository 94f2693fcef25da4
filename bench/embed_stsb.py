"""STS-B: the packaged MiniLM + LoRA trained with CoSENT / AnglE by ``train.embed`` and by sentence-transformers'
own trainer (same loss, hyper-parameters, data and evaluation), test Spearman before/after and train pairs/s.

    python bench/embed_stsb.py [--data-root ../shared/data] [--epochs 1] [--max-train 5749] [--losses cosent angle]

Both trainers get: LoRA r=16, alpha 32, dropout 0.05 on query/key/value/dense, lr 2e-4 linear with 10 % warm-up,
batch 16, max length 128, seed 42, fp32 on CPU, loss temperature 0.05 (= scale 20). The test set is the raw
STS-B release read by ``eval.sts`` (Spearman x 100 of cosines; zero-shot must be 82.03). pairs/s = training
pairs x epochs / the trainer's ``train_runtime`` (optimizer steps included, evaluation excluded).
sentence-transformers is a benchmark-only dependency. Exits 0 with a note when the data folder is absent.

Dependencies are checked FIRST (``lorasmith.integrations``: LoRA through peft for ours, sentence-transformers'
``add_adapter`` on the packaged MiniLM and its trainer for theirs): a trainer that cannot run is reported with the
reason (e.g. the incompatible transformers + peft pair) before anything trains, the other one still runs, and the
exit code is 1. ``--check-deps`` runs only these checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402
from eval.sts import evaluate_sts, load_sts_data  # noqa: E402
from lorasmith import integrations  # noqa: E402
from lorasmith.embedded_models import embedded_model_files  # noqa: E402
from lorasmith.encoder import Embedder  # noqa: E402

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["query", "key", "value", "dense"]}
TRAINING = {
    "learning_rate": 2e-4,
    "batch": 16,
    "warmup": 0.1,
    "max_length": 128,
    "seed": 42,
    "temperature": 0.05,
}


def write_jsonl(dataset, path: Path) -> str:
    """STS-B split (sentence1, sentence2, score in [0, 1]) as JSON lines for train.embed (outside the repo)."""
    dataset.to_json(str(path), lines=True)
    return str(path)


def train_ours(loss: str, train_file: str, output_dir: Path, epochs: float) -> dict:
    """``python -m train.embed`` with configs/embed/sts_cosent.yaml and the shared hyper-parameters."""
    command = [
        sys.executable, "-m", "train.embed", "--config", "configs/embed/sts_cosent.yaml",
        "--train_data", train_file, "--eval_data", "", "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
        "--loss", f"{{{loss}: {{temperature: {TRAINING['temperature']}}}}}",
        "--lora_r", str(LORA["r"]), "--lora_alpha", str(LORA["lora_alpha"]), "--lora_dropout", str(LORA["lora_dropout"]),
        "--lora_target_modules", *LORA["target_modules"], "--learning_rate", str(TRAINING["learning_rate"]),
        "--per_device_train_batch_size", str(TRAINING["batch"]), "--warmup_steps", str(TRAINING["warmup"]),
        "--max_length", str(TRAINING["max_length"]), "--seed", str(TRAINING["seed"]), "--num_train_epochs", str(epochs),
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--logging_steps", "50", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return json.loads((output_dir / "metrics.json").read_text())["train"]


def train_sentence_transformers(loss: str, train_dataset, output_dir: Path, epochs: float):
    """sentence-transformers' trainer, same LoRA / loss / schedule; returns (model, train metrics)."""
    from peft import LoraConfig, TaskType
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss

    model = SentenceTransformer(str(embedded_model_files("minilm")[0]), device="cpu")
    model.max_seq_length = TRAINING["max_length"]
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, **LORA))
    loss_class = {"cosent": CoSENTLoss, "angle": AnglELoss}[loss]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=TRAINING["batch"],
        learning_rate=TRAINING["learning_rate"], warmup_steps=TRAINING["warmup"], seed=TRAINING["seed"],
        use_cpu=True, bf16=False, save_strategy="no", logging_steps=50, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset,
        loss=loss_class(model, scale=1 / TRAINING["temperature"]),
    )  # fmt: skip
    return model, trainer.train().metrics


def sentence_transformers_trainer_ready() -> None:
    """What ``train_sentence_transformers`` needs: the packaged MiniLM loads in sentence-transformers and takes
    this LoRA through ``add_adapter``; the trainer and both losses import."""
    integrations.check_sentence_transformers(embedded_model_files("minilm")[0], lora=LORA["target_modules"])
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: F401
    from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss  # noqa: F401


OURS, THEIRS = "train.embed", "sentence-transformers"


def check_dependencies() -> dict[str, str | None]:
    """Per trainer of the table: None when it can run, else why not (printed)."""
    return integrations.check_comparisons(
        {
            OURS: [integrations.check_peft_model, integrations.check_trainer],
            THEIRS: [sentence_transformers_trainer_ready],
        }
    )


def spearman_of(model_or_folder, test_file: str) -> float:
    """STS-B test Spearman x 100 through eval.sts (an output folder, or an in-memory SentenceTransformer)."""
    if isinstance(model_or_folder, (str, Path)):
        embedder = Embedder.load(str(model_or_folder), device="cpu", show_progress=False)
    else:  # the transformer with its LoRA layers active, pooled like the folder's 1_Pooling (mean, normalized)
        embedder = Embedder.from_model(
            model_or_folder[0].auto_model,
            model_or_folder.tokenizer,
            "mean",
            True,
            TRAINING["max_length"],
            show_progress=False,
        )
    return evaluate_sts(embedder, test_file)["spearman"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--max-train", type=int, default=None, help="first N training pairs (default: all 5,749)"
    )
    parser.add_argument("--losses", nargs="+", default=["cosent", "angle"], choices=["cosent", "angle"])
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where runs are written (default: a temp dir)"
    )
    parser.add_argument(
        "--check-deps",
        action="store_true",
        help="only check that both trainers can run (seconds); exit 1 if not",
    )
    args = parser.parse_args()
    if args.check_deps:
        return 0 if not any(check_dependencies().values()) else 1
    stsb = args.data_root / "stsb" / "raw"
    if not (stsb / "sts-train.csv").is_file():
        print(f"note: {stsb} not found; nothing to benchmark")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # before anything trains: a trainer that cannot run is named now, with why
    problems = check_dependencies()
    if all(problems.values()):
        return 1
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="embed-stsb-"))
    work.mkdir(parents=True, exist_ok=True)
    train = load_sts_data(str(stsb / "sts-train.csv"))
    if args.max_train:
        train = train.select(range(min(args.max_train, len(train))))
    test_file = str(stsb / "sts-test.csv")
    train_file = write_jsonl(train, work / "sts-train.jsonl")
    pairs = len(train) * args.epochs

    zero_shot = spearman_of("minilm", test_file)
    rows = []
    for loss in args.losses:
        if not problems[OURS]:
            ours = train_ours(loss, train_file, work / f"ours-{loss}", args.epochs)
            rows.append([OURS, loss, zero_shot, spearman_of(work / f"ours-{loss}", test_file),
                         pairs / ours["train_runtime"]])  # fmt: skip
        if not problems[THEIRS]:
            st_model, st_metrics = train_sentence_transformers(loss, train, work / f"st-{loss}", args.epochs)
            rows.append([THEIRS, loss, zero_shot, spearman_of(st_model, test_file),
                         pairs / st_metrics["train_runtime"]])  # fmt: skip
        print(
            format_table(["trainer", "loss", "spearman before", "spearman after", "train pairs/s"], rows),
            flush=True,
        )
    print(f"\nSTS-B: {len(train)} train pairs x {args.epochs:g} epoch(s), test 1,379 pairs; runs in {work}")
    return integrations.report_not_run(problems)


if __name__ == "__main__":
    raise SystemExit(main())
