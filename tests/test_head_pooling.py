"""``head_pooling: mean``: an encoder's head reads the masked mean of the token states, in training and
after reload; decoders are refused before any weight loads."""

import json

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from data_utils import load, sample_path
from lorasmith.classifiers.head_pooling import pool_mean_into_first_position
from lorasmith.classifiers.sequence import SequenceClassifier
from lorasmith.errors import ConfigError

TEXTS = ["the cat likes the map.", "a dog reads a good book and my friend hates fresh bread.", "no"]


def tiny_encoder(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=3)  # fmt: skip
        return BertForSequenceClassification(config).eval()
    if kind == "distilbert":
        config = DistilBertConfig(vocab_size=300, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=3)
        return DistilBertForSequenceClassification(config).eval()
    config = RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, num_labels=3, pad_token_id=1)  # fmt: skip
    return RobertaForSequenceClassification(config).eval()


def head_on(model, vector: torch.Tensor) -> torch.Tensor:
    """The architecture's own head applied by hand to a (B, H) vector in place of its first-token state."""
    if isinstance(model, BertForSequenceClassification):
        return model.classifier(model.bert.pooler(vector.unsqueeze(1)))
    if isinstance(model, DistilBertForSequenceClassification):
        return model.classifier(torch.relu(model.pre_classifier(vector)))
    return model.classifier(vector.unsqueeze(1))  # RobertaClassificationHead reads features[:, 0]


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_the_head_reads_the_masked_mean_and_ignores_padding(kind):
    model = tiny_encoder(kind)
    input_ids = torch.tensor([[2, 11, 12, 13, 14, 15, 3], [2, 21, 22, 3, 0, 0, 0]])
    attention_mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    backbone = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        states = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        plain = model(input_ids=input_ids, attention_mask=attention_mask).logits
        handle = pool_mean_into_first_position(model)
        pooled = model(input_ids=input_ids, attention_mask=attention_mask).logits
        alone = model(input_ids=input_ids[1:, :4], attention_mask=attention_mask[1:, :4]).logits
        weights = attention_mask.unsqueeze(-1).float()
        expected = head_on(model, (states * weights).sum(dim=1) / weights.sum(dim=1))  # the mean by hand
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone, pooled[1:], rtol=1e-5, atol=1e-6)  # padding does not enter the mean
    assert not torch.allclose(plain, pooled, atol=1e-4)  # [CLS] alone gives other logits
    handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=attention_mask).logits, plain)


def test_gradients_reach_every_token_state_through_the_mean():
    model = tiny_encoder("bert").train()
    pool_mean_into_first_position(model)
    embeddings = model.bert.embeddings.word_embeddings.weight
    input_ids = torch.tensor([[2, 11, 12, 3, 0]])
    loss = model(input_ids=input_ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0]]), labels=torch.tensor([1])).loss
    loss.backward()
    used = embeddings.grad[[2, 11, 12, 3]].abs().sum(dim=-1)
    assert bool((used > 0).all()) and model.classifier.weight.grad.abs().sum() > 0


def test_decoders_are_refused_before_any_weight_loads(tiny_llama_dir, monkeypatch):
    from train.common.args import ModelArguments
    from train.seq_classify import model as seqcls_model

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(seqcls_model, "load_model", no_loading)
    with pytest.raises(ConfigError, match="head_pooling: mean is for encoders.*decoder"):
        seqcls_model.build_classifier(
            ModelArguments(model_name_or_path=str(tiny_llama_dir)), ["a", "b"], "single_label_classification", 0,
            head_pooling="mean",
        )  # fmt: skip


def test_unknown_head_pooling_is_a_config_error(tiny_bert_dir, tmp_path):
    from train.seq_classify import main

    with pytest.raises(ConfigError, match="head_pooling"):
        main(["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(tmp_path / "o"),
              "--train_data", str(sample_path("labeled_sentiment.csv")), "--head_pooling", "cls"])  # fmt: skip


@pytest.mark.slow
def test_seq_classify_trains_a_mean_pooled_head_and_every_reload_applies_it(tiny_bert_dir, tmp_path, capsys):
    from train.seq_classify import main

    out = tmp_path / "mean"
    trainer = main([
        "--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(out),
        "--train_data", str(sample_path("labeled_sentiment.csv")),
        "--eval_data", str(sample_path("labeled_sentiment_eval.csv")),
        "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none",
        "--disable_tqdm", "true", "--seed", "0", "--max_length", "64", "--head_pooling", "mean",
    ])  # fmt: skip
    assert "head reads               : the mean of the token states" in capsys.readouterr().out
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["head_pooling"] == "mean" and manifest["merged"] == "merged"
    card = (out / "README.md").read_text()
    assert "head_pooling: mean" in card and 'pipeline("text-classification"' not in card

    dataset = load(sample_path("labeled_sentiment_eval.csv"), task="labeled", label_names=manifest["labels"])
    rows = [{"text": text} for text in dataset["text"]]
    trained = trainer.predict(trainer.eval_dataset).predictions
    merged = SequenceClassifier.load(out)
    np.testing.assert_allclose(merged.logits(rows), trained, atol=1e-5)
    (out / "lorasmith.json").write_text(json.dumps({**manifest, "merged": None}))  # base + adapter
    np.testing.assert_allclose(SequenceClassifier.load(out).logits(rows), trained, atol=1e-5)

    plain = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()  # no hook: reads [CLS]
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    with torch.no_grad():
        first_token = plain(**tokenizer(list(dataset["text"]), padding=True, return_tensors="pt")).logits
    assert not np.allclose(first_token.numpy(), trained, atol=1e-3)


@pytest.mark.slow
def test_full_fine_tuning_with_a_mean_head_reloads_from_merged(tiny_bert_dir, tmp_path):
    from train.seq_classify import main

    out = tmp_path / "full"
    trainer = main([
        "--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(out),
        "--train_data", str(sample_path("labeled_sentiment.csv")),
        "--eval_data", str(sample_path("labeled_sentiment_eval.csv")),
        "--use_peft", "false", "--full_finetune", "true", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
        "--disable_tqdm", "true", "--seed", "0", "--max_length", "64", "--head_pooling", "mean",
    ])  # fmt: skip
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["head_pooling"] == "mean" and manifest["adapter"] is None and manifest["merged"] == "merged"
    dataset = load(sample_path("labeled_sentiment_eval.csv"), task="labeled", label_names=manifest["labels"])
    trained = trainer.predict(trainer.eval_dataset).predictions
    reloaded = SequenceClassifier.load(out).logits([{"text": text} for text in dataset["text"]])
    np.testing.assert_allclose(reloaded, trained, atol=1e-5)
