"""Packed batches of the two classifiers (``packing``): the same logits, loss and gradients as the padded batch.

Sequence classification (tiny BERT with its pooler, pair inputs and ``head_pooling: mean``; tiny Llama reading its
last token, both padding sides) and prompt classification (tiny Llama, the loss on answer tokens through TRL's
fused head), in float64; the start-up check that turns packing off on a model that ignores the packed layout; both
entrypoints end to end: ``padding_share`` logged and below the padded run's, the same losses as ``packing: false``;
the plan's expected padding.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lorasmith.classifiers.head_pooling import pool_mean_into_first_position
from lorasmith.errors import ConfigError
from lorasmith.tokenizer_inputs import positions_from_mask
from train.common.packing import decide_packing, padding_shares
from train.seq_classify.packing import PackedClassifier
from train.seq_classify.packing import packing_problem as seq_packing_problem
from train.sft_classify.packing import PackedCausalLM
from train.sft_classify.packing import packing_problem as sft_packing_problem

TEXTS = [
    "a long review that goes on about the plot and the actors for quite a few words",
    "great",
    "not good at all",
    "the film was fine I guess",
    "bad",
    "an average movie with a good ending",
]
PAIRS = ["the second text", "yes", "a somewhat longer second text here", "no", "ok then", "maybe"]


def tiny_classifier(folder, attention="sdpa", lora=True):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=3, dtype=torch.float64, attn_implementation=attention
    )
    if lora:
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear"))
    return model


def logits_and_grads(model, batch, labels, packed: PackedClassifier | None):
    model.zero_grad()
    if packed is None:
        logits = model(**batch).logits
    else:
        logits = packed.forward(model, batch)[0].logits
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.item(), grads


def assert_same_step(model, batch, labels, pad_id, reference_batch=None):
    model.eval()  # dropout off: the two layouts must then agree to rounding
    reference = logits_and_grads(model, reference_batch or batch, labels, None)
    packed = PackedClassifier(model, pad_id, max_width=batch["input_ids"].shape[1])
    candidate = logits_and_grads(model, batch, labels, packed)
    torch.testing.assert_close(candidate[0], reference[0], rtol=1e-6, atol=1e-9)
    assert candidate[1] == pytest.approx(reference[1], rel=1e-6)
    assert candidate[2].keys() == reference[2].keys() and reference[2]
    for name, grad in reference[2].items():
        torch.testing.assert_close(candidate[2][name], grad, rtol=1e-6, atol=1e-10, msg=name)


@pytest.mark.parametrize("pairs", [False, True])
def test_bert_packed_batch_gives_the_padded_logits_loss_and_gradients(tiny_bert_dir, pairs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = tiny_classifier(tiny_bert_dir)
    batch = tokenizer(TEXTS, PAIRS if pairs else None, padding=True, return_tensors="pt")
    assert ("token_type_ids" in batch) and (batch["token_type_ids"].any() == pairs)
    assert_same_step(model, dict(batch), torch.tensor([0, 1, 2, 0, 1, 2]), tokenizer.pad_token_id)


def test_mean_head_pooling_reads_each_texts_own_mean_when_packed(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3, dtype=torch.float64)
    pool_mean_into_first_position(model)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert_same_step(get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4)), batch, torch.tensor([2, 1, 0] * 2),
                     tokenizer.pad_token_id)  # fmt: skip


# eager attention over a left-padded float64 batch gives the padding rows NaN logits: the reference itself fails
@pytest.mark.parametrize(("attention", "side"), [("sdpa", "left"), ("sdpa", "right"), ("eager", "right")])
def test_llama_head_reads_each_texts_last_token_when_packed(tiny_llama_dir, side, attention):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir, padding_side=side)
    model = tiny_classifier(tiny_llama_dir, attention)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    # the padded reference with each text's own positions (left padding would shift them)
    reference = {**batch, "position_ids": positions_from_mask(batch["attention_mask"])}
    assert_same_step(model, batch, torch.tensor([0, 1, 2, 2, 1, 0]), tokenizer.pad_token_id, reference)


def test_packed_rows_hold_several_texts_and_less_padding(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = tiny_classifier(tiny_bert_dir)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    _, slots = PackedClassifier(model, tokenizer.pad_token_id, 64).forward(model, batch)
    real, padded = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
    assert real <= slots < padded and 1 - real / slots < 0.25 < 1 - real / padded


def sft_batch(tokenizer, texts, side="right"):
    tokenizer.padding_side = side
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :3] = -100  # a prompt: no target
    batch["labels"] = labels
    return batch


def causal_loss_and_grads(model, inputs):
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sft_packed_batch_gives_the_padded_loss_and_gradients(tiny_llama_dir, attention):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64, attn_implementation=attention)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear")).eval()
    batch = sft_batch(tokenizer, TEXTS)
    packer = PackedCausalLM(model, tokenizer.pad_token_id, batch["input_ids"].shape[1])
    packed, chunk = packer.pack(batch)
    assert packed["input_ids"].numel() < batch["input_ids"].numel()
    # the same targets: every supervised token once, no text's first token (the next text's) a target
    assert int((packed["labels"] != -100).sum()) == int((batch["labels"][:, 1:] != -100).sum())
    reference = causal_loss_and_grads(model, batch)
    candidate = causal_loss_and_grads(model, packed)
    assert candidate[0] == pytest.approx(reference[0], rel=1e-6)
    for name, grad in reference[1].items():
        torch.testing.assert_close(candidate[1][name], grad, rtol=1e-6, atol=1e-10, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sft_answer_only_scoring_gives_trls_loss_gradients_and_metrics(tiny_llama_dir, attention):
    """TRL's fused LM head handed only the answer-predicting states of the packed rows (what the trainer runs):
    the padded batch's loss, entropy, token accuracy and gradients, from N scored positions instead of B x W."""
    from trl.trainer.utils import add_fused_lm_head

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64, attn_implementation=attention)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear")).eval()
    batch = sft_batch(tokenizer, TEXTS)
    answer = torch.zeros_like(batch["labels"], dtype=torch.bool)  # the last two tokens of each text: the answer
    for row, length in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
        answer[row, length - 2 : length] = True
    batch["labels"] = batch["labels"].masked_fill(~answer, -100)
    targets = int((batch["labels"][:, 1:] != -100).sum())  # what the padded batch scores (a text's first: never)

    def step(inputs):
        model.zero_grad()
        outputs = model(**inputs, fused_lm_head=True)
        outputs.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return outputs, grads

    reference, reference_grads = step(batch)
    with PackedCausalLM(model, tokenizer.pad_token_id, batch["input_ids"].shape[1]).answer_inputs(batch) as packed:
        assert "labels" not in packed and packed["shift_labels"].shape == (1, targets)
        candidate, candidate_grads = step(packed)
    assert candidate.log_probs.shape == (1, targets) and targets > len(TEXTS)  # only the answers were scored
    assert candidate.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
    assert candidate.entropy.sum().item() == pytest.approx(reference.entropy.sum().item(), rel=1e-6)
    assert int(candidate.is_top1.sum()) == int(reference.is_top1.sum())
    assert candidate_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(candidate_grads[name], grad, rtol=1e-6, atol=1e-10, msg=name)
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape  # the hook is gone with the context


