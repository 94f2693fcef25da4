"""Packed forwards (``packing: true``): several texts per row give every text the embedding it gets padded alone.

Layout (``pack_steps``: every text once, in order, rows within their length, forwards within their slot budget;
``pack_chunk``: each text's tokens exactly the tokenizer's, on either padding side), embeddings (tiny BERT with
every pooling mode, tiny Llama with causal attention; SDPA and eager; float64), the start-up check that refuses a
model ignoring the packed positions, config errors, and train.embed end to end (same logged losses as the padded
chunks, less padding). The full-step loss / gradient equality per task, with and without the gradient cache, is
``test_gradient_cache.test_chunked_packed_and_cached_steps_equal_the_plain_step``.
"""

from __future__ import annotations

import random
import re

import pytest
import torch
from test_embed_train import FAST, sentences, write_jsonl

from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from train.common.args import ModelArguments
from train.common.modeling import load_tokenizer
from train.common.packing import attention_pair_cost, pack_steps, row_width
from train.embed import main
from train.embed.collator import ContrastiveCollator, length_sorted_chunks
from train.embed.config import EmbedConfig
from train.embed.model import build_embedding_model
from train.embed.packing import packing_problem, resolve_packing
from train.embed.resolve import resolve_mini_batches
from train.embed.tasks import EMBED_TASKS

MINILM_PAIR_COST = 1 / 384  # attention_pair_cost of a model of hidden size 384, head size 32 (MiniLM)


