"""Retrieval evaluation: recall / precision / NDCG / MRR / MAP / hit rate at k (x 100).

    # BEIR folder layout (documents = title + " " + text; only queries listed in qrels are evaluated)
    python -m eval.retrieval --model minilm --corpus scifact/corpus.jsonl --queries scifact/queries.jsonl \\
        --qrels scifact/qrels/test.tsv
    # every anchor's positives among all distinct positives of the file
    python -m eval.retrieval --model out/embed-run --data pairs_eval.jsonl --task pairs
    # every text's tags among all distinct tags of the file
    python -m eval.retrieval --model out/embed-run --data tags_eval.jsonl --task tags

Queries get the query prefix, documents / positives / tags the document prefix (from the model's
lorasmith.json, or ``--query_prefix`` / ``--document_prefix``). Search is exact (chunked dot products of
the embeddings; cosine when the model normalizes).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from accelerate import PartialState

from data_utils.options import ReadOptions
from eval.cli import EmbeddingOptions, ModelOption, OutputOption, load_embedder, parse_ks, run_cli
from eval.metrics.retrieval import METRIC_NAMES, exact_topk, topk_retrieval_metrics
from eval.report import emit, format_table
from lorasmith.errors import ConfigError, DataError
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser


@dataclasses.dataclass
class RetrievalTask:
    """Queries, a corpus and graded judgments (qrels: query id -> {document id: grade})."""

    query_ids: list[str]
    query_texts: list[str]
    corpus_ids: list[str]
    corpus_texts: list[str]
    qrels: dict[str, dict[str, int]]


# ---- BEIR ----


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    if not Path(path).is_file():
        raise DataError("file not found", source=path)
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append((line_number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"not valid JSON ({error.msg})", source=path, row=line_number) from None
    return records


def _field(record: dict, key: str, path: str, line: int) -> str:
    if key not in record:
        raise DataError(f"missing key '{key}'", source=path, row=line, available=record.keys())
    return str(record[key])


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (``query-id corpus-id score``; CRLF accepted) -> {query: {doc: grade}}.

    The first line is a header unless its score field is a number: then it is the first judgement (qrels
    files written without a header lose nothing). Rows are counted after the header, if any."""
    if not Path(path).is_file():
        raise DataError("file not found", source=path)
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if rows and not (len(rows[0]) >= 3 and _is_number(rows[0][2])):
        rows = rows[1:]  # the header
    for row_number, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) < 3:
            raise DataError(
                f"expected 3 tab-separated fields, got {len(row)}",
                source=path,
                row=row_number,
                expected="query-id, corpus-id, score",
            )
        try:
            grade = int(float(row[2]))
        except ValueError:
            raise DataError(
                f"score is not a number: {row[2]!r}", source=path, row=row_number, column="score"
            ) from None
        qrels.setdefault(row[0].strip(), {})[row[1].strip()] = grade
    return qrels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_beir_task(corpus: str, queries: str, qrels: str) -> RetrievalTask:
    """BEIR files -> task with only the queries that have qrels; documents are ``title + " " + text``."""
    judgments = read_qrels(qrels)
    corpus_ids, corpus_texts = [], []
    for line, record in _read_jsonl(corpus):
        corpus_ids.append(_field(record, "_id", corpus, line))
        corpus_texts.append(f"{record.get('title') or ''} {_field(record, 'text', corpus, line)}".strip())
    query_ids, query_texts = [], []
    for line, record in _read_jsonl(queries):
        query_id = _field(record, "_id", queries, line)
        if query_id in judgments:
            query_ids.append(query_id)
            query_texts.append(_field(record, "text", queries, line))
    if not query_ids:
        raise DataError(
            "no query of this file has an entry in the qrels file",
            source=queries,
            expected=f"query ids listed in {qrels}",
        )
    known = set(corpus_ids)
    unknown = sorted({doc for docs in judgments.values() for doc in docs} - known)
    if unknown:
        raise DataError(
            f"{len(unknown)} judged document ids are not in the corpus, e.g. {unknown[:3]}", source=qrels
        )
    return RetrievalTask(query_ids, query_texts, corpus_ids, corpus_texts, judgments)


# ---- pairs / tags files ----


def task_from_positives(texts: Sequence[str], positives: Sequence[Sequence[str]]) -> RetrievalTask:
    """Each distinct text is a query whose relevant documents are its positives (all its rows pooled);
    the corpus is every distinct positive of the file."""
    relevant: dict[str, dict[str, None]] = {}
    for text, its_positives in zip(texts, positives, strict=True):
        relevant.setdefault(text, {}).update(dict.fromkeys(its_positives))
    corpus_texts = list(dict.fromkeys(p for its_positives in positives for p in its_positives))
    corpus_index = {text: str(i) for i, text in enumerate(corpus_texts)}
    query_texts = list(relevant)
    qrels = {str(q): {corpus_index[p]: 1 for p in relevant[text]} for q, text in enumerate(query_texts)}
    return RetrievalTask(
        [str(q) for q in range(len(query_texts))],
        query_texts,
        [str(i) for i in range(len(corpus_texts))],
        corpus_texts,
        qrels,
    )