def test_start_up_checks_pass_on_real_attention_and_fail_on_a_model_ignoring_the_mask(tiny_llama_dir, tiny_bert_dir):
    llama_tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert sft_packing_problem(llama, llama_tokenizer, 64) is None
    bert_tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    bert = tiny_classifier(tiny_bert_dir, lora=False).float()
    assert seq_packing_problem(bert, bert_tokenizer, 64) is None

    real_forward = llama.model.forward
    llama.model.forward = lambda *args, attention_mask=None, **kwargs: real_forward(*args, **kwargs)  # no mask
    problem = sft_packing_problem(llama, llama_tokenizer, 64)
    assert problem and "differently from padded ones" in problem


def test_decide_packing_follows_the_key_and_the_check(caplog):
    assert decide_packing(None, lambda: None, "x") is True
    assert decide_packing(False, lambda: pytest.fail("no check when off"), "x") is False
    with caplog.at_level(logging.WARNING):
        assert decide_packing(None, lambda: "its attention ignores the mask", "x") is False
    assert "packing off" in caplog.text and "ignores the mask" in caplog.text
    with pytest.raises(ConfigError, match="packing: true, but its attention ignores the mask"):
        decide_packing(True, lambda: "its attention ignores the mask", "x")
    # sharded parameters: no forward can run before the trainer wraps the model, so no check, no packing
    assert decide_packing(None, lambda: pytest.fail("no forward"), "x", sharded="DeepSpeed ZeRO-3") is False
    with pytest.raises(ConfigError, match="DeepSpeed ZeRO-3 shards the parameters"):
        decide_packing(True, lambda: None, "x", sharded="DeepSpeed ZeRO-3")


