"""Long documents: head_tail truncation, chunked windows with pooled logits, the plan's counts, and the
strategy recorded in lorasmith.json and applied again at prediction (seq_classify and sft_classify)."""

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoTokenizer

from data_utils import load
from lorasmith.classifiers.sequence import pool_window_logits
from lorasmith.errors import ConfigError
from lorasmith.prompts import PromptSpec, encode_choices, fit_row
from lorasmith.tokenizer_inputs import (
    LongTextOptions,
    document_windows,
    encode_long_texts,
    head_tail_counts,
)
from train.seq_classify.chunks import WindowCollator

LONG = " ".join(["the cat likes the map", "a dog reads a good book", "my friend hates fresh bread"] * 3)


def test_head_tail_counts_follow_sun_et_al_and_scale_with_the_budget():
    assert head_tail_counts(510, None, None) == (128, 382)  # BERT's 512 minus [CLS]/[SEP]
    assert head_tail_counts(254, None, None) == (64, 190)  # max_length 256
    assert head_tail_counts(100, 30, None) == (30, 70)
    assert head_tail_counts(100, None, 30) == (70, 30)
    assert head_tail_counts(100, 10, 20) == (10, 20)  # both set and fitting: exactly them
    assert head_tail_counts(30, 10, 20) == (10, 20)
    assert head_tail_counts(15, 10, 20) == (5, 10)  # too many for the budget: split in their ratio


