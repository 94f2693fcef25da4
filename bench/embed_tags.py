"""StackOverflow title -> tag retrieval (20 tags): the packaged MiniLM zero-shot vs after a recipe.

    python bench/embed_tags.py [--recipe configs/embed/tag_retrieval_so.yaml] [--data-root ../shared/data]
        [--max-train 18000] [--epochs N] [--select last] [--train-splits train,validation]

Runs ``python -m train.embed --config RECIPE`` (default ``configs/embed/tag_retrieval.yaml``; ``--epochs`` overrides
the recipe's ``num_train_epochs``) on ``stackoverflow_tags/train.jsonl`` (columns ``title`` -> text, ``tag`` ->
tags). ``--select best`` (default) evaluates on ``validation.jsonl`` at every epoch and keeps the best epoch by
recall@1 (the recipe's own ``metric_for_best_model``); ``--select last`` keeps the last epoch without looking at
any held-out data. ``--train-splits train,validation`` refits on the training and validation titles together
(19,000) with the recipe as validated, keeping the last epoch (``--select last``; selection would then look at
titles it trained on, so ``best`` is refused). The zero-shot model and the kept model are then scored on
``test.jsonl``, which training never sees: every distinct title retrieves its tag among the 20 tag names (recall@1, recall@5, NDCG@5, x 100). With
batch 64 and 20 tags nearly every batch repeats tags, so the ID-aware masking is exercised (see the logged
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402
from lorasmith.run_folder import read_recipe  # noqa: E402

METRICS = ("recall@1", "recall@5", "ndcg@5")


def score_on_test(models: list[str], test_file: Path) -> dict[str, dict]:
    """Tag retrieval metrics (x 100) of each model (a name or folder ``Embedder.load`` reads) on ``test_file``,
    read once."""
    from eval.retrieval import load_file_task, run_retrieval
    from lorasmith.encoder import Embedder

    task = load_file_task(str(test_file), "tags", "text=title,tags=tag")
    return {model: run_retrieval(Embedder.load(model, show_progress=False), task, (1, 5, 10)) for model in models}


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
    parser.add_argument(
        "--select",
        choices=["best", "last"],
        default="best",
        help="best: the epoch with the best validation recall@1 (default); last: the last epoch",
    )
    parser.add_argument(
        "--train-splits",
        default="train",
        choices=["train", "train,validation"],
        help="titles trained on (train,validation: refit on both, needs --select last)",
    )
    args = parser.parse_args()
    if args.train_splits != "train" and args.select == "best":
        parser.error("--train-splits train,validation trains on the validation titles: use --select last")
    data = args.data_root / "stackoverflow_tags"
    if not (data / "train.jsonl").is_file():
        print(f"note: {data} not found; nothing to benchmark")
        return 0
    splits = args.train_splits.split(",")
    train_file = data / "train.jsonl"
    if len(splits) > 1:  # one file of both splits, outside the run folder
        train_file = Path(tempfile.mkdtemp(prefix="embed-tags-data-")) / "train_validation.jsonl"
        train_file.write_text("".join((data / f"{split}.jsonl").read_text() for split in splits))
    output_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="embed-tags-"))
    selection = {
        "best": ["--eval_data", str(data / "validation.jsonl"), "--eval_strategy", "epoch", "--save_strategy",
                 "epoch", "--metric_for_best_model", "recall@1", "--load_best_model_at_end", "true"],
        "last": ["--eval_data", "", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end",
                 "false"],
    }[args.select]  # fmt: skip
    command = [
        sys.executable, "-m", "train.embed", "--config", args.recipe, "--train_data", str(train_file),
        "--columns", "text=title,tags=tag", "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
        *selection, "--report_to", "none", "--logging_steps", "5", "--disable_tqdm", "true",
    ]  # fmt: skip
    if args.max_train:
        command += ["--max_train_samples", str(args.max_train)]
    if args.epochs is not None:
        command += ["--num_train_epochs", str(args.epochs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, cwd=REPO, env=env, check=True)

    train = json.loads((output_dir / "metrics.json").read_text())["train"]
    test = score_on_test(["minilm", str(output_dir)], data / "test.jsonl")
    kept = "best validation epoch" if args.select == "best" else "last epoch"
    if len(splits) > 1:
        kept += ", trained on train + validation"
    rows = [
        ["MiniLM zero-shot", *(test["minilm"][m] for m in METRICS)],
        [f"MiniLM trained ({Path(args.recipe).name}, {kept})", *(test[str(output_dir)][m] for m in METRICS)],
    ]
    print(format_table(["model", *METRICS], rows))
    trained = args.max_train or sum(1 for _ in train_file.open())
    epochs = float(read_recipe(output_dir).get("num_train_epochs", 1))
    print(
        f"\n{trained} training titles x {epochs:g} epoch(s) in {train['train_runtime']:.0f} s "
        f"({trained * epochs / train['train_runtime']:.1f} pairs/s); test: "
        f"{int(test['minilm']['num_queries'])} titles, {int(test['minilm']['num_documents'])} tags; run in {output_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
