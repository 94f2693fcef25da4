"""Semantic textual similarity: cosine of pair embeddings vs gold scores -> Spearman and Pearson x 100.

    python -m eval.sts --model minilm --data ../shared/data/stsb/raw/sts-test.csv
    python -m eval.sts --model out/embed-run --data pairs.csv --columns sentence1=q,sentence2=a,score=label

The STS Benchmark release files (tab-separated, no header: genre, file, year, id, score, sentence1,
sentence2, sometimes extra columns; quotes are text) are recognised automatically, or forced with
``--format stsb``. Any other file goes through ``data_utils.load(task="scored_pairs")``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from accelerate import PartialState

from eval.cli import (
    add_model_arguments,
    add_output_argument,
    load_embedder,
    run_cli,
)
from eval.metrics.correlation import pearson, spearman
from eval.report import emit, format_table

STSB_COLUMNS = {"score": "4", "sentence1": "5", "sentence2": "6"}
STSB_OPTIONS = {"header": False, "quoting": "none", "sep": "\t", "score_range": (0, 5)}


def is_stsb_release_file(path: str | Path) -> bool:
    """True for a file laid out like the STS-B release: tab-separated, no header, >= 7 fields, a number
    (the score) in field 5."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = handle.readline().rstrip("\r\n").split("\t")
    if len(first) < 7:
        return False
    try:
        float(first[4])
    except ValueError:
        return False
    return True


def load_sts_data(
    data: str, *, columns: dict[str, str] | str | None = None, format: str | None = None, score_range=None
):
    """Dataset with columns sentence1, sentence2, score (score scaled to [0, 1] by data_utils)."""
    from data_utils import load

    if format == "stsb" or (format is None and columns is None and is_stsb_release_file(data)):
        return load(data, task="scored_pairs", columns=STSB_COLUMNS, **STSB_OPTIONS)
    options = {"score_range": score_range} if score_range is not None else {}
    return load(data, task="scored_pairs", columns=columns, **options)


def evaluate_sts(
    embedder,
    data: str,
    *,
    columns: dict[str, str] | str | None = None,
    format: str | None = None,
    score_range=None,
    batch_size: int = 64,
) -> dict:
    """``{"spearman", "pearson" (x 100), "num_pairs"}`` of cosine(sentence1, sentence2) against the score
    (:func:`sts_correlations`)."""
    dataset = load_sts_data(data, columns=columns, format=format, score_range=score_range)
    gold = list(dataset["score"])
    correlations = sts_correlations(
        embedder, list(dataset["sentence1"]), list(dataset["sentence2"]), gold, batch_size
    )
    return {"task": "sts", "data": str(data), "num_pairs": len(gold), **correlations}


def sts_correlations(
    embedder, first: Sequence[str], second: Sequence[str], scores: Sequence[float], batch_size: int = 64
) -> dict[str, float]:
    """``{"spearman", "pearson"}`` x 100 of cosine(first[i], second[i]) against ``scores[i]``.

    Each distinct sentence is embedded once, without prefixes (STS is symmetric); ``train.embed`` scores its
    eval set with this same function."""
    unique = list(dict.fromkeys([*first, *second]))
    position = {text: i for i, text in enumerate(unique)}
    embeddings = embedder.encode(unique, batch_size=batch_size)  # (U, D)
    left = embeddings[[position[text] for text in first]]
    right = embeddings[[position[text] for text in second]]
    cosine = F.cosine_similarity(left, right, dim=-1).double().numpy()
    return {"spearman": 100 * spearman(cosine, list(scores)), "pearson": 100 * pearson(cosine, list(scores))}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.sts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--data", required=True, help="scored sentence pairs (csv, tsv, jsonl, ... or STS-B release)"
    )
    parser.add_argument("--columns", help="role=column pairs for sentence1, sentence2, score")
    parser.add_argument("--format", choices=["stsb"], help="force the STS-B release layout")
    parser.add_argument("--score-range", help="'lo,hi' of the gold scores (default: data_utils detects it)")
    add_output_argument(parser)
    return parser


def _run(args: argparse.Namespace) -> dict:
    embedder = load_embedder(args)
    result = evaluate_sts(
        embedder,
        args.data,
        columns=args.columns,
        format=args.format,
        score_range=args.score_range,
        batch_size=args.batch_size,
    )
    result["model"] = args.model
    if PartialState().is_main_process:
        table = format_table(
            ["model", "pairs", "spearman x100", "pearson x100"],
            [[args.model, result["num_pairs"], result["spearman"], result["pearson"]]],
        )
        emit(result, table, args.output)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, make_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
