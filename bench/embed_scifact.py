"""SciFact (BEIR): the packaged MiniLM as-is, + LoRA on the train pairs (in-batch negatives), + LoRA on pairs with
hard negatives mined by ``train.mine``; NDCG@10 of the 300 test queries over the 5,183-document corpus.

    python bench/embed_scifact.py --output-dir DIR [--data-root ../shared/data] [--epochs 3] [--matryoshka] [--reuse]

Data: train queries + ``qrels/train.tsv`` -> (query, document) pairs, documents ``title + " " + text`` as BEIR
evaluates them. A seeded 15 % of the train queries is held out (``dev``): never trained on, it picks the best run
(NDCG@10 over the full corpus). The test queries and qrels are used for the reported test column only, never for
training, mining or selection. Mining runs ``python -m train.mine`` with the as-is model on the training pairs
against the whole corpus (known positives are never negatives; ranks 10-100, relative margin 0.05, 1 negative per
query: with 3, a step of 32 queries x 5 texts of 256 tokens kept 24 GiB of activations and was killed here; the
gradient cache fits them, as ``bench/embed_matryoshka.py --mined 3`` runs them).
Known property of the data: 181 of the 283 documents relevant to test queries are also relevant to train queries
(196 of 300 test queries have one), so training against the corpus (mined negatives) also teaches which documents
are cited at all. Every run is an ordinary ``train.embed`` output folder in ``DIR/<run>``; the best by dev NDCG@10
is copied to ``DIR/final``. Prints one table (dev and test NDCG@10 / recall@10 / recall@100). Exits 0 with a note when the data
folder is absent. ``bench/embed_matryoshka.py`` reuses the data preparation and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402
from eval.retrieval import RetrievalTask, load_beir_task, run_retrieval  # noqa: E402
from lorasmith.encoder import Embedder  # noqa: E402

METRICS = ("ndcg@10", "recall@10", "recall@100")
DEV_SHARE, SPLIT_SEED = 0.15, 13
# LoRA recipe shared by both trained runs (configs/embed/quickstart-like, longer texts)
TRAIN_FLAGS = [
    "--model_name_or_path", "minilm", "--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32",
    "--lora_dropout", "0.05", "--lora_target_modules", "query", "key", "value", "dense", "--max_length", "256",
    "--learning_rate", "2e-4", "--warmup_steps", "0.1", "--per_device_train_batch_size", "32",
    "--loss", "{infonce: {temperature: 0.05}}", "--eval_strategy", "no", "--save_strategy", "no",
    "--load_best_model_at_end", "false", "--eval_before_training", "false", "--report_to", "none",
    "--logging_steps", "10", "--disable_tqdm", "true", "--seed", "42", "--overwrite_output_dir", "true",
]  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare(data: Path, work: Path) -> dict:
    """Files and tasks of the benchmark in ``work``: ``train_pairs.jsonl`` (train queries minus dev), ``corpus.jsonl``
    (``text`` = title + text), the dev task (held-out train queries over the corpus) and the test task."""
    work.mkdir(parents=True, exist_ok=True)
    train_task = load_beir_task(
        str(data / "corpus.jsonl"), str(data / "queries.jsonl"), str(data / "qrels/train.tsv")
    )
    test_task = load_beir_task(
        str(data / "corpus.jsonl"), str(data / "queries.jsonl"), str(data / "qrels/test.tsv")
    )
    assert not set(train_task.query_ids) & set(test_task.query_ids), "train and test queries overlap"
    ids = sorted(train_task.query_ids)
    random.Random(SPLIT_SEED).shuffle(ids)
    dev_ids = set(ids[: round(len(ids) * DEV_SHARE)])
    pairs = relevant_pairs(train_task, skip=dev_ids)
    write_jsonl(work / "train_pairs.jsonl", pairs)
    write_jsonl(work / "corpus.jsonl", [{"text": text} for text in train_task.corpus_texts])
    keep = [i for i, query in enumerate(train_task.query_ids) if query in dev_ids]
    dev_task = RetrievalTask(
        [train_task.query_ids[i] for i in keep],
        [train_task.query_texts[i] for i in keep],
        train_task.corpus_ids,
        train_task.corpus_texts,
        {train_task.query_ids[i]: train_task.qrels[train_task.query_ids[i]] for i in keep},
    )
    return {"pairs": work / "train_pairs.jsonl", "corpus": work / "corpus.jsonl", "dev": dev_task, "test": test_task,
            "num_pairs": len(pairs)}  # fmt: skip


def relevant_pairs(task: RetrievalTask, skip: set[str] = frozenset()) -> list[dict]:
    """``{"anchor": query text, "positive": document text}`` for every document graded > 0 for a query of ``task``
    (queries in ``skip`` left out), in query then qrels order."""
    documents = dict(zip(task.corpus_ids, task.corpus_texts, strict=True))
    return [
        {"anchor": text, "positive": documents[doc]}
        for query, text in zip(task.query_ids, task.query_texts, strict=True)
        if query not in skip
        for doc, grade in task.qrels[query].items()
        if grade > 0
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def evaluate(model: str, task: RetrievalTask, truncate_dim: int | None = None) -> dict:
    """NDCG@10 / recall@10 / recall@100 (x 100) of ``model`` on ``task`` (optionally at a Matryoshka width)."""
    embedder = Embedder.load(model, show_progress=False, truncate_dim=truncate_dim)
    result = run_retrieval(embedder, task, ks=(10, 100), batch_size=64)
    return {metric: float(result[metric]) for metric in METRICS}


def finished_run(folder: Path) -> bool:
    """Whether ``folder`` holds a finished train.embed run (its ``metrics.json``); says so when it does."""
    if (folder / "metrics.json").is_file():
        print(f"reusing the finished run in {folder}", flush=True)
        return True
    return False


def train(
    output_dir: Path, task: str, train_file: Path, epochs: float, *extra: str, reuse: bool = False
) -> Path:
    """``python -m train.embed`` with the shared LoRA flags; returns the run folder. ``reuse``: a folder that
    already holds a finished run (its ``metrics.json``) is returned as it is."""
    if reuse and finished_run(output_dir):
        return output_dir
    command = [sys.executable, "-m", "train.embed", "--task", task, "--train_data", str(train_file),
               "--output_dir", str(output_dir), "--num_train_epochs", str(epochs), *TRAIN_FLAGS, *extra]  # fmt: skip
    subprocess.run(command, cwd=REPO, env=ENV, check=True)
    return output_dir


def mine(
    files: dict, output: Path, model: str = "minilm", num_negatives: int = 1, reuse: bool = False,
    extra: tuple[str, ...] = (),
) -> Path:
    """``num_negatives`` hard negatives per training pair from the whole corpus (never the dev or test queries).
    ``reuse``: an existing ``output`` is kept (train.mine writes it atomically, so it is whole), as the finished
    runs trained on it are. ``extra``: further train.mine flags (e.g. ``--max_length 64``)."""
    if reuse and output.is_file():
        return output
    command = [sys.executable, "-m", "train.mine", "--model", model, "--pairs", str(files["pairs"]),
               "--corpus", str(files["corpus"]), "--range-min", "10", "--range-max", "100",
               "--relative-margin", "0.05", "--num-negatives", str(num_negatives), "--output", str(output),
               "--overwrite", "--no-progress", *extra]  # fmt: skip
    subprocess.run(command, cwd=REPO, env=ENV, check=True)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="runs, mined file and final/ go here")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs of each trained run (default 3)")
    parser.add_argument(
        "--matryoshka", action="store_true", help="train both runs with matryoshka_dims 384..64"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the mined file and the trained runs already finished in --output-dir (no retraining)",
    )
    args = parser.parse_args()
    data = args.data_root / "scifact"
    if not (data / "corpus.jsonl").is_file():
        print(f"note: {data} not found; nothing to benchmark")
        return 0
    out = args.output_dir
    files = prepare(data, out / "data")
    extra = ["--matryoshka_dims", "384", "256", "128", "64"] if args.matryoshka else []

    runs = {"MiniLM as-is": "minilm"}
    runs["+ LoRA, pairs (in-batch negatives)"] = str(
        train(out / "lora_pairs", "pairs", files["pairs"], args.epochs, *extra, reuse=args.reuse)
    )
    mined = mine(files, out / "data" / "mined.jsonl", reuse=args.reuse)
    runs["+ LoRA, pairs + mined hard negatives"] = str(
        train(out / "lora_mined", "triplets", mined, args.epochs, *extra, reuse=args.reuse)
    )

    results = {
        name: (evaluate(model, files["dev"]), evaluate(model, files["test"])) for name, model in runs.items()
    }
    trained = [name for name in runs if runs[name] != "minilm"]
    best = max(trained, key=lambda name: results[name][0]["ndcg@10"])  # chosen on the held-out TRAIN queries
    if (out / "final").exists():
        shutil.rmtree(out / "final")
    shutil.copytree(runs[best], out / "final")

    headers = ["model", *(f"dev {m}" for m in METRICS), *(f"test {m}" for m in METRICS)]
    rows = [
        [name + (" (final)" if name == best else ""), *dev.values(), *test.values()]
        for name, (dev, test) in results.items()
    ]
    print(format_table(headers, rows))
    print(
        f"\n{files['num_pairs']} training pairs, {len(files['dev'].query_ids)} held-out train queries (dev, selection), "
        f"{len(files['test'].query_ids)} test queries, {len(files['test'].corpus_ids)} documents; "
        f"{args.epochs:g} epoch(s); final = {best} -> {out / 'final'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