def test_expected_padding_matches_the_batches_it_describes():
    lengths = [3, 40, 5, 7, 12, 9, 30, 4, 6, 8] * 10
    padded, packed = padding_shares(lengths, batch_size=10, max_width=64, seed=1)
    assert padded > 0.5 and packed < 0.15  # a long text pads a whole random batch; packed rows do not
    grouped, _ = padding_shares(lengths, batch_size=10, max_width=64, seed=1, group_by_length=True)
    assert grouped < padded


# ---- the entrypoints end to end ----


def logged(trainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry]


def assert_less_padding(packed: list[float], padded: list[float]) -> None:
    """Every packed step pads at most what the same padded batch pads (a batch of equal lengths pads neither)."""
    assert len(packed) == len(padded) and all(p <= q + 1e-9 for p, q in zip(packed, padded, strict=True))
    assert sum(packed) < 0.5 * sum(padded), (packed, padded)


def dropout_free_bert(tiny_bert_dir, tmp_path):
    """The tiny BERT without dropout: two runs that batch differently must then compute the same steps."""
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def seq_args(model_dir, output_dir, *extra):
    from test_seqcls_train import train_args

    from data_utils import sample_path

    return train_args(model_dir, output_dir, "--train_data", str(sample_path("labeled_sentiment.csv")),
                      "--max_steps", "6", "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no",
                      "--load_best_model_at_end", "false", "--lora_dropout", "0", "--max_length", "160", *extra)  # fmt: skip


@pytest.mark.slow
def test_seq_classify_packs_by_default_with_the_losses_of_padded_batches(tiny_bert_dir, tmp_path, capsys):
    from train.seq_classify import main

    model_dir = dropout_free_bert(tiny_bert_dir, tmp_path)  # rows up to max_length 160: 3-4 of its texts each
    packed = main(seq_args(model_dir, tmp_path / "packed"))
    plan = capsys.readouterr().out
    padded = main(seq_args(model_dir, tmp_path / "padded", "--packing", "false"))
    assert packed.packed is not None and padded.packed is None
    assert re.search(r"padding\s+: 0\.\d\d \(packed rows; padded: 0\.\d\d\) of the token slots", plan)
    assert logged(packed, "loss") == pytest.approx(logged(padded, "loss"), rel=1e-4)
    assert len(logged(packed, "loss")) == 6
    assert_less_padding(logged(packed, "padding_share"), logged(padded, "padding_share"))
    assert min(logged(packed, "tokens_per_second")) > 0 and min(logged(packed, "examples_per_second")) > 0


@pytest.mark.slow
def test_sft_classify_packs_by_default_with_the_losses_of_padded_batches(tiny_llama_dir, tmp_path):
    from test_sft_classify import recipe

    from train.sft_classify import main

    data = sft_data(tmp_path)
    settings = {"max_steps": 4, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no", "max_length": 160,
                "load_best_model_at_end": False, "lora_dropout": 0.0, "eval_data": None}  # fmt: skip
    packed = main(["--config", recipe(tmp_path / "a", tiny_llama_dir, data, **settings)])
    padded = main(["--config", recipe(tmp_path / "b", tiny_llama_dir, data, **settings), "--packing", "false"])
    assert packed.packed is not None and padded.packed is None and packed.args.packing is False  # TRL's is off
    assert logged(packed, "loss") == pytest.approx(logged(padded, "loss"), rel=1e-4)
    assert_less_padding(logged(packed, "padding_share"), logged(padded, "padding_share"))
    assert logged(packed, "num_tokens") == logged(padded, "num_tokens")  # TRL's count of real tokens


def sft_data(tmp_path):
    """Rows of very different lengths (so batches pad), two labels."""
    from test_sft_classify import write_rows

    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    long = [f"the team says our model likes {' and '.join(['clean data'] * k)}.,negative" for k in range(1, 9)]
    train = write_rows(tmp_path / "train.csv", ["likes", "loves"], "positive", extra=long)
    return {"train": str(train), "eval": None}


