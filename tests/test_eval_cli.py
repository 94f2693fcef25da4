"""The eval CLIs run in-process on a tiny BERT and the data_utils sample files: tables, JSON, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from scipy import stats
from sklearn import metrics as skm

from data_utils import load, sample_path
from eval import classify, matrix, probe, retrieval, sts
from eval.probe import cross_validated_accuracy
from lorasmith.encoder import Embedder
from lorasmith.run_folder import write_sentence_transformers_files

REPO = Path(__file__).resolve().parents[1]


def _run(module, argv, capsys) -> tuple[int, dict | None, str]:
    code = module.main([*argv, "--no-progress"] if module is not classify else argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.out + captured.err


def test_sts_cli_reports_the_correlation_of_cosines(tiny_bert_dir, tmp_path, capsys):
    output = tmp_path / "sts.json"
    code, result, text = _run(
        sts,
        ["--model", str(tiny_bert_dir), "--data", str(sample_path("sts_eval.tsv")), "--output", str(output)],
        capsys,
    )
    assert code == 0 and "spearman x100" in text
    assert json.loads(output.read_text()) == result
    pairs = load(sample_path("sts_eval.tsv"), task="scored_pairs")
    embedder = Embedder.load(tiny_bert_dir, show_progress=False)
    cosine = F.cosine_similarity(
        embedder.encode(list(pairs["sentence1"])), embedder.encode(list(pairs["sentence2"]))
    ).numpy()
    assert result["num_pairs"] == len(pairs)
    assert result["spearman"] == pytest.approx(
        100 * stats.spearmanr(cosine, list(pairs["score"])).statistic, abs=1e-4
    )
    assert result["pearson"] == pytest.approx(
        100 * stats.pearsonr(cosine, list(pairs["score"])).statistic, abs=1e-4
    )


def _write_stsb_release(path: Path) -> None:
    """The STS-B release layout: tab-separated, no header, quotes are text, some rows with extra fields."""
    rows = load(sample_path("sts_eval.tsv"), task="scored_pairs")
    with path.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            extra = "\tsource-a\tsource-b" if i % 3 == 0 else ""
            first = row["sentence1"] if i != 1 else 'He said "hi there.'
            handle.write(
                f"main-captions\tMSRvid\t2012test\t{i:04d}\t{5 * row['score']:.3f}\t{first}\t{row['sentence2']}{extra}\n"
            )


def test_sts_cli_detects_the_stsb_release_format(tiny_bert_dir, tmp_path, capsys):
    release = tmp_path / "sts-test.csv"
    _write_stsb_release(release)
    assert sts.is_stsb_release_file(release) and not sts.is_stsb_release_file(sample_path("sts_eval.tsv"))
    code, detected, _ = _run(sts, ["--model", str(tiny_bert_dir), "--data", str(release)], capsys)
    code_forced, forced, _ = _run(
        sts, ["--model", str(tiny_bert_dir), "--data", str(release), "--format", "stsb"], capsys
    )
    assert code == code_forced == 0
    assert detected["num_pairs"] == 20 and detected["spearman"] == pytest.approx(forced["spearman"])


def test_cli_user_errors_exit_2_without_traceback(tiny_bert_dir, tmp_path, capsys):
    code, _, text = _run(
        sts,
        [
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(sample_path("sts_eval.tsv")),
            "--columns",
            "sentence1=question",
        ],
        capsys,
    )
    assert code == 2 and "question" in text and "Traceback" not in text
    code, _, text = _run(sts, ["--model", str(tmp_path / "missing-model"), "--data", "x.tsv"], capsys)
    assert code == 2 and "model folder not found" in text
    code, _, text = _run(retrieval, ["--model", str(tiny_bert_dir)], capsys)
    assert code == 2 and "--corpus" in text


def test_retrieval_cli_pairs_and_tags(tiny_bert_dir, tmp_path, capsys):
    code, result, text = _run(
        retrieval,
        [
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(sample_path("pairs_eval.jsonl")),
            "--task",
            "pairs",
            "--k",
            "1,3",
            "--output",
            str(tmp_path / "r.json"),
        ],
        capsys,
    )
    pairs = load(sample_path("pairs_eval.jsonl"), task="pairs")
    assert code == 0 and "ndcg" in text
    assert result["num_queries"] == len(set(pairs["anchor"])) and result["num_documents"] == len(
        set(pairs["positive"])
    )
    assert set(result) >= {"recall@1", "ndcg@3", "mrr@3", "map@1", "precision@3", "hit_rate@1"}
    assert 0 <= result["ndcg@3"] <= 100
    code, result, _ = _run(
        retrieval,
        ["--model", str(tiny_bert_dir), "--data", str(sample_path("tags_eval.jsonl")), "--task", "tags"],
        capsys,
    )
    tags = load(sample_path("tags_eval.jsonl"), task="tags")
    assert code == 0 and result["num_documents"] == len({t for row in tags["tags"] for t in row})
    assert result["recall@10"] >= result["recall@1"]


def test_retrieval_finds_identical_texts_first(tiny_bert_dir, tmp_path, capsys):
    texts = list(load(sample_path("pairs_eval.jsonl"), task="pairs")["anchor"])
    data = tmp_path / "identical.jsonl"
    data.write_text("".join(json.dumps({"anchor": t, "positive": t}) + "\n" for t in texts))
    code, result, _ = _run(
        retrieval, ["--model", str(tiny_bert_dir), "--data", str(data), "--k", "1"], capsys
    )
    assert code == 0 and result["recall@1"] == 100 and result["mrr@1"] == 100


def test_retrieval_cli_beir_layout(tiny_bert_dir, tmp_path, capsys):
    docs = [
        ("d1", "Cats", "sleep most of the day."),
        ("d2", "Dogs", "like long walks."),
        ("d3", "", "Bread needs yeast."),
    ]
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    queries = [("q1", "Cats sleep most of the day."), ("q2", "Bread needs yeast."), ("q3", "not judged")]
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries)
    )
    (tmp_path / "qrels.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td3\t2\r\n")
    code, result, _ = _run(
        retrieval,
        [
            "--model",
            str(tiny_bert_dir),
            "--corpus",
            str(tmp_path / "corpus.jsonl"),
            "--queries",
            str(tmp_path / "queries.jsonl"),
            "--qrels",
            str(tmp_path / "qrels.tsv"),
            "--k",
            "1,2",
        ],
        capsys,
    )
    assert code == 0 and result["num_queries"] == 2 and result["num_documents"] == 3
    assert result["ndcg@1"] == 100  # each query is its document's "title text" verbatim


def test_probe_cli_cross_validates(tiny_bert_dir, tmp_path, capsys):
    code, result, text = _run(
        probe,
        [
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(sample_path("labeled_sentiment.csv")),
            "--folds",
            "5",
            "--output",
            str(tmp_path / "p.json"),
        ],
        capsys,
    )
    assert code == 0 and "accuracy x100" in text
    assert result["num_examples"] == 40 and result["num_labels"] == 2 and len(result["fold_accuracies"]) == 5
    assert result["accuracy"] == pytest.approx(np.mean(result["fold_accuracies"]))
    code, _, text = _run(
        probe,
        ["--model", str(tiny_bert_dir), "--data", str(sample_path("labeled_sentiment.csv")), "--folds", "50"],
        capsys,
    )
    assert code == 2 and "smallest class" in text


def test_probe_separable_features_score_100_and_c_selection_runs():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 8)
    features = np.eye(3)[labels] * 5 + rng.normal(scale=0.1, size=(24, 3))
    assert cross_validated_accuracy(features, labels, folds=4)["accuracy"] == 100
    selected = cross_validated_accuracy(features, labels, folds=2, select_c=True, inner_folds=2)
    assert selected["accuracy"] == 100 and set(selected["c"]) <= set(probe.SENTEVAL_C_GRID)


def test_matrix_cli_writes_csv_json_png(tiny_bert_dir, tmp_path, capsys):
    samples = Path(sample_path("sts_eval.tsv")).parent
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "tasks:\n"
        f"  - {{name: sts, kind: sts, data: {samples / 'sts_eval.tsv'}}}\n"
        f"  - {{name: tags, kind: retrieval, data: {samples / 'tags_eval.jsonl'}, task: tags, k: [1, 5]}}\n"
        f"  - {{name: sentiment, kind: probe, data: {samples / 'labeled_sentiment.csv'}, folds: 4, metric: accuracy}}\n"
    )
    out = tmp_path / "matrix"
    cls_model = tmp_path / "tiny-cls"
    shutil.copytree(tiny_bert_dir, cls_model)
    write_sentence_transformers_files(cls_model, "cls", True, 32, 32)
    code, result, text = _run(
        matrix,
        [
            "--models",
            str(tiny_bert_dir),
            "minilm",
            "--suite",
            str(suite),
            "--output-dir",
            str(out),
            "--max-length",
            "32",
        ],
        capsys,
    )
    assert code == 0, text
    assert "sts spearman" in text
    assert {p.name for p in out.iterdir()} == {"results.csv", "results.json", "results.png"}
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0] == ["model", "sts (spearman)", "tags (ndcg@5)", "sentiment (accuracy)"] and len(rows) == 3
    _, single, _ = _run(
        sts,
        ["--model", str(tiny_bert_dir), "--data", str(samples / "sts_eval.tsv"), "--max-length", "32"],
        capsys,
    )
    assert result["matrix"][str(tiny_bert_dir)]["sts"] == pytest.approx(single["spearman"])
    assert float(rows[1][1]) == pytest.approx(single["spearman"], abs=1e-4)


def test_matrix_suite_errors_name_the_task(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  - {name: a, kind: sts, data: x.tsv, colums: a=b}\n")
    with pytest.raises(Exception, match="did you mean 'columns'"):
        matrix.load_suite(suite)


def test_example_suite_points_at_existing_files():
    tasks = matrix.load_suite(REPO / "configs" / "eval" / "suite_example.yaml")
    assert {t.kind for t in tasks} == {"sts", "retrieval", "probe"}
    for task in tasks:
        assert Path(task.options["data"]).is_file(), task.name


class KeywordClassifier:
    """Fake classifier (the Classifier protocol): 'positive' when the text has a positive word."""

    label_names = ["negative", "positive"]
    text_columns = ["text"]
    multi_label = False

    def predict_proba(self, rows, batch_size=16):
        positive = [
            any(w in row["text"].lower() for w in ("great", "love", "amazing", "well", "perfect"))
            for row in rows
        ]
        return np.array([[0.2, 0.8] if p else [0.7, 0.3] for p in positive])


def test_classify_cli_metrics_match_sklearn(monkeypatch, tmp_path, capsys):
    fake = KeywordClassifier()
    monkeypatch.setattr(classify, "load_classifier", lambda path: fake)
    data = sample_path("labeled_sentiment_eval.csv")
    code, result, text = _run(
        classify, ["--model", "out", "--data", str(data), "--output", str(tmp_path / "c.json")], capsys
    )
    assert code == 0 and "confusion matrix" in text
    dataset = load(data, task="labeled", label_names=fake.label_names)
    predictions = fake.predict_proba(list(dataset)).argmax(axis=1)
    assert result["accuracy"] == pytest.approx(100 * skm.accuracy_score(list(dataset["label"]), predictions))
    assert result["f1"] == pytest.approx(100 * skm.f1_score(list(dataset["label"]), predictions))
    assert result["f1_macro"] == pytest.approx(
        100 * skm.f1_score(list(dataset["label"]), predictions, average="macro")
    )
    assert result["confusion_matrix"] == skm.confusion_matrix(list(dataset["label"]), predictions).tolist()
    assert 0 <= result["ece"] <= 100


def test_classify_cli_labels_texts(monkeypatch, capsys):
    monkeypatch.setattr(classify, "load_classifier", lambda path: KeywordClassifier())
    code, result, text = _run(
        classify, ["--model", "out", "--text", "I love it", "--text", "Broke in a day"], capsys
    )
    assert code == 0 and "I love it" in text
    assert [p["labels"] for p in result["predictions"]] == [["positive"], ["negative"]]
    assert result["predictions"][0]["probability"] == pytest.approx(0.8)


def test_load_classifier_rejects_embedding_folders(tmp_path):
    from lorasmith.classifiers import load_classifier
    from lorasmith.errors import ConfigError
    from lorasmith.run_folder import write_manifest

    with pytest.raises(ConfigError, match="not a lorasmith output folder"):
        load_classifier(tmp_path)
    write_manifest(tmp_path, {"kind": "embedding", "base_model": "x"})
    with pytest.raises(ConfigError, match="eval.probe"):
        load_classifier(tmp_path)


def test_every_classifier_kind_is_a_manifest_kind_and_its_class_loads_it():
    from lorasmith.classifiers import CLASSIFIER_TYPES
    from lorasmith.run_folder import MODEL_KINDS

    assert sorted(CLASSIFIER_TYPES) == ["prompt_classifier", "seq_classifier"]
    assert set(CLASSIFIER_TYPES) <= set(MODEL_KINDS)
    assert all(callable(getattr(cls, "load", None)) for cls in CLASSIFIER_TYPES.values())


def test_classifier_input_rows_must_have_text_in_every_template_column():
    from lorasmith.classifiers.base import check_input_rows
    from lorasmith.errors import DataError

    check_input_rows([{"title": "a", "body": "b"}], ["title", "body"], "the template's columns")
    with pytest.raises(DataError) as error:
        check_input_rows(
            [{"title": "a", "body": "b"}, {"title": "c", "body": None}],
            ["title", "body"],
            "the template's columns",
        )
    assert error.value.row == 2 and error.value.available == ["title", "body"]
    assert "input has no text in 'body'" in str(error.value)
    assert "the template's columns ['title', 'body']" in str(error.value)
