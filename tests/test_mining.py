"""python -m train.mine: mined triplets never hold a known positive, filters and sampling do what they say on
hand-built scores, the chunked top-k is exact, 2 processes write the file 1 process writes, and the file
loads as task triplets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from multiproc import run_multiprocess

import data_utils
from data_utils.check import main as check_main
from train.mine.__main__ import main, make_parser, mine
from train.mine.candidates import MISSING, exact_topk, sharded_topk
from train.mine.filters import FilterSettings, apply_filters, select_negatives, window_mask
from train.mine.inputs import build_inputs

QUERIES = ["the cat likes the map.", "a dog reads a good book.", "my friend watches great music."]
DOCUMENTS = [f"{s} {v} {o}." for s in ("the team", "our model", "a user") for v in ("trains", "finds", "writes")
             for o in ("fresh bread", "clean data")]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_mine(tiny_bert_dir, *options: str):
    args = make_parser().parse_args(["--model", str(tiny_bert_dir), "--no-progress", *map(str, options)])
    return mine(args)


# ---- never a positive ----


def test_no_negative_is_a_known_positive_or_the_query_even_with_duplicated_corpus_texts(
    tiny_bert_dir, tmp_path
):
    q, other = QUERIES[0], QUERIES[1]
    pairs = [
        {"question": q, "answer": DOCUMENTS[0]},
        {"question": other, "answer": DOCUMENTS[2]},
        {"question": q, "answer": DOCUMENTS[1]},  # q has two known positives
    ]
    corpus = [
        {"body": text} for text in DOCUMENTS[:6] + DOCUMENTS[:3] + [q, other]
    ]  # duplicates + the queries
    output = tmp_path / "mined.jsonl"
    summary = run_mine(
        tiny_bert_dir, "--pairs", write_jsonl(tmp_path / "pairs.jsonl", pairs),
        "--columns", "anchor=question,positive=answer", "--corpus", write_jsonl(tmp_path / "corpus.jsonl", corpus),
        "--corpus-columns", "text=body", "--num-negatives", "6", "--range-max", "20",
        "--format", "triplet", "--keep-short", "--output", output,
    )  # fmt: skip

    known = {q: {DOCUMENTS[0], DOCUMENTS[1], q}, other: {DOCUMENTS[2], other}}
    by_pair: dict[tuple[str, str], list[str]] = {}
    for row in read_jsonl(output):
        assert row["negative"] not in known[row["anchor"]]
        by_pair.setdefault((row["anchor"], row["positive"]), []).append(row["negative"])
    # 8 distinct corpus texts: q may take the 5 that are neither its positives nor itself, each once; other 6
    assert sorted(by_pair[(q, DOCUMENTS[0])]) == sorted(DOCUMENTS[2:6] + [other])
    assert sorted(by_pair[(q, DOCUMENTS[1])]) == sorted(DOCUMENTS[2:6] + [other])
    assert sorted(by_pair[(other, DOCUMENTS[2])]) == sorted([DOCUMENTS[i] for i in (0, 1, 3, 4, 5)] + [q])
    assert summary.corpus_size == 8 and summary.excluded == 5
    assert summary.pairs_short == 2 and summary.rows_written == summary.negatives_written == 5 + 5 + 6


def test_build_inputs_excludes_every_positive_of_a_query_and_its_own_text():
    inputs = build_inputs(["a", "b", "a"], ["x", "y", "z"], corpus=["x", "y", "x", "a", "w"])
    assert (
        inputs.documents == ["x", "y", "a", "w", "z"] and inputs.corpus_size == 4
    )  # z: scored, never a candidate
    assert inputs.excluded.tolist() == [[0, 0], [0, 2], [1, 1]]  # z is outside the corpus
    assert inputs.row_query.tolist() == [0, 1, 0] and inputs.row_positive.tolist() == [0, 1, 4]


# ---- filters on hand-built scores ----

SCORES = torch.tensor([[0.95, 0.90, 0.80, 0.70, 0.60, float("-inf")], [0.50, 0.45, 0.40, 0.30, 0.20, 0.10]])
POSITIVES = torch.tensor([0.85, 0.50])


def test_window_keeps_ranks_from_range_min_up_to_range_max_exclusive():
    assert window_mask((2, 6), 1, 4).tolist() == [[False, True, True, True, False, False]] * 2
    keep, removed = apply_filters(SCORES, POSITIVES, FilterSettings(range_min=1, range_max=4))
    assert keep.tolist() == [[False, True, True, True, False, False], [False, True, True, True, False, False]]
    assert removed == {"window": 5}  # the -inf slot is no candidate


def test_max_and_min_score_drop_candidates_outside_the_score_range():
    keep, removed = apply_filters(SCORES, POSITIVES, FilterSettings(max_score=0.8, min_score=0.3))
    assert keep.tolist() == [[False, False, True, True, True, False], [True, True, True, True, False, False]]
    assert removed == {"window": 0, "max_score": 2, "min_score": 2}


def test_absolute_margin_keeps_candidates_at_least_margin_below_the_positive():
    keep, removed = apply_filters(SCORES, POSITIVES, FilterSettings(margin=0.1))
    assert keep.tolist() == [[False, False, False, True, True, False], [False, False, True, True, True, True]]
    assert removed["margin"] == 5


def test_relative_margin_keeps_candidates_below_positive_times_one_minus_margin():
    keep, removed = apply_filters(SCORES, POSITIVES, FilterSettings(relative_margin=0.1))  # 0.765, 0.45
    assert keep.tolist() == [[False, False, False, True, True, False], [False, True, True, True, True, True]]
    assert removed["relative_margin"] == 4
    negative_positive = apply_filters(
        torch.tensor([[-0.15, -0.25]]), torch.tensor([-0.2]), FilterSettings(relative_margin=0.1)
    )
    assert negative_positive[0].tolist() == [[False, True]]  # -0.25 <= -0.2 - 0.02


def test_filters_count_only_what_earlier_filters_left():
    _, removed = apply_filters(SCORES, POSITIVES, FilterSettings(range_min=2, max_score=0.75, margin=0.15))
    assert removed == {"window": 4, "max_score": 1, "margin": 1}  # 0.80 went to max_score, 0.40 to margin


# ---- sampling ----


def test_top_sampling_takes_the_best_ranked_kept_candidates_and_marks_missing_ones():
    keep = torch.tensor([[False, True, True, False, True], [False, False, False, True, False]])
    assert select_negatives(keep, 2, "top").tolist() == [[1, 2], [3, -1]]


def test_random_sampling_is_seeded_and_stays_inside_the_window():
    keep = window_mask((200, 30), 5, 15).clone()
    keep[::7, 5:12] = False  # some rows have only 3 candidates left
    draws = [select_negatives(keep, 4, "random", torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    for columns in draws:
        chosen = columns[columns >= 0]
        assert chosen.min() >= 5 and chosen.max() < 15
        rows, slots = (columns >= 0).nonzero(as_tuple=True)
        assert keep[rows, columns[rows, slots]].all()
        assert (columns[::7] == -1).sum(dim=1).tolist() == [1] * len(columns[::7])
        assert torch.equal(columns[1:7], columns[1:7].sort(dim=1).values)  # rank order
    assert len({tuple(row) for row in draws[0].tolist()}) > 20  # not always the same columns


# ---- exact chunked top-k ----


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 500])
def test_chunked_topk_equals_a_full_argsort(chunk_size):
    generator = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(37, 8, generator=generator), torch.randn(203, 8, generator=generator)
    excluded = torch.tensor([[0, 5], [0, 17], [3, 0], [36, 202]])
    full = queries @ corpus.T
    full[excluded[:, 0], excluded[:, 1]] = float("-inf")
    expected_scores, expected_indices = full.sort(dim=1, descending=True)
    scores, indices = sharded_topk(
        queries, corpus, 12, excluded=excluded, chunk_size=chunk_size, query_block_size=5
    )
    assert torch.equal(indices, expected_indices[:, :12])
    assert torch.allclose(scores, expected_scores[:, :12], atol=1e-5)


def test_topk_of_a_corpus_smaller_than_k_marks_the_empty_slots():
    ((scores, indices),) = exact_topk(torch.eye(2), torch.eye(2), 5, excluded=torch.tensor([[0, 1]])).values()
    assert indices.tolist() == [[0, MISSING], [1, 0]] and torch.isneginf(scores[0, 1])


# ---- files ----


@pytest.fixture
def sample_pairs(tmp_path) -> str:
    rows = [{"anchor": q, "positive": d} for q in QUERIES for d in DOCUMENTS[QUERIES.index(q) :: 6]]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.mark.parametrize("output_format", ["n-tuple", "triplet"])
def test_the_output_loads_as_task_triplets(tiny_bert_dir, tmp_path, sample_pairs, capsys, output_format):
    output = tmp_path / "mined.jsonl"
    options = ["--pairs", sample_pairs, "--num-negatives", "2", "--format", output_format, "--output", output]
    run_mine(tiny_bert_dir, *options)
    dataset = data_utils.load(str(output), task="triplets")
    assert dataset.column_names == ["anchor", "positive", "negatives"]
    assert len(dataset) == (9 if output_format == "n-tuple" else 18)
    assert {len(negatives) for negatives in dataset["negatives"]} == {2 if output_format == "n-tuple" else 1}
    assert check_main(["--task", "triplets", "--data", str(output)]) == 0
    assert "OK: the data is valid for task 'triplets'" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir() if path.suffix == ".tmp"] == []


def test_pairs_short_of_negatives_are_dropped_or_kept_with_fewer_never_padded(
    tiny_bert_dir, tmp_path, sample_pairs
):
    # each query has 3 known positives among the 9 documents: 6 candidates, 2 of them at ranks >= 4
    options = ["--pairs", sample_pairs, "--num-negatives", "3", "--range-min", "4"]
    dropped = run_mine(tiny_bert_dir, *options, "--output", tmp_path / "dropped.jsonl")
    assert (dropped.pairs_short, dropped.rows_written) == (9, 0) and read_jsonl(
        tmp_path / "dropped.jsonl"
    ) == []
    kept = run_mine(
        tiny_bert_dir, *options, "--format", "triplet", "--keep-short", "--output", tmp_path / "kept.jsonl"
    )
    rows = read_jsonl(tmp_path / "kept.jsonl")
    assert (kept.pairs_short, kept.rows_written, kept.negatives_written, len(rows)) == (9, 18, 18, 18)
    known = {query: {query, *DOCUMENTS[i::6]} for i, query in enumerate(QUERIES)}
    assert all(row["negative"] not in known[row["anchor"]] for row in rows)


def test_relative_margin_zero_writes_only_negatives_scoring_at_most_the_positive(
    tiny_bert_dir, tmp_path, sample_pairs
):
    output = tmp_path / "mined.jsonl"
    summary = run_mine(tiny_bert_dir, "--pairs", sample_pairs, "--relative-margin", "0", "--output", output)
    assert summary.rows_written + summary.pairs_short == 9 == summary.pairs
    assert len(read_jsonl(output)) == summary.rows_written
    assert len(summary.gaps) == 3 * summary.rows_written and min(summary.gaps) >= 0


def test_existing_output_is_refused_without_overwrite(tiny_bert_dir, tmp_path, sample_pairs, capsys):
    output = tmp_path / "mined.jsonl"
    output.write_text("keep me\n")
    common = ["--model", str(tiny_bert_dir), "--pairs", sample_pairs, "--output", str(output)]
    assert main(common) == 2
    assert "pass --overwrite" in capsys.readouterr().err and output.read_text() == "keep me\n"
    code = main([*common, "--keep-short", "--overwrite"])
    assert code == 2 and "--keep_short needs --format triplet" in capsys.readouterr().err


def test_two_processes_write_the_file_one_process_writes(tiny_bert_dir, tmp_path, sample_pairs):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": text} for text in DOCUMENTS + QUERIES])
    common = [
        "--model", str(tiny_bert_dir), "--pairs", sample_pairs, "--corpus", corpus, "--num-negatives", "3",
        "--range-min", "1", "--range-max", "12", "--sampling", "random", "--seed", "3", "--batch-size", "4",
        "--query-block-size", "1", "--chunk-size", "5", "--no-progress",
    ]  # fmt: skip
    assert main([*common, "--output", str(tmp_path / "one.jsonl")]) == 0
    result = run_multiprocess(["-m", "train.mine", *common, "--output", str(tmp_path / "two.jsonl")])
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert result.stdout.count("mined hard negatives") == 1  # only the main process writes and reports
    assert len(read_jsonl(tmp_path / "one.jsonl")) == 9
