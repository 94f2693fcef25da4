"""IMDb sentiment: the packaged MiniLM fine-tuned with LoRA + a classification head, against a linear probe.

    python bench/seqcls_imdb.py                       # ../shared/data/imdb, 2 epochs, max_length 256
    python bench/seqcls_imdb.py --epochs 1 --max-length 128

Rows of the table (train_1k -> validation_1k, 500 + 500 balanced reviews each):
- probe: logistic regression (C = 1) on the frozen, mean-pooled, normalized MiniLM embeddings of the same
  reviews at the same max_length — the bar LoRA must beat;
- LoRA: ``train.seq_classify`` on the packaged MiniLM (LoRA on query/key/value/dense, head trained in full);
- the published DistilBERT + LoRA tutorial's figure (10 epochs on shawhin/imdb-truncated, GPU), for reference only:
  another model, another 1k/1k sample, and 10 epochs.
Prints the table and, as the last line, the results as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PUBLISHED_DISTILBERT = {"method": "DistilBERT + LoRA tutorial, 10 epochs (published)", "accuracy": 90.80, "f1": 90.71}


def probe(train: list[dict], validation: list[dict], max_length: int) -> dict:
    """Logistic regression on frozen MiniLM embeddings: accuracy and positive-class F1, x 100."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from lorasmith.encoder import Embedder

    start = time.perf_counter()
    embedder = Embedder.load("minilm", max_length=max_length, show_progress=False)
    x_train = embedder.encode([row["text"] for row in train], batch_size=32).numpy()
    x_validation = embedder.encode([row["text"] for row in validation], batch_size=32).numpy()
    y_train, y_validation = [row["label"] for row in train], [row["label"] for row in validation]
    predicted = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train).predict(x_validation)
    return {
        "method": f"probe: logistic regression on frozen MiniLM (mean pooling, {max_length} tokens)",
        "accuracy": 100 * accuracy_score(y_validation, predicted),
        "f1": 100 * f1_score(y_validation, predicted),
        "seconds": time.perf_counter() - start,
    }


def lora(data_dir: Path, epochs: float, max_length: int, batch_size: int, learning_rate: float) -> dict:
    """``train.seq_classify`` on MiniLM with LoRA; returns the final validation accuracy / F1 x 100."""
    from train.seq_classify import main

    output_dir = Path(tempfile.mkdtemp(prefix="seqcls_imdb_"))
    start = time.perf_counter()
    main(
        [
            "--config",
            str(REPO / "configs/classify/seqcls_quickstart.yaml"),
            "--train_data",
            str(data_dir / "train_1k.jsonl"),
            "--eval_data",
            str(data_dir / "validation_1k.jsonl"),
            "--labels",
            "negative,positive",
            "--output_dir",
            str(output_dir),
            "--max_length",
            str(max_length),
            "--num_train_epochs",
            str(epochs),
            "--per_device_train_batch_size",
            str(batch_size),
            "--learning_rate",
            str(learning_rate),
            "--logging_steps",
            "20",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--export_merged",
            "false",
            "--disable_tqdm",
            "true",
        ]
    )
    seconds = time.perf_counter() - start
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {
        "method": f"LoRA r=8 on MiniLM + head, {epochs:g} epoch(s), {max_length} tokens",
        "accuracy": 100 * metrics["eval"]["accuracy"],
        "f1": 100 * metrics["eval"]["f1"],
        "seconds": seconds,
        "truncated_train_rows": metrics["data"]["train_truncated"],
        "output_dir": str(output_dir),
    }


def read_reviews(path: Path) -> list[dict]:
    """Rows ``{"text", "label"}`` with label 0 = negative, 1 = positive (read as training reads them)."""
    from data_utils import load

    return list(load(path, task="labeled", label_names=["negative", "positive"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "imdb")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--skip-probe", action="store_true")
    args = parser.parse_args()
    if not (args.data_dir / "train_1k.jsonl").is_file():
        sys.exit(f"no IMDb sample at {args.data_dir} (expects train_1k.jsonl / validation_1k.jsonl)")
    train, validation = (
        read_reviews(args.data_dir / "train_1k.jsonl"),
        read_reviews(args.data_dir / "validation_1k.jsonl"),
    )
    rows = [] if args.skip_probe else [probe(train, validation, args.max_length)]
    if rows:
        print(f"probe done: {json.dumps(rows[0])}", flush=True)  # a long LoRA run should not hide it
    rows.append(lora(args.data_dir, args.epochs, args.max_length, args.batch_size, args.learning_rate))
    rows.append(PUBLISHED_DISTILBERT)

    from eval.report import format_table

    print(
        f"\nIMDb train_1k -> validation_1k ({len(train)} / {len(validation)} reviews), CPU threads: "
        f"{__import__('torch').get_num_threads()}"
    )
    print(
        format_table(
            ["method", "accuracy", "F1", "seconds"],
            [[r["method"], r["accuracy"], r["f1"], r.get("seconds", float("nan"))] for r in rows],
        )
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