@pytest.mark.parametrize("seed", range(20))
def test_pack_steps_lays_every_text_once_in_order_within_rows_and_budget(seed):
    rng = random.Random(seed)
    budget, max_width = rng.choice([64, 200, 1000]), rng.choice([16, 64])  # max_width: the run's max_length
    lengths = sorted((min(rng.choice([rng.randint(2, 8), rng.randint(2, 60)]), max_width)
                      for _ in range(rng.randint(1, 90))), reverse=True)  # fmt: skip
    forward_cost = rng.choice([0, 57])
    forwards = pack_steps(lengths, budget, max_width, forward_cost, texts_per_padded_forward=budget // max_width)
    laid = [text for _, rows in forwards for row in rows for text in sorted(row)]
    assert sorted(laid) == list(range(len(lengths)))
    for index, (first, rows) in enumerate(forwards):
        texts = sorted(text for row in rows for text in row)
        end = forwards[index + 1][0] if index + 1 < len(forwards) else len(lengths)
        assert texts == list(range(first, end))  # consecutive: chunk outputs keep the step's order
        width = max(sum(lengths[t] for t in row) for row in rows)
        assert width <= max(min(budget, max_width), lengths[first])
        assert len(rows) * width <= budget or len(rows) == 1
    # never costlier than padded length-sorted chunks at the same price per forward (one of its candidates)
    padded = length_sorted_chunks(lengths, budget // max_width, forward_cost, max_padding_share=1.0)
    assert cost(forwards, lengths, forward_cost) <= sum(lengths[c[0]] * len(c) + forward_cost for c in padded)


def cost(forwards, lengths, forward_cost) -> float:
    return sum(len(rows) * max(sum(lengths[t] for t in row) for row in rows) + forward_cost for _, rows in forwards)


def test_short_texts_pack_into_few_forwards_with_little_padding():
    lengths = [12, 10] + [4] * 60 + [3] * 20  # titles and tags
    forwards = pack_steps(lengths, 32 * 64, 64)
    slots = sum(len(rows) * max(sum(lengths[t] for t in row) for row in rows) for _, rows in forwards)
    assert len(forwards) == 1 and 1 - sum(lengths) / slots < 0.03


@pytest.mark.parametrize("attention_cost", [0.0, MINILM_PAIR_COST])
def test_rows_of_even_fill_leave_no_half_empty_last_row(attention_cost):
    """Batches of 16 prompts of 30-90 tokens in rows of at most 192 (a classifier's batch): measured 0.040 / 0.070
    padding with the even-fill widths, 0.083 / 0.125 with the multiples of the longest text alone."""
    rng = random.Random(0)
    batches = [sorted((rng.randint(30, 90) for _ in range(16)), reverse=True) for _ in range(100)]
    real = slots = 0
    for lengths in batches:
        ((_, rows),) = pack_steps(lengths, 16 * 192, 192, attention_cost=attention_cost)
        assert sorted(text for row in rows for text in row) == list(range(16))
        assert row_width(rows, lengths) <= 192
        real, slots = real + sum(lengths), slots + len(rows) * row_width(rows, lengths)
    assert 1 - real / slots < (0.05 if attention_cost == 0 else 0.09)


def test_attention_cost_prefers_narrow_rows_of_short_texts():
    """32 short sentences (472 tokens): 8 rows of 60 pad least (1.7 %), but 17 rows of 30 (7.5 %) attend to half
    as many positions, which costs more than the padding on a CPU (``attention_pair_cost``)."""
    rng = random.Random(1)
    lengths = sorted((rng.randint(8, 20) for _ in range(32)), reverse=True)
    ((_, wide),) = pack_steps(lengths, 32 * 256, 256)
    ((_, narrow),) = pack_steps(lengths, 32 * 256, 256, attention_cost=MINILM_PAIR_COST)
    assert row_width(narrow, lengths) <= row_width(wide, lengths) / 2
    assert len(wide) * row_width(wide, lengths) < 1.02 * sum(lengths)
    assert len(narrow) * row_width(narrow, lengths) < 1.10 * sum(lengths)  # still under 10 % padding


def test_attention_pair_cost_reads_the_width_and_head_size_of_the_config():
    from transformers import BertConfig, LlamaConfig

    assert attention_pair_cost(BertConfig(hidden_size=384, num_attention_heads=12)) == pytest.approx(MINILM_PAIR_COST)
    smollm2 = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    assert attention_pair_cost(smollm2) == pytest.approx(1 / 2304)  # measured 1 / 1950 on a CPU
    assert attention_pair_cost(BertConfig(hidden_size=32, num_attention_heads=4)) == MINILM_PAIR_COST  # capped


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_bert_dir):
    return load_tokenizer(ModelArguments(model_name_or_path=str(tiny_bert_dir)))


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_rows_hold_each_texts_tokens_with_its_own_positions(bert_tokenizer, side):
    bert_tokenizer.padding_side = side
    try:
        texts = [s * (1 + i % 3) for i, s in enumerate(sentences(7))]
        collator = ContrastiveCollator(bert_tokenizer, EMBED_TASKS["simcse_unsup"], 64, mini_batch_size=4, packing=True)
        batch = collator([{"text": t} for t in texts])
        chunks = collator.chunks(batch)
        expected = bert_tokenizer(texts, truncation=True, max_length=64)["input_ids"]
        order = batch["text_order"].tolist()
        row = 0
        for chunk in chunks:
            flat_ids = chunk["input_ids"].reshape(-1)
            flat_positions = chunk["position_ids"].reshape(-1)
            for k in range(chunk["token_index"].shape[0]):
                n = int(chunk["attention_mask"][k].sum())
                slots = chunk["token_index"][k, :n]
                assert flat_ids[slots].tolist() == expected[order[row] % len(texts)]
                assert flat_positions[slots].tolist() == list(range(n))
                assert (chunk["segments"].reshape(-1)[slots] == k).all()
                row += 1
            padding = chunk["segments"] < 0
            assert (chunk["input_ids"][padding] == bert_tokenizer.pad_token_id).all()
        assert row == len(order)
        padded = ContrastiveCollator(bert_tokenizer, EMBED_TASKS["simcse_unsup"], 64, mini_batch_size=4).chunks(batch)
        assert len(chunks) < len(padded)  # fewer forwards (here: one of <= 4 x 64 slots)
    finally:
        bert_tokenizer.padding_side = "right"


def embeddings_both_ways(model_dir, pooling: str, attention: str, side: str | None = None):
    """(padded, packed) ``(N, D)`` embeddings of texts of mixed lengths, float64, dropout off."""
    args = ModelArguments(model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_dropout=0.0,
                          attn_implementation=attention)  # fmt: skip
    torch.manual_seed(0)
    model = build_embedding_model(args, pooling, True, dropout=0.0).double().eval()
    tokenizer = load_tokenizer(args)
    if side:
        tokenizer.padding_side = side
    rows = [{"text": s * (1 + i % 4)} for i, s in enumerate(sentences(9))]
    padded = ContrastiveCollator(tokenizer, EMBED_TASKS["simcse_unsup"], 48, mini_batch_size=3)
    packed = ContrastiveCollator(tokenizer, EMBED_TASKS["simcse_unsup"], 48, mini_batch_size=3, packing=True)
    batch = padded(rows)
    with torch.no_grad():
        return model(padded.chunks(batch)), model(packed.chunks(batch)), model


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last"])
def test_packed_bert_embeddings_equal_padded_ones(tiny_bert_dir, pooling, attention):
    padded, packed, model = embeddings_both_ways(tiny_bert_dir, pooling, attention)
    assert not model.causal
    assert torch.allclose(packed, padded, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("pooling", "side", "attention"),
    # not last-left-eager: there the padded reference itself is NaN in float64 (a left-padding query row masked
    # to float64's min overflows to -inf, its NaN state reaches the real tokens through the next layer's values)
    [("last", "left", "sdpa"), ("mean", "right", "sdpa"), ("mean", "right", "eager"), ("last", "right", "eager")],
)
def test_packed_llama_embeddings_equal_padded_ones(tiny_llama_dir, pooling, side, attention):
    padded, packed, model = embeddings_both_ways(tiny_llama_dir, pooling, attention, side)
    assert model.causal  # packed rows keep each text's attention causal
    # Llama computes RoPE (and eager softmax) in float32, and the padded reference starts left-padded texts at
    # a later position: equal to float32 rounding, not float64's
    assert torch.allclose(packed, padded, rtol=0, atol=1e-6)


def test_packed_roberta_embeddings_count_positions_from_after_the_padding_index(tiny_bert_dir, tmp_path):
    from transformers import RobertaConfig, RobertaModel

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=str(tiny_bert_dir)))
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    padded, packed, model = embeddings_both_ways(tmp_path, "cls", "sdpa")
    assert model.first_position == tokenizer.pad_token_id + 1
    assert torch.allclose(packed, padded, rtol=0, atol=1e-10)


