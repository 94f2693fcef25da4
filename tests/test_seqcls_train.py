"""train.seq_classify end to end on tiny models: train, save, reload with eval's predictor, same numbers.

The reload check is exact: the eval loss that the Trainer computed with the in-memory model at the end of
training must be reproduced from the logits of the model reloaded from disk (a head that was not saved
would come back re-initialized and give another loss).
"""

import json
import re

import numpy as np
import pytest
import torch
from multiproc import run_multiprocess
from safetensors import safe_open

from data_utils import load, sample_path
from lorasmith.classifiers.sequence import SequenceClassifier
from lorasmith.process import run_main
from train.seq_classify import main
from train.seq_classify.trainer import class_weight_vector

pytestmark = pytest.mark.slow


def train_args(model_dir, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(output_dir),
        "--use_peft",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--num_train_epochs",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "5e-3",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        "--max_length",
        "64",
        *extra,
    ]


def eval_rows_and_labels(path, text_columns, label_names, **options):
    dataset = load(path, task="labeled", text_columns=text_columns, label_names=label_names, **options)
    rows = [{name: row[name] for name in text_columns} for row in dataset]
    return rows, dataset["label"]


def cross_entropy(logits: np.ndarray, labels, weights=None) -> float:
    logits, labels = torch.tensor(logits), torch.tensor(labels)
    return torch.nn.functional.cross_entropy(logits, labels, weight=weights).item()


def test_bert_lora_with_class_weights_saves_head_and_reloads_identically(tiny_bert_dir, tmp_path):
    out = tmp_path / "bert"
    main(
        train_args(
            tiny_bert_dir,
            out,
            "--train_data",
            str(sample_path("labeled_sentiment.csv")),
            "--eval_data",
            str(sample_path("labeled_sentiment_eval.csv")),
            "--class_weights",
            "1,3",
        )
    )
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["kind"] == "seq_classifier" and manifest["labels"] == ["negative", "positive"]
    assert (
        manifest["adapter"] == "adapter"
        and manifest["merged"] == "merged"
        and manifest["text_columns"] == ["text"]
    )
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(
            weights.keys()
        )
    merged_config = json.loads((out / "merged" / "config.json").read_text())
    assert merged_config["id2label"] == {"0": "negative", "1": "positive"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.array(metrics["eval"]["confusion_matrix"]).sum() == 20
    assert set(metrics["eval"]["per_class"]) == {"negative", "positive"} and "f1" in metrics["eval"]
    assert (out / "README.md").read_text().count("python -m eval.classify") == 2

    rows, labels = eval_rows_and_labels(
        sample_path("labeled_sentiment_eval.csv"), ["text"], manifest["labels"]
    )
    merged = SequenceClassifier.load(out)
    merged_logits = merged.logits(rows)
    weighted = cross_entropy(merged_logits, labels, torch.tensor([1.0, 3.0]))
    assert weighted == pytest.approx(metrics["eval"]["loss"], rel=1e-4)  # the class weights were in the loss
    assert cross_entropy(merged_logits, labels) != pytest.approx(weighted, rel=1e-3)

    (out / "lorasmith.json").write_text(json.dumps({**manifest, "merged": None}))  # force base + adapter
    adapter = SequenceClassifier.load(out)
    np.testing.assert_allclose(adapter.logits(rows), merged_logits, atol=1e-5)
    assert set(adapter.predict(rows)) <= {"negative", "positive"}


def test_llama_pair_inputs_adapter_only_reload(tiny_llama_dir, tmp_path):
    out = tmp_path / "llama"
    pairs = str(sample_path("labeled_pairs.csv"))
    main(
        train_args(
            tiny_llama_dir,
            out,
            "--train_data",
            pairs,
            "--eval_data",
            pairs,
            "--text_columns",
            "sentence1",
            "sentence2",
            "--export_merged",
            "false",
        )
    )
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["merged"] is None and not (out / "merged").exists()
    assert manifest["labels"] == ["contradiction", "entailment", "neutral"]
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        assert "base_model.model.score.weight" in set(weights.keys())
    classifier = SequenceClassifier.load(out)
    rows, labels = eval_rows_and_labels(pairs, ["sentence1", "sentence2"], manifest["labels"])
    loss = json.loads((out / "metrics.json").read_text())["eval"]["loss"]
    assert cross_entropy(classifier.logits(rows), labels) == pytest.approx(loss, rel=1e-4)


def test_full_finetune_multi_label_with_threshold_and_balanced_weights(tiny_bert_dir, tmp_path):
    out = tmp_path / "tags"
    main(
        train_args(
            tiny_bert_dir,
            out,
            "--train_data",
            str(sample_path("tags.jsonl")),
            "--eval_data",
            str(sample_path("tags_eval.jsonl")),
            "--columns",
            "label=tags",
            "--problem_type",
            "multi_label",
            "--threshold",
            "0.4",
            "--class_weights",
            "balanced",
            "--use_peft",
            "false",
            "--full_finetune",
            "true",
        )
    )
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["multi_label"] is True and manifest["threshold"] == 0.4
    assert manifest["adapter"] is None and manifest["merged"] == "merged"  # full fine-tuning: the whole model
    classifier = SequenceClassifier.load(out)
    names = manifest["labels"]
    options = {"columns": {"label": "tags"}, "label_names": names, "multi_label": True}
    train, evaluation = (
        load(sample_path(f), task="labeled", **options) for f in ("tags.jsonl", "tags_eval.jsonl")
    )
    multi_hot = [[float(j in ids) for j in range(len(names))] for ids in evaluation["label"]]
    train_hot = np.array([[int(j in ids) for j in range(len(names))] for ids in train["label"]])
    pos_weight = class_weight_vector("balanced", train_hot, names, multi_label=True)
    rows = [{"text": text} for text in evaluation["text"]]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(classifier.logits(rows)), torch.tensor(multi_hot), pos_weight=pos_weight
    )
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert bce.item() == pytest.approx(metrics["loss"], rel=1e-4)
    probabilities, predicted = classifier.predict_proba(rows), classifier.predict(rows)
    assert all(
        set(tags) == {names[j] for j in np.flatnonzero(p >= 0.4)}
        for tags, p in zip(predicted, probabilities, strict=True)
    )
    assert np.array(metrics["confusion_matrix"]).shape == (len(names), 2, 2)


