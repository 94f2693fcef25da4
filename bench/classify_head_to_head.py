"""Which way to classify with LoRA wins, on which data, at what cost: four approaches on the same split, same metrics.

    python bench/classify_head_to_head.py                                  # everything (hours on CPU; run alone)
    python bench/classify_head_to_head.py --datasets sst2 --approaches a,b # a piece
    python bench/classify_head_to_head.py --smoke                          # every cell on a tiny subset (minutes)

Approaches (b, c, d train with the real entrypoints and the shipped recipes; only data and output change):
- a: MiniLM frozen + logistic regression (C = 1) on its mean-pooled embeddings (``lorasmith.encoder.Embedder``, the
  machinery of ``eval.probe``), texts cut at the dataset's max_length;
- b: MiniLM + LoRA + classification head, ``train.seq_classify`` with ``configs/classify/seqcls_minilm_imdb.yaml``;
- c: SmolLM2-135M + LoRA + classification head, ``train.seq_classify`` with ``configs/classify/seqcls_smollm2_imdb.yaml``;
- d: SmolLM2-135M + LoRA answering with a label, ``train.sft_classify`` with ``configs/classify/sft_smollm2_sst2.yaml``,
  scored by label likelihood.

Datasets (``../shared/data``): SST-2, 2,000 training rows sampled with seed 0 -> the full dev set (872); IMDb
train_1k -> validation_1k (reviews: head_tail at max_length 256, or the recipe's own max_length when it is larger
(the MiniLM recipe reads 512), except a recipe with ``long_documents: chunks``, which reads whole reviews as windows). Training never sees the evaluation rows
(no evaluation during training, no best-checkpoint selection): they are the test set here.

Metrics, identical for every cell (``eval.metrics.classification.classification_metrics`` on the predictions of the
saved model reloaded by ``lorasmith.classifiers.load_classifier``, the probe's in memory): accuracy, macro-F1, ECE
(15 bins), train seconds (the Trainer's train_runtime; the probe: embedding the training texts + the fit),
predict seconds per 1,000 texts (reloaded model, ``predict_proba`` on the evaluation texts), trainable parameters.
Prints one table, which approach wins each dataset, and the results as one JSON object (also ``--output FILE``).
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

DATA = REPO.parent / "shared" / "data"
LABELS = ["negative", "positive"]  # label id 0 / 1 in both datasets


def dataset_files(root: Path) -> dict:
    """name: (train file, its text column, eval file, its text column, max_length, truncation for trained models)."""
    return {
        "sst2": (root / "sst2" / "train.tsv", "sentence", root / "sst2" / "dev.tsv", "content", 128, "end"),
        "imdb": (root / "imdb" / "train_1k.jsonl", "text", root / "imdb" / "validation_1k.jsonl", "text", 256, "head_tail"),
    }


DATASETS = dataset_files(DATA)
APPROACHES = {
    "a": "MiniLM frozen + logistic probe",
    "b": "MiniLM + LoRA + head",
    "c": "SmolLM2-135M + LoRA + head",
    "d": "SmolLM2-135M + LoRA, label answer",
}
RECIPES = {
    "b": ("train.seq_classify", "configs/classify/seqcls_minilm_imdb.yaml"),
    "c": ("train.seq_classify", "configs/classify/seqcls_smollm2_imdb.yaml"),
    "d": ("train.sft_classify", "configs/classify/sft_smollm2_sst2.yaml"),
}
SMOKE_ROWS, SMOKE_STEPS = 24, 2


def write_split(source: Path, text_column: str, rows: int | None, seed: int, target: Path) -> list[dict]:
    """Read ``source`` with ``data_utils.load`` (label ids 0/1 -> LABELS), keep ``rows`` rows sampled with ``seed``
    (None: every row, in file order) and write them to ``target`` as jsonl ``{"text", "label"}``."""
    from data_utils import load

    dataset = load(source, task="labeled", columns={"text": text_column}, label_names=LABELS)
    if rows is not None and rows < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(rows))
    records = [{"text": row["text"], "label": LABELS[row["label"]]} for row in dataset]
    target.write_text("".join(json.dumps(record) + "\n" for record in records))
    return records


def score(gold: list[str], probabilities) -> dict:
    """accuracy, macro-F1 and ECE (x 100) of (N, 2) probabilities against gold label names."""
    import numpy as np

    from eval.metrics.classification import classification_metrics

    probabilities = np.asarray(probabilities, dtype=np.float64)
    ids = np.asarray([LABELS.index(label) for label in gold])
    metrics = classification_metrics(ids, probabilities.argmax(axis=1), LABELS, probabilities)
    return {key: 100 * metrics[key] for key in ("accuracy", "f1_macro", "ece")}


def run_probe(train: list[dict], evaluation: list[dict], max_length: int) -> dict:
    """(a) logistic regression on frozen MiniLM embeddings."""
    from sklearn.linear_model import LogisticRegression

    from lorasmith.encoder import Embedder

    embedder = Embedder.load("minilm", max_length=max_length, show_progress=False)
    start = time.perf_counter()
    features = embedder.encode([row["text"] for row in train], batch_size=32).numpy()
    model = LogisticRegression(C=1.0, max_iter=2000).fit(features, [row["label"] for row in train])
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    probabilities = model.predict_proba(
        embedder.encode([row["text"] for row in evaluation], batch_size=32).numpy()
    )
    predict_s = time.perf_counter() - start
    assert list(model.classes_) == LABELS  # columns of predict_proba in LABELS order
    return {
        **score([row["label"] for row in evaluation], probabilities),
        "train_s": train_s,
        "predict_s_per_1k": 1000 * predict_s / len(evaluation),
        "trainable_parameters": int(model.coef_.size + model.intercept_.size),
        "settings": f"C=1, mean pooling, {max_length} tokens (end cut)",
    }


def run_entrypoint(
    approach: str,
    train: Path,
    train_rows: int,
    evaluation: list[dict],
    folder: Path,
    dataset: str,
    smoke: bool,
) -> dict:
    """(b, c, d) train with the approach's recipe on ``train``, reload the saved model, time and score it."""
    import importlib

    import yaml

    from lorasmith.classifiers import load_classifier
    from train.common.modeling import count_parameters

    module, recipe = RECIPES[approach]
    recipe_values = yaml.safe_load((REPO / recipe).read_text())
    max_length = max(DATASETS[dataset][4], recipe_values.get("max_length", 0))  # a larger recipe budget is kept
    truncation = DATASETS[dataset][5]
    chunks = recipe_values.get("long_documents") == "chunks"
    if chunks:
        truncation = "end"  # the recipe's windows read whole texts (head_tail cannot apply with chunks)
    output_dir = folder / f"{dataset}_{approach}"
    overrides = {
        "train_data": str(train),
        "eval_data": "",  # no evaluation during training: the evaluation rows are the test set
        "columns": "text=text",
        "max_train_samples": str(
            train_rows
        ),  # the recipe's own (8,000 for SST-2) must not cut the prepared split
        "max_length": str(max_length),
        "truncation": truncation,
        "output_dir": str(output_dir),
        "save_strategy": "no",
        "load_best_model_at_end": "false",
        "export_merged": "false",
        "report_to": "none",
        "disable_tqdm": "true",
        "logging_steps": "50",
    }
    if smoke:
        overrides.update(max_steps=str(SMOKE_STEPS), max_length="64")
        if chunks:
            overrides["chunk_overlap"] = "16"  # the recipe's overlap is for its own longer windows
    argv = ["--config", str(REPO / recipe)] + [
        item for key, value in overrides.items() for item in (f"--{key}", value)
    ]
    trainer = importlib.import_module(module).main(argv)
    trainable = count_parameters(trainer.model)[0]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    del trainer
    classifier = load_classifier(output_dir)
    rows = [{"text": row["text"]} for row in evaluation]
    start = time.perf_counter()
    probabilities = classifier.predict_proba(rows, batch_size=32)
    predict_s = time.perf_counter() - start
    return {
        **score([row["label"] for row in evaluation], probabilities),
        "train_s": metrics["train"]["train_runtime"],
        "predict_s_per_1k": 1000 * predict_s / len(rows),
        "trainable_parameters": int(trainable),
        "settings": f"{recipe}, max_length {overrides['max_length']}, truncation {truncation}"
        + (", long_documents chunks" if chunks else "")
        + (", head_pooling mean" if recipe_values.get("head_pooling") == "mean" else ""),
    }