def test_packing_is_on_where_the_check_passes_off_where_it_fails_and_an_error_when_asked_for(tiny_bert_dir, caplog):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=4)
    model = build_embedding_model(args, "mean", True)
    tokenizer = load_tokenizer(args)
    assert packing_problem(model, tokenizer, 32) is None
    assert model.training  # the check switches dropout off and back
    config = EmbedConfig(mini_batch_size=4)
    assert resolve_packing(config, model, tokenizer, 32) is True
    assert config.packing is None  # the recipe stays as written (a re-run compares it)

    base = model.base_model
    forward = base.forward
    base.forward = lambda *a, position_ids=None, **k: forward(*a, **k)  # an attention without position_ids
    assert "embeds packed texts differently" in packing_problem(model, tokenizer, 32)
    assert resolve_packing(EmbedConfig(mini_batch_size=4), model, tokenizer, 32) is False
    assert "packing off" in caplog.text
    with pytest.raises(ConfigError, match="packing: true, but .* differently .* Set packing: false"):
        resolve_packing(EmbedConfig(mini_batch_size=4, packing=True), model, tokenizer, 32)
    base.forward = lambda *a, position_ids=None, **k: forward(*a, **{**k, "attention_mask": None})  # no mask
    assert "differently" in packing_problem(model, tokenizer, 32)
    base.forward = lambda input_ids=None, attention_mask=None: forward(input_ids, attention_mask)  # no such kwarg
    assert "cannot encode packed rows (TypeError" in packing_problem(model, tokenizer, 32)

    # no mini-batches: nothing to pack, no check
    assert resolve_packing(EmbedConfig(mini_batch_size=0), model, tokenizer, 32) is False


def test_packing_config_errors():
    with pytest.raises(ConfigError, match="packing needs mini_batch_size > 0"):
        EmbedConfig(packing=True, mini_batch_size=0)
    for distribution in ("deepspeed-zero3", "fsdp"):
        with pytest.raises(ConfigError, match="packing and mini_batch_size > 0 cannot run"):
            resolve_mini_batches(EmbedConfig(packing=True), distribution)
    config = resolve_mini_batches(EmbedConfig(packing=True), "ddp")
    assert config.mini_batch_size > 0


def test_train_embed_packed_logs_the_padded_losses_with_less_padding(tiny_bert_dir, tmp_path, capsys):
    rows = [{"text": s * (1 + i % 3), "tags": [s.split()[1]]} for i, s in enumerate(sentences(16))]
    data = write_jsonl(tmp_path / "tags.jsonl", rows)
    common = ["--model_name_or_path", str(tiny_bert_dir), "--task", "tags", "--train_data", data, *FAST,
              "--max_steps", "3", "--dropout", "0", "--lora_dropout", "0", "--export_merged", "false",
              "--mini_batch_size", "4", "--use_peft", "true"]  # fmt: skip
    logs = {}
    for name, extra in {"chunked": ["--packing", "false"], "packed": []}.items():  # packing: on by default
        trainer = main([*common, *extra, "--output_dir", str(tmp_path / name)])
        logs[name] = [log for log in trainer.state.log_history if "loss" in log]
    assert "packed forwards of <= 4 x max_length token slots" in capsys.readouterr().out
    losses = {name: [log["loss"] for log in history] for name, history in logs.items()}
    assert len(losses["chunked"]) == 3 and len(set(losses["chunked"])) > 1
    assert losses["packed"] == pytest.approx(losses["chunked"], rel=1e-5)
    padded = {name: sum(log["padded_tokens"] for log in history) for name, history in logs.items()}
    real = [sum(log["real_tokens"] for log in history) for history in logs.values()]
    assert real[0] == real[1] and real[1] <= padded["packed"] < 1.5 * real[1]
    assert not list((tmp_path / "packed").glob("**/chunker_state_*.json"))


def test_plan_refuses_packing_without_mini_batches(tiny_bert_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "tags.jsonl", [{"text": s, "tags": ["x"]} for s in sentences(8)])
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "tags", "--train_data", data,
            "--output_dir", str(tmp_path / "out"), "--packing", "true", "--mini_batch_size", "0", "--dry_run", "true"]
    assert run_main(main, argv) != 0
    assert re.search(r"packing needs mini_batch_size > 0", capsys.readouterr().err)