def load_file_task(
    data: str, task: str, columns: dict[str, str] | str | None = None, **read_options
) -> RetrievalTask:
    """``task="pairs"``: anchor -> positive; ``task="tags"``: text -> its tags (data_utils schemas);
    ``read_options``: how the file is read (``data_utils.options.READ_OPTIONS``)."""
    from data_utils import load

    if task == "pairs":
        dataset = load(data, task="pairs", columns=columns, **read_options)
        return task_from_positives(list(dataset["anchor"]), [[p] for p in dataset["positive"]])
    if task == "tags":
        dataset = load(data, task="tags", columns=columns, **read_options)
        return task_from_positives(list(dataset["text"]), list(dataset["tags"]))
    raise ConfigError(f"--task must be pairs or tags, got {task!r}")


# ---- evaluation ----


def run_retrieval(
    embedder,
    task: RetrievalTask,
    ks: Sequence[int] = (1, 5, 10),
    *,
    batch_size: int = 64,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> dict:
    """Embed queries and corpus, exact top-max(ks) search, metrics x 100 (``"ndcg@10"`` ...)."""
    query_prefix = embedder.query_prefix if query_prefix is None else query_prefix
    document_prefix = embedder.document_prefix if document_prefix is None else document_prefix
    queries = embedder.encode(task.query_texts, batch_size=batch_size, prefix=query_prefix)
    corpus = embedder.encode(task.corpus_texts, batch_size=batch_size, prefix=document_prefix)
    if not embedder.normalize:  # rank by cosine whatever the model's output normalisation
        queries, corpus = F.normalize(queries, dim=-1), F.normalize(corpus, dim=-1)
    _, indices = exact_topk(queries.to(embedder.device), corpus.to(embedder.device), k=max(ks))
    metrics = topk_retrieval_metrics(indices.cpu(), task.query_ids, task.corpus_ids, task.qrels, ks)
    result = {key: 100 * value if "@" in key else value for key, value in metrics.items()}
    result.update(task="retrieval", num_documents=len(task.corpus_ids))
    return result


def evaluate_retrieval(
    embedder,
    *,
    data: str | None = None,
    task: str | None = None,
    columns: dict[str, str] | str | None = None,
    corpus: str | None = None,
    queries: str | None = None,
    qrels: str | None = None,
    k: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    read_options: dict | None = None,
) -> dict:
    """Either BEIR files (corpus, queries, qrels) or a pairs/tags file (data, task, read with
    ``read_options``)."""
    beir = (corpus, queries, qrels)
    if data is not None and any(beir):
        raise ConfigError("give either --data (with --task) or --corpus/--queries/--qrels, not both")
    if data is not None:
        retrieval_task = load_file_task(data, task or "pairs", columns, **(read_options or {}))
    elif all(beir):
        retrieval_task = load_beir_task(corpus, queries, qrels)
    else:
        raise ConfigError(
            "retrieval needs --data FILE --task pairs|tags, or all of --corpus, --queries, --qrels"
        )
    result = run_retrieval(
        embedder,
        retrieval_task,
        k,
        batch_size=batch_size,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
    )
    result["data"] = data or corpus
    return result


@dataclasses.dataclass(kw_only=True)
class RetrievalArguments(OutputOption, ReadOptions, EmbeddingOptions, ModelOption):
    """The flags of ``python -m eval.retrieval``: ``--data`` (with ``--task``) or the three BEIR files."""

    _argument_group_name = "Retrieval"

    data: str | None = option("pairs or tags file (csv, jsonl, ...)", default=None)
    task: str = option("what --data holds (default pairs)", default="pairs", choices=("pairs", "tags"))
    columns: str | None = option(
        "role=column pairs (pairs: anchor, positive; tags: text, tags)", default=None
    )
    corpus: str | None = option("BEIR corpus.jsonl (_id, title, text)", default=None)
    queries: str | None = option("BEIR queries.jsonl (_id, text)", default=None)
    qrels: str | None = option("BEIR qrels TSV (query-id, corpus-id, score; header optional)", default=None)
    k: str = option("cut-offs, comma-separated (default 1,5,10)", default="1,5,10")
    query_prefix: str | None = option(
        "prepended to queries (default: from lorasmith.json, else none)", default=None
    )
    document_prefix: str | None = option(
        "prepended to documents (default: from lorasmith.json, else none)", default=None
    )


def make_parser() -> RecipeParser:
    return make_cli_parser([RetrievalArguments], module="eval.retrieval", description=__doc__)


def _run(args: RetrievalArguments) -> dict:
    ks = parse_ks(args.k)
    embedder = load_embedder(args)
    result = evaluate_retrieval(
        embedder,
        data=args.data,
        task=args.task,
        columns=args.columns,
        corpus=args.corpus,
        queries=args.queries,
        qrels=args.qrels,
        k=ks,
        batch_size=args.batch_size,
        query_prefix=args.query_prefix,
        document_prefix=args.document_prefix,
        read_options=args.read_options(),
    )
    result["model"] = args.model
    if PartialState().is_main_process:
        rows = [[f"{name}"] + [result[f"{name}@{k}"] for k in ks] for name in METRIC_NAMES]
        header = (
            f"{args.model}: {result['num_queries']} queries, {result['num_documents']} documents "
            f"({result['num_queries_without_relevant']} queries without a relevant document)"
        )
        emit(result, header + "\n" + format_table(["metric x100"] + [f"@{k}" for k in ks], rows), args.output)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, make_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
