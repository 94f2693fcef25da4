"""Mine hard negatives for (query, positive) pairs: write a triplets file that ``train.embed`` reads as it is.

    # pairs -> 3 hard negatives per pair from the pairs' own positives, with the packaged MiniLM
    python -m train.mine --model minilm --pairs data_utils/samples/pairs.jsonl --output mined.jsonl

    # a separate corpus, skip the 10 closest documents, NV-Retriever's 95% false-negative guard, 2 processes
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m train.mine --model runs/my_run \\
        --pairs train.csv --columns anchor=question,positive=answer --corpus docs.jsonl --corpus_columns text=body \\
        --range_min 10 --range_max 50 --relative_margin 0.05 --num_negatives 5 --sampling random --output mined.jsonl

    # then train on them
    python -m train.embed --config configs/embed/simcse_sup.yaml --train_data mined.jsonl

Pipeline: read the pairs (task ``pairs``) and the corpus (any file with a text column; default: every distinct
positive of the pairs); embed the distinct queries and the distinct documents with any model lorasmith loads
(encoding sharded over processes); score by cosine similarity; exact chunked top-``range_max`` per query with
every known positive of the query (all its positives, in any row) and its own text kept out of the ranking;
filter (rank window, max/min score, absolute and relative margin to the pair's positive); take the top or a
seeded random sample of ``--num_negatives``; write atomically (``train/mine/output.py`` for the formats);
print a summary (rows, negatives, pairs short of negatives, what each filter removed, score gaps).

Memory for a 1M-document corpus (D = 384, MiniLM), on every process: document embeddings 1M x 384 x 4 B =
1.5 GB fp32 (``--embedding_dtype float16``: 0.77 GB), query embeddings Q x 384 x 4 B (100k queries: 154 MB),
running top-k Q x k x 12 B (100k x 100: 120 MB), one score block 1024 x (k + 16384) x 4 B = 67 MB, one corpus
chunk 16384 x 384 x 4 B = 25 MB on the device; encoding holds at most 65,536 texts in fp32 at once. Never a
Q x C score matrix (100k x 1M fp32 would be 400 GB). The texts themselves (Python strings) usually weigh more
than the embeddings: ~1 KB per document is another ~1 GB.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.cli import EmbeddingOptions, ModelOption, load_embedder
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser, parse_cli
from train.mine.candidates import sharded_topk
from train.mine.filters import SAMPLING, FilterSettings, apply_filters, select_negatives
from train.mine.inputs import build_inputs
from train.mine.output import FORMATS, MiningSummary, gaps_of, triplet_rows, write_jsonl_atomic

ENCODE_SLICE = 65536  # texts encoded (fp32) before their embeddings are cast to --embedding_dtype
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclasses.dataclass(kw_only=True)
class MineArguments(EmbeddingOptions, ModelOption):
    """The flags of ``python -m train.mine`` (checked together by :func:`validate`)."""

    _argument_group_name = "Mining"

    pairs: str = option("(query, positive) pairs: any file data_utils reads (task pairs)")
    columns: str | None = option(
        "column map of the pairs, e.g. anchor=question,positive=answer", default=None
    )
    corpus: str | None = option(
        "documents to mine from (default: every distinct positive of the pairs)", default=None
    )
    corpus_columns: str | None = option(
        "column map of the corpus, e.g. text=body (default column: text)", default=None
    )
    output: str = option("triplets file to write (.jsonl)")
    overwrite: bool = option("replace --output if it exists", default=False)
    format: str = option(
        "n-tuple: one row per pair with a 'negatives' list (default); triplet: one row per negative",
        default="n-tuple",
        choices=FORMATS,
    )
    keep_short: bool = option(
        "keep pairs with fewer than --num_negatives negatives (format triplet only; default: drop them)",
        default=False,
    )
    num_negatives: int = option("negatives per pair (default 3)", default=3)
    range_min: int = option("skip the closest N non-positive documents (default 0)", default=0)
    range_max: int = option("take candidates up to this rank, exclusive (default 100)", default=100)
    max_score: float | None = option("drop candidates scoring above this (cosine)", default=None)
    min_score: float | None = option("drop candidates scoring below this (cosine)", default=None)
    margin: float | None = option("keep a candidate only if score <= positive - margin", default=None)
    relative_margin: float | None = option(
        "keep a candidate only if score <= positive x (1 - margin) (false-negative guard; 0.05 is common)",
        default=None,
    )
    sampling: str = option("top (default) or random in the window", default="top", choices=SAMPLING)
    seed: int = option("seed of --sampling random (default 42)", default=42)
    query_prefix: str | None = option(
        "prepended to queries (default: what the model folder says)", default=None
    )
    document_prefix: str | None = option(
        "prepended to documents (default: what the model folder says)", default=None
    )
    embedding_dtype: str = option(
        "storage of the embeddings; float16 halves it (scores are computed in fp32)",
        default="float32",
        choices=tuple(DTYPES),
    )
    chunk_size: int = option("corpus rows scored at once (default 16384)", default=16384)
    query_block_size: int = option(
        "queries scored at once; the unit of sharding (default 1024)", default=1024
    )


def make_parser() -> RecipeParser:
    return make_cli_parser(
        [MineArguments],
        module="train.mine",
        description="Mine hard negatives for (query, positive) pairs and write a triplets JSONL file.",
    )


def validate(args: MineArguments) -> None:
    """ConfigError for a bad combination of flags, before anything is loaded."""
    output = Path(args.output)
    if output.suffix != ".jsonl":
        raise ConfigError(f"--output must be a .jsonl file, got {args.output}")
    if output.exists() and not args.overwrite:
        raise ConfigError(f"--output {args.output} exists; pass --overwrite to replace it")
    for name in ("num_negatives", "chunk_size", "query_block_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.range_min < 0:
        raise ConfigError(f"--range_min must be >= 0, got {args.range_min}")
    if args.range_max - args.range_min < args.num_negatives:
        raise ConfigError(
            f"the rank window [{args.range_min}, {args.range_max}) holds fewer candidates than --num_negatives "
            f"{args.num_negatives}; raise --range_max"
        )
    for name in ("margin", "relative_margin"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.keep_short and args.format == "n-tuple":
        raise ConfigError(
            "--keep_short needs --format triplet: the triplets schema wants the same number of negatives on "
            "every n-tuple row"
        )


def encode(embedder, texts: Sequence[str], prefix: str, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, D)`` L2-normalized embeddings in ``dtype`` (CPU), at most ``ENCODE_SLICE`` texts in fp32 at once;
    sharded over processes by ``Embedder.encode``."""
    parts = [
        F.normalize(embedder.encode(texts[start : start + ENCODE_SLICE], batch_size, prefix), dim=-1)
        for start in range(0, len(texts), ENCODE_SLICE)
    ]
    parts = [part.to(dtype) for part in parts]
    return torch.cat(parts) if parts else torch.empty(0, embedder.dimension, dtype=dtype)