def test_head_tail_keeps_exactly_first_h_and_last_t_tokens_plus_specials(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    content = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(content) > 40
    options = LongTextOptions(truncation="head_tail", head_tokens=4, tail_tokens=10)
    encoding = encode_long_texts(tokenizer, [LONG, "the cat likes the map."], 16, options)
    (long_ids,), (short_ids,) = encoding.sequences
    assert long_ids == [tokenizer.cls_token_id, *content[:4], *content[-10:], tokenizer.sep_token_id]
    assert short_ids == tokenizer("the cat likes the map.")["input_ids"]  # short text: unchanged
    assert encoding.cut == [True, False]


def test_document_windows_cover_the_text_with_the_given_overlap():
    ids = list(range(23))
    windows = document_windows(ids, width=8, overlap=3, max_chunks=10)
    assert windows == [list(range(0, 8)), list(range(5, 13)), list(range(10, 18)), list(range(15, 23))]
    assert sorted({i for window in windows for i in window}) == ids
    for before, after in zip(windows, windows[1:], strict=False):
        assert len(set(before) & set(after)) == 3
    assert document_windows(list(range(8)), 8, 3, 10) == [list(range(8))]  # fits: one window
    assert document_windows([], 8, 3, 10) == [[]]
    # capped: the first max_chunks - 1 windows and the window ending on the last token
    assert document_windows(ids, 8, 3, 3) == [list(range(0, 8)), list(range(5, 13)), list(range(15, 23))]
    with pytest.raises(ConfigError, match="chunk_overlap"):
        document_windows(ids, 8, 8, 3)


def test_chunk_windows_get_the_special_tokens_and_count_capped_rows(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    content = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    options = LongTextOptions(long_documents="chunks", chunk_overlap=2, max_chunks=3)
    encoding = encode_long_texts(tokenizer, [LONG, "a dog."], 10, options)  # 8 text tokens per window
    long_windows, short_windows = encoding.sequences
    assert [w[1:-1] for w in long_windows] == document_windows(content, 8, 2, 3)
    assert all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in long_windows)
    assert short_windows == [tokenizer("a dog.")["input_ids"]]
    assert encoding.capped == [True, False] and encoding.cut == [True, False]


def test_pooled_logits_equal_mean_and_max_of_the_window_logits_by_hand():
    logits = torch.tensor([[1.0, -2.0], [3.0, 0.0], [0.5, 0.5], [-1.0, 4.0], [2.0, 2.0]], requires_grad=True)
    document_index = torch.tensor([0, 0, 1, 2, 2])
    mean = pool_window_logits(logits, document_index, 3, "mean")
    maximum = pool_window_logits(logits, document_index, 3, "max")
    assert mean.tolist() == [[2.0, -1.0], [0.5, 0.5], [0.5, 3.0]]
    assert maximum.tolist() == [[3.0, 0.0], [0.5, 0.5], [2.0, 4.0]]
    mean.sum().backward()  # the loss is on pooled logits: gradients reach every window
    assert logits.grad.tolist() == [[0.5, 0.5], [0.5, 0.5], [1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]


def test_window_collator_flattens_documents_and_indexes_them(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = WindowCollator(tokenizer)(
        [{"input_ids": [[2, 5, 3], [2, 6, 7, 3]], "labels": 1}, {"input_ids": [[2, 8, 3]], "labels": 0}]
    )
    assert batch["input_ids"].shape == (3, 4) and batch["attention_mask"].sum().item() == 10
    assert batch["document_index"].tolist() == [0, 0, 1] and batch["labels"].tolist() == [1, 0]


def test_long_text_options_refuse_bad_combinations():
    with pytest.raises(ConfigError, match="truncation must be one of"):
        LongTextOptions(truncation="middle")
    with pytest.raises(ConfigError, match="cannot apply too"):
        LongTextOptions(truncation="head_tail", long_documents="chunks")
    with pytest.raises(ConfigError, match="both 0"):
        LongTextOptions(truncation="head_tail", head_tokens=0, tail_tokens=0)


def test_prompt_head_tail_cuts_only_the_text_and_keeps_template_and_answer(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    spec = PromptSpec(
        template="Review: {text}\nSentiment?",
        verbalizers={"negative": "bad", "positive": "good"},
        system_message="You classify reviews.",
        format="chat",
        max_length=96,  # the tiny vocabulary spends ~67 tokens on the chat template and system message
        truncation="head_tail",
    )
    text_ids = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    fitted = fit_row(tokenizer, spec, {"text": LONG}, answer_tokens=4)
    kept = tokenizer(fitted["text"], add_special_tokens=False)["input_ids"]
    assert len(kept) < len(text_ids)
    head, tail = head_tail_counts(len(kept), None, None)  # 128 : 382 of the kept tokens
    assert head >= 1 and tail > head
    assert kept[:head] == text_ids[:head] and kept[len(kept) - tail :] == text_ids[len(text_ids) - tail :]
    assert fitted["text"].endswith("fresh bread") and fitted["text"].startswith("the cat")
    choices = encode_choices(tokenizer, spec, fitted)
    prompt = tokenizer.decode(choices["positive"].input_ids[: choices["positive"].completion_start])
    assert "You classify reviews." in prompt and "Review: " in prompt and "\nSentiment?" in prompt
    short = encode_choices(tokenizer, spec, {"text": "a dog."})
    assert choices["positive"].completion_ids == short["positive"].completion_ids  # the answer is intact
    assert len(choices["positive"].input_ids) <= 96
    end_spec = PromptSpec(**{**spec.to_dict(), "truncation": "end"})
    assert fit_row(tokenizer, end_spec, {"text": LONG}, 4)["text"].startswith("the cat")
    assert not fit_row(tokenizer, end_spec, {"text": LONG}, 4)["text"].endswith("fresh bread")
    assert PromptSpec.from_dict(spec.to_dict()) == spec  # what lorasmith.json carries, read back


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """Short reviews the tiny vocabulary knows (label by verb) plus 4 long ones: every strategy has rows to touch
    and rows to leave alone. Train: 20 short + 4 long rows; eval: 8 short + 4 long."""
    folder = tmp_path_factory.mktemp("long-data")
    verbs = {"likes": "positive", "loves": "positive", "hates": "negative", "finds": "negative"}
    short = [(f"{s} {v} {o}.", label) for s in ("the cat", "a dog", "my friend") for v, label in verbs.items()
             for o in ("the map", "fresh bread")]  # fmt: skip
    long = [(f"{LONG} {s}.", label) for s, label in (("yes", "positive"), ("no", "negative"))] * 2
    for name, rows in (("train", short[:20] + long), ("eval", short[-8:] + long)):
        lines = [json.dumps({"text": text, "label": label}) for text, label in rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl")}


def seqcls_args(model_dir, output_dir, data, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
        "--train_data", data["train"], "--eval_data", data["eval"], "--labels", "negative,positive",
        "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "5", "--learning_rate", "5e-3",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--max_length", "16",
        "--export_merged", "false", *extra,
    ]  # fmt: skip


def test_seq_classify_plan_counts_the_rows_each_strategy_touches(tiny_bert_dir, tmp_path, long_data, capsys):
    from train.seq_classify import main

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = [row["text"] for row in load(long_data["train"], task="labeled")]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    budget = 14  # max_length 16 minus [CLS] and [SEP]
    main(
        seqcls_args(
            tiny_bert_dir, tmp_path / "ht", long_data, "--truncation", "head_tail", "--dry_run", "true"
        )
    )
    longer = sum(n > budget for n in lengths)
    assert longer == 4 and len(texts) == 24
    assert f"head_tail: {longer} of {len(texts)} train rows longer than 14 tokens cut in the middle" in (
        capsys.readouterr().out
    )
    args = ["--long_documents", "chunks", "--chunk_overlap", "4", "--max_chunks", "3", "--dry_run", "true"]
    main(seqcls_args(tiny_bert_dir, tmp_path / "ch", long_data, *args))
    windows = [min(len(document_windows(list(range(n)), budget, 4, 3)), 3) for n in lengths]
    capped = sum(n > budget + 10 * 2 for n in lengths)
    assert (
        f"chunks: {len(texts)} train rows -> {sum(windows)} windows, max 3 per row ({capped} capped at max_chunks 3)"
        in capsys.readouterr().out
    )


def test_seq_classify_refuses_long_text_strategies_it_cannot_apply(tiny_bert_dir, tmp_path, long_data):
    from train.seq_classify import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"a": "the cat.", "b": LONG, "label": y}) + "\n" for y in ("yes", "no"))
    )
    pair_data = {"train": str(pairs), "eval": str(pairs)}
    pair = ["--text_columns", "a,b", "--labels", "no,yes", "--truncation", "head_tail", "--dry_run", "true"]
    with pytest.raises(ConfigError, match="read one text column"):
        main(seqcls_args(tiny_bert_dir, tmp_path / "a", pair_data, *pair))
    with pytest.raises(ConfigError, match="exceed the 14 text tokens"):
        args = [
            "--truncation",
            "head_tail",
            "--head_tokens",
            "10",
            "--tail_tokens",
            "10",
            "--dry_run",
            "true",
        ]
        main(seqcls_args(tiny_bert_dir, tmp_path / "b", long_data, *args))


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_seq_classify_chunks_train_and_predict_agree(tiny_bert_dir, tmp_path, long_data, pooling):
    from eval.classify import evaluate_classifier
    from lorasmith.classifiers.sequence import SequenceClassifier
    from train.seq_classify import main

    out = tmp_path / "chunks"
    args = [
        "--long_documents",
        "chunks",
        "--chunk_overlap",
        "4",
        "--max_chunks",
        "3",
        "--chunk_pooling",
        pooling,
    ]
    trainer = main(seqcls_args(tiny_bert_dir, out, long_data, *args))
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["long_text"]["long_documents"] == "chunks"
    assert manifest["long_text"]["chunk_pooling"] == pooling and manifest["long_text"]["max_chunks"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["eval_windows"] > metrics["data"]["eval_rows"]

    trained = trainer.predict(trainer.eval_dataset).predictions  # (N, 2) pooled in the trainer
    classifier = SequenceClassifier.load(out)
    assert classifier.long_text.chunks
    rows = [{"text": row["text"]} for row in load(long_data["eval"], task="labeled")]
    np.testing.assert_allclose(classifier.logits(rows, batch_size=3), trained, atol=1e-5)
    result = evaluate_classifier(classifier, long_data["eval"])
    assert result["accuracy"] == pytest.approx(100 * metrics["eval"]["accuracy"])


@pytest.mark.slow
def test_seq_classify_head_tail_is_recorded_and_applied_by_eval_classify(tiny_bert_dir, tmp_path, long_data):
    from lorasmith.classifiers import load_classifier
    from train.seq_classify import main

    out = tmp_path / "ht"
    trainer = main(
        seqcls_args(tiny_bert_dir, out, long_data, "--truncation", "head_tail", "--head_tokens", "3")
    )
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["long_text"]["truncation"] == "head_tail" and manifest["long_text"]["head_tokens"] == 3
    classifier = load_classifier(out)
    rows = [{"text": row["text"]} for row in load(long_data["eval"], task="labeled")]
    trained = trainer.predict(trainer.eval_dataset).predictions
    np.testing.assert_allclose(classifier.logits(rows), trained, atol=1e-6)
    texts = [row["text"] for row in rows]
    read = encode_long_texts(classifier.tokenizer, texts, 16, classifier.long_text).sequences
    assert [sequences[0] for sequences in read] == trainer.eval_dataset["input_ids"]  # the trainer's tokens
    end_cut = classifier.tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert (
        end_cut[:8] == trainer.eval_dataset["input_ids"][:8]
        and end_cut[-4:] != trainer.eval_dataset["input_ids"][-4:]
    )


@pytest.mark.slow
def test_sft_classify_head_tail_is_recorded_and_label_scoring_applies_it(
    tiny_llama_dir, tmp_path, long_data, capsys
):
    from eval.classify import evaluate_classifier
    from lorasmith.classifiers.prompt import PromptClassifier
    from train.sft_classify import main

    recipe = {
        "model_name_or_path": str(tiny_llama_dir), "train_data": long_data["train"], "eval_data": long_data["eval"],
        "labels": {"negative": "bad", "positive": "good"}, "template": "Review: {text}\nSentiment?",
        "truncation": "head_tail", "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"], "max_length": 64, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "max_steps": 3, "eval_strategy": "no", "save_steps": 100,
        "load_best_model_at_end": False, "learning_rate": 0.01, "activation_checkpointing": False,
        "report_to": "none", "export_merged": False, "disable_tqdm": True, "output_dir": str(tmp_path / "out"),
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    trainer = main(["--config", str(path)])
    assert (
        "head_tail: 4 of 24 train rows longer than max_length 64 tokens cut in the middle"
        in capsys.readouterr().out
    )
    manifest = json.loads((tmp_path / "out" / "lorasmith.json").read_text())
    assert manifest["prompt"]["truncation"] == "head_tail"
    classifier = PromptClassifier.load(tmp_path / "out")
    assert classifier.spec == trainer.prompt_spec
    result = evaluate_classifier(classifier, long_data["eval"])
    assert result["accuracy"] == pytest.approx(100 * trainer.classification_report()["accuracy"])

    recipe.update(output_dir=str(tmp_path / "chunks"), long_documents="chunks", truncation="end")
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="'long_documents' does not apply to python -m train.sft_classify"):
        main(["--config", str(path)])
