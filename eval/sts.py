"""Semantic textual similarity: cosine of pair embeddings vs gold scores -> Spearman and Pearson x 100.

    python -m eval.sts --model minilm --data data/sts-test.csv
    python -m eval.sts --model out/embed-run --data pairs.csv --columns sentence1=q,sentence2=a,score=label

Every file goes through ``data_utils.load(task="scored_pairs")``, which recognises the STS Benchmark
release files (tab-separated, no header: genre, file, year, id, score, sentence1, sentence2, sometimes
extra columns; quotes are text) by itself, as ``train.embed`` does; ``--format stsb`` forces that layout.
The reader flags (``--sep``, ``--header``, ``--encoding`` ...) are ``data_utils.options.ReadOptions``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch.nn.functional as F
from accelerate import PartialState

from data_utils.options import ReadOptions
from data_utils.readers import is_stsb_release_file  # noqa: F401 - eval.sts's name for the shared detection
from eval.cli import EmbeddingOptions, ModelOption, OutputOption, load_embedder, run_cli
from eval.metrics.correlation import pearson, spearman
from eval.report import emit, format_table
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser


def load_sts_data(data: str, *, columns: dict[str, str] | str | None = None, score_range=None, **read_options):
    """Dataset with columns sentence1, sentence2, score (score scaled to [0, 1] by data_utils);
    ``read_options``: ``data_utils.options.READ_OPTIONS`` (``format="stsb"`` forces the release layout)."""
    from data_utils import load

    options = {"score_range": score_range} if score_range is not None else {}
    return load(data, task="scored_pairs", columns=columns, **read_options, **options)


def evaluate_sts(
    embedder,
    data: str,
    *,
    columns: dict[str, str] | str | None = None,
    score_range=None,
    batch_size: int = 64,
    **read_options,
) -> dict:
    """``{"spearman", "pearson" (x 100), "num_pairs"}`` of cosine(sentence1, sentence2) against the score
    (:func:`sts_correlations`); ``read_options`` as in :func:`load_sts_data`."""
    dataset = load_sts_data(data, columns=columns, score_range=score_range, **read_options)
    gold = list(dataset["score"])
    correlations = sts_correlations(
        embedder, list(dataset["sentence1"]), list(dataset["sentence2"]), gold, batch_size
    )
    return {"task": "sts", "data": str(data), "num_pairs": len(gold), **correlations}


def sts_correlations(
    embedder, first: Sequence[str], second: Sequence[str], scores: Sequence[float], batch_size: int = 64
) -> dict[str, float]:
    """``{"spearman", "pearson"}`` x 100 of cosine(first[i], second[i]) against ``scores[i]``.

    Each distinct sentence is embedded once, with the model's symmetric prefix (``Embedder.symmetric_prefix``: the
    one instruction a model puts on both sides, else none); ``train.embed`` scores its eval set with this same
    function."""
    unique = list(dict.fromkeys([*first, *second]))
    position = {text: i for i, text in enumerate(unique)}
    embeddings = embedder.encode(unique, batch_size=batch_size, prefix=embedder.symmetric_prefix)  # (U, D)
    left = embeddings[[position[text] for text in first]]
    right = embeddings[[position[text] for text in second]]
    cosine = F.cosine_similarity(left, right, dim=-1).double().numpy()
    return {"spearman": 100 * spearman(cosine, list(scores)), "pearson": 100 * pearson(cosine, list(scores))}


@dataclasses.dataclass(kw_only=True)
class StsArguments(OutputOption, ReadOptions, EmbeddingOptions, ModelOption):
    """The flags of ``python -m eval.sts``."""

    _argument_group_name = "STS data"

    data: str = option("scored sentence pairs (csv, tsv, jsonl, ... or STS-B release)")
    columns: str | None = option("role=column pairs for sentence1, sentence2, score", default=None)
    score_range: str | None = option(
        "'lo,hi' of the gold scores (default: data_utils detects it)", default=None
    )


def make_parser() -> RecipeParser:
    return make_cli_parser([StsArguments], module="eval.sts", description=__doc__)


def _run(args: StsArguments) -> dict:
    embedder = load_embedder(args)
    result = evaluate_sts(
        embedder,
        args.data,
        columns=args.columns,
        score_range=args.score_range,
        batch_size=args.batch_size,
        **args.read_options(),
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
