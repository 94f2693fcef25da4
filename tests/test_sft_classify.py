"""train.sft_classify end to end on the tiny Llama (CPU): LoRA, 4-bit + plain prompts, label scoring, reload, guards."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml

from lorasmith.errors import ConfigError, DataError
from lorasmith.prompts import PromptSpec

SUBJECTS = ["the cat", "a dog", "my friend", "the team", "our model", "a user"]
OBJECTS = ["the map", "a good book", "fresh bread", "great music", "clean data"]


def write_rows(path, verbs, label, extra=()):
    lines = (
        ["text,label"]
        + [f"{s} {v} {o}.,{label}" for s in SUBJECTS for v in verbs for o in OBJECTS]
        + list(extra)
    )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training rows all labeled 'positive' (the label the model is taught to prefer); eval rows of both labels."""
    folder = tmp_path_factory.mktemp("sft-data")
    train = write_rows(folder / "train.csv", ["likes", "loves"], "positive")
    eval_rows = ["text,label"] + [f"{s} hates {o}.,negative" for s in SUBJECTS[:3] for o in OBJECTS[:2]]
    eval_rows += [f"{s} likes {o}.,positive" for s in SUBJECTS[:3] for o in OBJECTS[:2]]
    (folder / "eval.csv").write_text("\n".join(eval_rows) + "\n")
    return {"train": str(train), "eval": str(folder / "eval.csv")}


def recipe(tmp_path, model_dir, data, **overrides) -> str:
    values = {
        "model_name_or_path": str(model_dir),
        "train_data": data["train"],
        "eval_data": data["eval"],
        "labels": {"negative": "bad", "positive": "good"},
        "template": "Review: {text}\nSentiment?",
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "max_length": 64,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "max_steps": 8,
        "eval_steps": 4,
        "save_steps": 4,
        "logging_steps": 4,
        "learning_rate": 0.02,
        "activation_checkpointing": False,
        "report_to": "none",
        "export_merged": False,
        "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def eval_rows(path):
    import csv

    with open(path) as stream:
        return [{"text": row["text"]} for row in csv.DictReader(stream)]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama_dir, data):
    from train.sft_classify import main

    folder = tmp_path_factory.mktemp("sft-lora")
    trainer = main(
        ["--config", recipe(folder, tiny_llama_dir, data, export_merged=True, eval_before_training=True)]
    )
    return trainer, folder / "out"


def test_lora_run_writes_every_artifact(lora_run):
    _, out = lora_run
    for name in (
        "adapter/adapter_config.json",
        "merged/config.json",
        "lorasmith.json",
        "metrics.json",
        "README.md",
        "recipe.yaml",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["kind"] == "prompt_classifier" and manifest["labels"] == ["negative", "positive"]
    assert manifest["prompt"]["verbalizers"] == {"negative": "bad", "positive": "good"}
    assert manifest["prompt"]["format"] == "chat" and manifest["text_columns"] == ["text"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"before", "eval", "train"}
    assert metrics["eval"]["confusion_matrix"] == [[0, 6], [0, 6]]  # everything 'positive', as trained
    assert "f1_macro" in metrics["eval"] and "ece" in metrics["eval"] and "loss" in metrics["eval"]


def test_label_scoring_picks_the_label_the_model_was_trained_to_prefer(lora_run, tiny_llama_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorasmith.classifiers.prompt import PromptClassifier

    trainer, out = lora_run
    rows = eval_rows(data["eval"])
    spec = PromptSpec.from_dict(json.loads((out / "lorasmith.json").read_text())["prompt"])
    untrained = PromptClassifier.from_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        AutoTokenizer.from_pretrained(tiny_llama_dir),
        spec,
    )
    before = untrained.predict_proba(rows)[:, 1]
    after = trainer.classifier().predict_proba(rows)
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-9)
    assert before.max() < 0.55 and after[:, 1].min() > 0.7, (before.max(), after[:, 1].min())
    assert trainer.classifier().predict(rows) == ["positive"] * len(rows)