def mine(args: MineArguments) -> MiningSummary:
    """Run the whole pipeline (see the module docstring); the main process writes ``args.output``."""
    from accelerate import PartialState

    import data_utils
    from lorasmith.process import check_world_size

    validate(args)
    state = PartialState(cpu=not torch.cuda.is_available())
    check_world_size(state)
    rank, world = state.process_index, state.num_processes
    pairs = data_utils.load(args.pairs, task="pairs", columns=args.columns)
    corpus = None
    if args.corpus:
        corpus = data_utils.load(args.corpus, task="sentences", columns=args.corpus_columns)["text"]
    inputs = build_inputs(pairs["anchor"], pairs["positive"], corpus)

    embedder = load_embedder(args)
    query_prefix = embedder.query_prefix if args.query_prefix is None else args.query_prefix
    document_prefix = embedder.document_prefix if args.document_prefix is None else args.document_prefix
    dtype = DTYPES[args.embedding_dtype]
    queries = encode(embedder, inputs.queries, query_prefix, args.batch_size, dtype)  # (Q, D)
    documents = encode(embedder, inputs.documents, document_prefix, args.batch_size, dtype)  # (C + extra, D)
    positives = documents[inputs.row_positive].float()  # (R, D)
    positive_scores = (queries[inputs.row_query].float() * positives).sum(-1)  # (R,)

    scores, indices = sharded_topk(  # (Q, K) each
        queries,
        documents[: inputs.corpus_size],
        args.range_max,
        rank=rank,
        world=world,
        query_block_size=args.query_block_size,
        excluded=inputs.excluded,
        chunk_size=args.chunk_size,
        device=embedder.device,
        progress=not args.no_progress and rank == 0,
    )
    row_scores, row_indices = scores[inputs.row_query], indices[inputs.row_query]  # (R, K)
    settings = FilterSettings(
        args.range_min, args.range_max, args.max_score, args.min_score, args.margin, args.relative_margin
    )
    keep, removed = apply_filters(row_scores, positive_scores, settings)
    generator = torch.Generator().manual_seed(args.seed)
    columns = select_negatives(keep, args.num_negatives, args.sampling, generator)  # (R, N), -1 = none
    removed["not sampled"] = int(keep.sum()) - int((columns >= 0).sum())
    negatives = [
        [inputs.documents[row_indices[row, column]] for column in row_columns if column >= 0]
        for row, row_columns in enumerate(columns.tolist())
    ]
    rows, written = triplet_rows(
        pairs["anchor"],
        pairs["positive"],
        negatives,
        num_negatives=args.num_negatives,
        output_format=args.format,
        keep_short=args.keep_short,
    )
    summary = MiningSummary(
        pairs=len(pairs),
        queries=len(inputs.queries),
        corpus_size=inputs.corpus_size,
        rows_written=len(rows),
        negatives_written=sum(len(negatives[row]) for row in written),
        pairs_short=sum(len(mined) < args.num_negatives for mined in negatives),
        short_policy="kept with fewer" if args.keep_short else "dropped",
        num_negatives=args.num_negatives,
        excluded=inputs.known_positives_in_corpus,
        removed=removed,
        gaps=gaps_of(positive_scores, row_scores, columns, written),
    )
    if rank == 0:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_jsonl_atomic(rows, output, overwrite=args.overwrite)
        except FileExistsError:
            raise ConfigError(
                f"--output {args.output} appeared while mining; pass --overwrite to replace it"
            ) from None
        print(f"mined hard negatives -> {output} (format {args.format})")
        print("\n".join(f"  {line}" for line in summary.lines()))
    state.wait_for_everyone()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(lambda: mine(*parse_cli(make_parser(), argv)))


if __name__ == "__main__":
    sys.exit(main())
