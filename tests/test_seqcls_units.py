"""seq_classify building blocks: class weights in the loss, head detection, pair tokenization, label maps."""

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    LlamaConfig,
)

from data_utils import load, sample_path
from lorasmith.classifiers.sequence import decide, probabilities_from_logits
from lorasmith.errors import ConfigError, DataError
from train.common.args import DataArguments, ModelArguments
from train.seq_classify.data import load_splits, tokenize_split
from train.seq_classify.model import build_classifier, classification_skeleton, head_module_names
from train.seq_classify.trainer import ClassificationLoss, class_weight_vector


def test_balanced_class_weights_follow_counts():
    labels = np.array([0, 0, 0, 1])  # 4 rows, 2 classes: N / (L * count)
    assert class_weight_vector("balanced", labels, ["neg", "pos"], False).tolist() == pytest.approx(
        [4 / 6, 2.0]
    )
    multi = np.array([[1, 0], [1, 1], [1, 0], [0, 0]])  # label 0: 3 pos / 1 neg, label 1: 1 pos / 3 neg
    assert class_weight_vector("balanced", multi, ["a", "b"], True).tolist() == pytest.approx([1 / 3, 3.0])
    assert class_weight_vector("1,3", labels, ["neg", "pos"], False).tolist() == [1.0, 3.0]
    assert class_weight_vector(None, labels, ["neg", "pos"], False) is None


def test_class_weights_are_validated():
    labels = np.array([0, 0, 1])
    with pytest.raises(ConfigError, match="3 positive numbers, one per label in id order"):
        class_weight_vector([1, 2], labels, ["a", "b", "c"], False)
    with pytest.raises(ConfigError, match="none for c"):
        class_weight_vector("balanced", labels, ["a", "b", "c"], False)
    with pytest.raises(ConfigError, match="'balanced' or numbers"):
        class_weight_vector("heavy", labels, ["a", "b"], False)


def test_class_weights_change_the_loss_as_expected():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert ClassificationLoss(False)(logits, labels).item() == pytest.approx(per_example.mean().item())
    weights = torch.tensor([1.0, 2.0, 5.0])
    expected = (weights[labels] * per_example).sum() / weights[labels].sum()
    assert ClassificationLoss(False, weights)(logits, labels).item() == pytest.approx(expected.item())
    # up-weighting the class the model gets most wrong raises the loss
    wrong_class = int(per_example.argmax())
    heavier = torch.ones(3).index_fill(0, labels[wrong_class], 10.0)
    assert ClassificationLoss(False, heavier)(logits, labels) > ClassificationLoss(False)(logits, labels)


def test_multi_label_loss_weights_the_positive_term():
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos_weight = torch.tensor([3.0, 0.5])
    p = torch.sigmoid(logits)
    expected = -(pos_weight * targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert ClassificationLoss(True, pos_weight)(logits, targets).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_probabilities_and_decisions():
    logits = np.array([[2.0, 0.0], [0.0, 3.0]])
    probabilities = probabilities_from_logits(logits, multi_label=False)
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert decide(probabilities, False, 0.5).tolist() == [0, 1]
    sigmoid = probabilities_from_logits(logits, multi_label=True)
    assert sigmoid[0].tolist() == pytest.approx([1 / (1 + np.exp(-2.0)), 0.5])
    assert decide(sigmoid, True, 0.6).tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize(
    ("config", "head"),
    [
        (
            BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            ["classifier"],
        ),
        (DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=32), ["pre_classifier", "classifier"]),
        (
            DebertaV2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            ["pooler", "classifier"],
        ),
        (
            LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            ["score"],
        ),
    ],
    ids=["bert", "distilbert", "deberta", "llama"],
)
def test_head_modules_are_found_for_every_architecture(config, head):
    assert head_module_names(classification_skeleton(config)) == head


def test_pair_inputs_are_encoded_as_pairs_and_truncation_is_counted(tiny_bert_dir):
    data = DataArguments(
        task="labeled",
        train_data=str(sample_path("labeled_pairs.csv")),
        text_columns=["sentence1", "sentence2"],
    )
    train, _ = load_splits(data, multi_label=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    split = tokenize_split(train, tokenizer, max_length=16, multi_label=False)
    reference = tokenizer(train[0]["sentence1"], train[0]["sentence2"], truncation=True, max_length=16)
    assert split.dataset[0]["input_ids"] == reference["input_ids"]
    assert reference["input_ids"].count(tokenizer.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]: two segments
    full = [
        len(tokenizer(a, b)["input_ids"]) for a, b in zip(train["sentence1"], train["sentence2"], strict=True)
    ]
    assert split.truncated == sum(n > 16 for n in full) > 0
    assert split.dataset["labels"] == train["label"]


def test_eval_labels_use_the_train_label_map_and_unknown_labels_fail(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    (tmp_path / "eval.csv").write_text("text,label\nnice,pos\nmeh,neutral\n")
    (tmp_path / "eval_ok.csv").write_text("text,label\nawful,neg\n")
    data = DataArguments(train_data=str(tmp_path / "train.csv"), eval_data=str(tmp_path / "eval_ok.csv"))
    train, evaluation = load_splits(data, multi_label=False)
    assert train.features["label"].names == evaluation.features["label"].names == ["neg", "pos"]
    assert evaluation["label"] == [0]  # 'neg' keeps the training id although it is the only eval label
    data.eval_data = str(tmp_path / "eval.csv")
    with pytest.raises(DataError, match=r"eval\.csv, row 2, column 'label': unknown label 'neutral'"):
        load_splits(data, multi_label=False)


def test_multi_label_rows_become_multi_hot_vectors(tiny_bert_dir):
    dataset = load(sample_path("tags.jsonl"), task="labeled", columns={"label": "tags"}, multi_label=True)
    split = tokenize_split(dataset, AutoTokenizer.from_pretrained(tiny_bert_dir), 32, multi_label=True)
    names = dataset.features["label"].feature.names
    first = split.dataset[0]["labels"]
    assert len(first) == len(names) and sorted(names[i] for i, v in enumerate(first) if v == 1.0) == sorted(
        ["docker", "networking", "databases"]
    )


def test_quantized_decoder_keeps_its_score_head_in_full_precision_and_trainable(tiny_llama_dir):
    args = ModelArguments(model_name_or_path=str(tiny_llama_dir), load_in_4bit=True, use_peft=True, lora_r=4)
    built = build_classifier(args, ["a", "b", "c"], "single_label_classification", pad_token_id=3)
    base = built.model.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    score = built.model.base_model.model.score
    assert type(score).__name__ == "ModulesToSaveWrapper"
    trained_score = score.modules_to_save["default"]
    assert isinstance(trained_score, torch.nn.Linear) and trained_score.weight.dtype == torch.float32
    assert trained_score.weight.requires_grad and trained_score.out_features == 3
    assert base.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_a_single_lora_target_module_is_matched_by_name(tiny_bert_dir):
    args = ModelArguments(
        model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=2, lora_target_modules=["query"]
    )
    assert (
        args.lora_target_modules == "query"
    )  # TRL collapses a one-element list; PEFT reads a string as a regex
    built = build_classifier(args, ["a", "b"], "single_label_classification", pad_token_id=0)
    adapted = {
        name.split(".lora_A")[0].rsplit(".", 1)[-1]
        for name, _ in built.model.named_parameters()
        if "lora_A" in name
    }
    assert adapted == {"query"}
    assert built.trained_modules == ["classifier"]