def test_label_likelihood_is_the_sum_of_answer_token_log_probs(lora_run, data):
    """Independent reference: full forward on prompt + answer, sum of the answer tokens' log-probabilities."""
    from lorasmith.prompts import encode_choices

    trainer, _ = lora_run
    classifier = trainer.classifier()
    row = eval_rows(data["eval"])[0]
    expected = []
    for encoded in encode_choices(classifier.tokenizer, classifier.spec, row).values():
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(classifier.model(input_ids=ids).logits[0].float(), -1)
        expected.append(
            sum(log_probs[t - 1, ids[0, t]].item() for t in range(encoded.completion_start, ids.shape[1]))
        )
    got = classifier.label_log_likelihoods([row, eval_rows(data["eval"])[-1]], batch_size=2)[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_save_reload_gives_identical_predictions(lora_run, data, tmp_path):
    from lorasmith.classifiers.prompt import PromptClassifier

    trainer, out = lora_run
    rows = eval_rows(data["eval"])
    in_memory = trainer.classifier().predict_proba(rows)
    merged = PromptClassifier.load(out)
    np.testing.assert_allclose(merged.predict_proba(rows), in_memory, atol=1e-5)
    adapter_only = tmp_path / "adapter_only"
    shutil.copytree(out, adapter_only, ignore=shutil.ignore_patterns("merged", "checkpoint-*"))
    reloaded = PromptClassifier.load(adapter_only)
    np.testing.assert_allclose(reloaded.predict_proba(rows), in_memory, atol=1e-5)
    assert reloaded.predict(rows) == trainer.classifier().predict(rows)


def test_4bit_lora_with_plain_prompts(tmp_path, tiny_llama_dir, data):
    """A tokenizer without chat template -> plain prompt-completion; the base is nf4 (bitsandbytes on CPU)."""
    from transformers import AutoTokenizer

    from train.sft_classify import main

    model_dir = tmp_path / "no-chat-template"
    shutil.copytree(tiny_llama_dir, model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(model_dir)
    trainer = main(
        [
            "--config",
            recipe(tmp_path, model_dir, data, load_in_4bit=True, max_steps=2, eval_steps=2, save_steps=2),
        ]
    )
    linear_types = {type(m).__name__ for m in trainer.model.modules()}
    assert "Linear4bit" in linear_types
    assert all(
        p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad
    )  # fp32 LoRA on CPU
    manifest = json.loads((tmp_path / "out" / "lorasmith.json").read_text())
    assert manifest["prompt"]["format"] == "plain" and manifest["merged"] is None
    train_loss = json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]["train_loss"]
    assert np.isfinite(train_loss) and train_loss > 0


def test_row_that_cannot_fit_is_an_error_naming_it(tmp_path, tiny_llama_dir, data):
    from train.sft_classify import main

    long_prompt = "Read the review and answer with one word only. " * 3 + "{text}"
    with pytest.raises(DataError, match=r"train.csv, row 1: the prompt does not fit max_length=40"):
        main(
            [
                "--config",
                recipe(tmp_path, tiny_llama_dir, data, template=long_prompt, max_length=40, dry_run=True),
            ]
        )


def test_indistinguishable_answers_are_refused(tmp_path, tiny_llama_dir, data):
    from train.sft_classify import main

    with pytest.raises(ConfigError, match="share an answer"):
        main(
            [
                "--config",
                recipe(
                    tmp_path, tiny_llama_dir, data, labels={"negative": "ok", "positive": "ok"}, dry_run=True
                ),
            ]
        )


def test_batch_without_supervised_tokens_is_an_error(lora_run):
    trainer, _ = lora_run
    batch = {
        "input_ids": torch.ones((2, 5), dtype=torch.long),
        "attention_mask": torch.ones((2, 5), dtype=torch.long),
        "labels": torch.full((2, 5), -100),
    }
    with pytest.raises(DataError, match="no supervised answer token"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path, tiny_llama_dir, data):
    """2 gloo processes (world size asserted by the entrypoint); sharded scoring equals one-process scoring."""
    from multiproc import run_multiprocess

    from eval.metrics.classification import classification_metrics
    from lorasmith.classifiers.prompt import PromptClassifier

    result = run_multiprocess(
        [
            "-m",
            "train.sft_classify",
            "--config",
            recipe(tmp_path, tiny_llama_dir, data, max_steps=2, eval_steps=2, save_steps=2),
        ]
    )
    assert ": 2 (ddp, cpu)" in result.stdout and re.search(r"global batch\s+: 16\n", result.stdout)
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    rows = eval_rows(data["eval"])
    gold = [0] * 6 + [1] * 6
    probabilities = PromptClassifier.load(out).predict_proba(rows)
    single = classification_metrics(
        gold, probabilities.argmax(axis=1), ["negative", "positive"], probabilities
    )
    for key in ("accuracy", "f1_macro", "confusion_matrix", "num_examples"):
        assert metrics[key] == single[key], key
    assert metrics["ece"] == pytest.approx(single["ece"], abs=1e-5)


@pytest.mark.parametrize("name", ["sft_quickstart", "sft_qlora", "sft_geo_requirements"])
def test_shipped_recipes_parse(name):
    from lorasmith.recipe_parser import parse_recipe
    from train.sft_classify import make_parser

    data, model, _, training = parse_recipe(make_parser(), ["--config", f"configs/classify/{name}.yaml"])
    assert data.train_data and data.eval_data and model.use_peft and training.template
    assert isinstance(data.labels, dict) and training.metric_for_best_model == "f1_macro"
