"""StackOverflow title -> tag retrieval (20 tags): the packaged MiniLM zero-shot vs after a recipe.

    python bench/embed_tags.py [--recipe configs/embed/tag_retrieval_so.yaml] [--data-root ../shared/data]
        [--max-train 18000] [--epochs N]

Runs ``python -m train.embed --config RECIPE`` (default ``configs/embed/tag_retrieval.yaml``; ``--epochs`` overrides
the recipe's ``num_train_epochs``) on ``stackoverflow_tags/train.jsonl``
(columns ``title`` -> text, ``tag`` -> tags), evaluating on ``test.jsonl`` before and after training: every
distinct title retrieves its tag among the 20 tag names (recall@1, recall@5, NDCG@5, x 100). With batch 64
and 20 tags nearly every batch repeats tags, so the ID-aware masking is exercised (see the logged
``infonce/masked_false_negatives``). Exits 0 with a note when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402

METRICS = ("recall@1", "recall@5", "ndcg@5")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--max-train", type=int, default=None, help="first N training titles (default: all 18,000)"
    )
    parser.add_argument(
        "--recipe",
        default="configs/embed/tag_retrieval.yaml",
        help="train.embed recipe (default tag_retrieval.yaml)",
    )
    parser.add_argument("--epochs", type=float, default=None, help="override the recipe's num_train_epochs")
    parser.add_argument("--work-dir", type=Path, default=None, help="output folder (default: a temp dir)")
    args = parser.parse_args()
    data = args.data_root / "stackoverflow_tags"
    if not (data / "train.jsonl").is_file():
        print(f"note: {data} not found; nothing to benchmark")
        return 0
    output_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="embed-tags-"))
    command = [
        sys.executable, "-m", "train.embed", "--config", args.recipe,
        "--train_data", str(data / "train.jsonl"), "--eval_data", str(data / "test.jsonl"),
        "--columns", "text=title,tags=tag", "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
        "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--report_to", "none", "--logging_steps", "5", "--disable_tqdm", "true",
    ]  # fmt: skip
    if args.max_train:
        command += ["--max_train_samples", str(args.max_train)]
    if args.epochs is not None:
        command += ["--num_train_epochs", str(args.epochs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, cwd=REPO, env=env, check=True)

    metrics = json.loads((output_dir / "metrics.json").read_text())
    train = metrics["train"]
    rows = [
        ["MiniLM zero-shot", *(metrics["before"][m] for m in METRICS)],
        [f"MiniLM trained ({Path(args.recipe).name})", *(metrics["after"][m] for m in METRICS)],
    ]
    print(format_table(["model", *METRICS], rows))
    trained = args.max_train or 18000
    epochs = float(yaml.safe_load((output_dir / "recipe.yaml").read_text()).get("num_train_epochs", 1))
    print(
        f"\n{trained} training titles x {epochs:g} epoch(s) in {train['train_runtime']:.0f} s "
        f"({trained * epochs / train['train_runtime']:.1f} pairs/s); test: "
        f"{int(metrics['after']['num_queries'])} titles, {int(metrics['after']['num_documents'])} tags; run in {output_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