@pytest.mark.slow
def test_sft_two_processes_log_the_losses_of_one_with_the_double_batch(tiny_llama_dir, tmp_path):
    """Per-token loss over both processes' answer tokens (TRL's num_items_in_batch): 2 x 4 rows = 1 x 8 rows."""
    from multiproc import run_multiprocess
    from test_sft_classify import recipe

    data = sft_data(tmp_path)
    settings = {"max_steps": 3, "save_steps": 3, "logging_steps": 1, "eval_strategy": "no", "lora_dropout": 0.0,
                "load_best_model_at_end": False, "eval_data": None}  # fmt: skip
    one = recipe(tmp_path / "a", tiny_llama_dir, data, per_device_train_batch_size=8, **settings)
    two = recipe(tmp_path / "b", tiny_llama_dir, data, per_device_train_batch_size=4, **settings)
    single = run_multiprocess(["-m", "train.sft_classify", "--config", one], num_processes=1)
    double = run_multiprocess(["-m", "train.sft_classify", "--config", two])
    assert re.search(r"world size\s+: 2 \(ddp, cpu\)", double.stdout)
    assert re.search(r"global batch\s+: 8\n", double.stdout) and re.search(r"global batch\s+: 8\n", single.stdout)
    one_losses, two_losses = (state_losses(tmp_path / name / "out", 3) for name in ("a", "b"))
    assert len(one_losses) == 3 and two_losses == pytest.approx(one_losses, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_packed_sft_run_resumes_after_kill_9_with_the_uninterrupted_losses(tiny_llama_dir, tmp_path, sampling):
    import signal
    import subprocess
    import sys

    import multiproc
    from test_resume_exact import KILL_EMBED
    from test_sft_classify import recipe

    data = sft_data(tmp_path)
    settings = {"max_steps": 6, "save_steps": 2, "logging_steps": 1, "eval_strategy": "no", "lora_dropout": 0.3,
                "load_best_model_at_end": False, "eval_data": None, "per_device_train_batch_size": 4,
                "train_sampling_strategy": sampling}  # fmt: skip
    script = KILL_EMBED.replace("train.embed", "train.sft_classify")

    def train(name: str, kill_at: int = -1) -> subprocess.CompletedProcess:
        config = recipe(tmp_path / name, tiny_llama_dir, data, **settings)
        return subprocess.run([sys.executable, "-c", script, "--config", config], cwd=multiproc.REPO,
                              capture_output=True, text=True, env=multiproc.test_env(KILL_AT_STEP=str(kill_at)),
                              timeout=600)  # fmt: skip

    (tmp_path / "base").mkdir()
    (tmp_path / "cut").mkdir()
    assert train("base").returncode == 0
    assert train("cut", kill_at=5).returncode == -signal.SIGKILL
    resumed = train("cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    losses = {name: state_losses(tmp_path / name / "out", 6) for name in ("base", "cut")}
    assert len(losses["base"]) == 6 and losses["cut"] == losses["base"]


def state_losses(output_dir, step: int) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("entrypoint", ["seq_classify", "sft_classify"])
def test_length_grouped_batches_pad_less_than_random_ones(entrypoint, tiny_bert_dir, tiny_llama_dir, tmp_path, capsys):
    """transformers' ``train_sampling_strategy: group_by_length`` (sorted buckets of shuffled mega-batches, of
    up to 50 batches: 10 here): the plan says so, and padded batches pad less than random ones."""
    import random

    rng = random.Random(0)
    rows = [f"{' '.join(rng.choices(['good', 'plot', 'actors', 'the', 'film'], k=rng.randint(1, 30)))},"
            f"{rng.choice(['positive', 'negative'])}" for _ in range(320)]  # fmt: skip
    (tmp_path / "varied.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    if entrypoint == "seq_classify":
        from train.seq_classify import main

        def run(name, *extra):
            return main(seq_args(tiny_bert_dir, tmp_path / name, "--packing", "false",
                                 "--train_data", str(tmp_path / "varied.csv"), *extra))  # fmt: skip
    else:
        from test_sft_classify import recipe

        from train.sft_classify import main

        data = {"train": str(tmp_path / "varied.csv"), "eval": None}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        settings = {"max_steps": 6, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no",
                    "load_best_model_at_end": False, "eval_data": None, "packing": False}  # fmt: skip

        def run(name, *extra):
            return main(["--config", recipe(tmp_path / name, tiny_llama_dir, data, **settings), *extra])

    random_batches = run("a")
    capsys.readouterr()
    grouped = run("b", "--train_sampling_strategy", "group_by_length")
    assert "length-grouped batches" in capsys.readouterr().out
    random_share, grouped_share = (logged(t, "padding_share") for t in (random_batches, grouped))
    assert sum(grouped_share) < 0.5 * sum(random_share), (grouped_share, random_share)
