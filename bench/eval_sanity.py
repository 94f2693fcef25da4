"""Reproduce the published figures of all-MiniLM-L6-v2 with lorasmith's evaluators.

    python bench/eval_sanity.py [--data-root ../shared/data] [--only sts|scifact]

| figure | reference |
|---|---|
| STS-B test (raw release), Spearman x100 of cosines | 82.03 +- 0.05 (MTEB) |
| BEIR SciFact test (300 queries), NDCG@10 x100 | 64.5 +- 1 (MTEB 64.51) |

A failing row means an evaluator (pooling, truncation, data reading, metric) drifted. SciFact
embeds 5,183 abstracts at 256 tokens: a few minutes on 2 CPU cores. Exits 0 with a note when the
data folder is absent; 1 when a figure is outside its tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402
from eval.retrieval import evaluate_retrieval  # noqa: E402
from eval.sts import evaluate_sts  # noqa: E402
from lorasmith.encoder import Embedder  # noqa: E402

FIGURES = {
    "sts": ("STS-B test spearman x100", 82.03, 0.05),
    "scifact": ("SciFact test ndcg@10 x100", 64.5, 1.0),
}


def measure(name: str, embedder: Embedder, data_root: Path, batch_size: int) -> float:
    if name == "sts":
        return evaluate_sts(embedder, str(data_root / "stsb/raw/sts-test.csv"), batch_size=batch_size)[
            "spearman"
        ]
    scifact = data_root / "scifact"
    return evaluate_retrieval(
        embedder,
        corpus=str(scifact / "corpus.jsonl"),
        queries=str(scifact / "queries.jsonl"),
        qrels=str(scifact / "qrels/test.tsv"),
        k=(10,),
        batch_size=batch_size,
    )["ndcg@10"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--only", choices=sorted(FIGURES), action="append", help="run only this figure (repeatable)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    required = {
        "sts": args.data_root / "stsb/raw/sts-test.csv",
        "scifact": args.data_root / "scifact/corpus.jsonl",
    }
    names = args.only or list(FIGURES)
    missing = [name for name in names if not required[name].is_file()]
    if missing:
        print(
            f"skipped: {', '.join(str(required[n]) for n in missing)} not found (shared benchmark data absent)"
        )
        names = [name for name in names if name not in missing]
    embedder = Embedder.load("minilm", show_progress=False)
    rows, failed = [], False
    for name in names:
        label, reference, tolerance = FIGURES[name]
        start = time.perf_counter()
        value = measure(name, embedder, args.data_root, args.batch_size)
        ok = abs(value - reference) <= tolerance
        failed |= not ok
        rows.append([label, value, reference, tolerance, "ok" if ok else "FAIL", time.perf_counter() - start])
    if rows:
        print(
            format_table(["figure (minilm, fp32)", "measured", "reference", "+-", "status", "seconds"], rows)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