def prepare(
    dataset: str, folder: Path, sst2_train_rows: int, smoke: bool
) -> tuple[Path, list[dict], list[dict]]:
    """(train file, train rows, evaluation rows) of ``dataset`` written under ``folder``."""
    train_source, train_column, eval_source, eval_column = DATASETS[dataset][:4]
    if not train_source.is_file() or not eval_source.is_file():
        sys.exit(f"{dataset}: {train_source} or {eval_source} is missing (--data-root: the folder holding sst2/ and imdb/)")
    train_rows = SMOKE_ROWS if smoke else (sst2_train_rows if dataset == "sst2" else None)
    train_file = folder / f"{dataset}_train.jsonl"
    train = write_split(train_source, train_column, train_rows, 0, train_file)
    eval_rows = SMOKE_ROWS if smoke else None
    evaluation = write_split(eval_source, eval_column, eval_rows, 0, folder / f"{dataset}_eval.jsonl")
    return train_file, train, evaluation


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="sst2,imdb", help="comma-separated: sst2, imdb (default both)")
    parser.add_argument("--approaches", default="a,b,c,d", help="comma-separated: a, b, c, d (default all)")
    parser.add_argument(
        "--sst2-train-rows", type=int, default=2000, help="SST-2 training rows (default 2,000)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_ROWS} rows, {SMOKE_STEPS} steps: checks wiring"
    )
    parser.add_argument("--output", type=Path, help="also write the results JSON here")
    parser.add_argument("--data-root", type=Path, default=DATA, help="folder holding sst2/ and imdb/ (default %(default)s)")
    args = parser.parse_args(argv)
    DATASETS.update(dataset_files(args.data_root))
    datasets, approaches = args.datasets.split(","), args.approaches.split(",")
    unknown = [d for d in datasets if d not in DATASETS] + [a for a in approaches if a not in APPROACHES]
    if unknown:
        parser.error(
            f"unknown dataset/approach {unknown}; datasets {list(DATASETS)}, approaches {list(APPROACHES)}"
        )

    folder = Path(tempfile.mkdtemp(prefix="classify_h2h_"))
    results = []
    for dataset in datasets:
        train_file, train, evaluation = prepare(dataset, folder, args.sst2_train_rows, args.smoke)
        for approach in approaches:
            if approach == "a":
                row = run_probe(train, evaluation, 64 if args.smoke else DATASETS[dataset][4])
            else:
                row = run_entrypoint(
                    approach, train_file, len(train), evaluation, folder, dataset, args.smoke
                )
            row = {"dataset": dataset, "approach": f"{approach}: {APPROACHES[approach]}", **row,
                   "train_rows": len(train), "eval_rows": len(evaluation)}  # fmt: skip
            results.append(row)
            print(f"done: {json.dumps(row)}", flush=True)  # a later failure must not hide finished cells

    from eval.report import format_table

    print(f"\nhead-to-head ({'SMOKE: tiny subset, numbers mean nothing' if args.smoke else 'full'}), "
          f"CPU threads {__import__('torch').get_num_threads()}")  # fmt: skip
    columns = ["dataset", "approach", "train/eval rows", "accuracy", "macro-F1", "ECE", "train s", "predict s/1k",
               "trainable params"]  # fmt: skip
    print(format_table(columns, [
        [r["dataset"], r["approach"], f"{r['train_rows']}/{r['eval_rows']}", r["accuracy"], r["f1_macro"], r["ece"],
         r["train_s"], r["predict_s_per_1k"], f"{r['trainable_parameters']:,}"] for r in results
    ]))  # fmt: skip
    for dataset in datasets:
        cells = [r for r in results if r["dataset"] == dataset]
        best = max(cells, key=lambda r: r["accuracy"])
        fastest = min(cells, key=lambda r: r["train_s"] + r["predict_s_per_1k"])
        print(f"{dataset}: most accurate {best['approach']} ({best['accuracy']:.1f}); "
              f"cheapest {fastest['approach']} ({fastest['train_s']:.0f} s train)")  # fmt: skip
    report = {"results": results, "smoke": args.smoke, "data_folder": str(folder)}
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