def test_unknown_eval_label_is_a_clear_error_before_any_model_loads(tiny_bert_dir, tmp_path, capsys):
    (tmp_path / "eval.csv").write_text(
        "text,label\nthe cat likes the map.,positive\na dog hates fresh bread.,meh\n"
    )
    code = run_main(
        main,
        train_args(
            tiny_bert_dir,
            tmp_path / "out",
            "--train_data",
            str(sample_path("labeled_sentiment.csv")),
            "--eval_data",
            str(tmp_path / "eval.csv"),
        ),
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "row 2, column 'label': unknown label 'meh'" in error and "negative, positive" in error
    assert not (tmp_path / "out").exists()


def test_two_process_run_trains_on_both_and_saves_once(tiny_bert_dir, tmp_path):
    out = tmp_path / "ddp"
    result = run_multiprocess(
        [
            "-m",
            "train.seq_classify",
            *train_args(
                tiny_bert_dir,
                out,
                "--train_data",
                str(sample_path("labeled_sentiment.csv")),
                "--eval_data",
                str(sample_path("labeled_sentiment_eval.csv")),
                "--per_device_train_batch_size",
                "4",
            ),
        ]
    )
    assert re.search(r"world size\s+: 2 \(ddp, cpu\)", result.stdout)
    assert re.search(r"global batch\s+: 8\n", result.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["num_examples"] == 20  # gathered from both processes, no padding duplicates
    rows, labels = eval_rows_and_labels(
        sample_path("labeled_sentiment_eval.csv"), ["text"], ["negative", "positive"]
    )
    assert cross_entropy(SequenceClassifier.load(out).logits(rows), labels) == pytest.approx(
        metrics["eval"]["loss"], rel=1e-4
    )
