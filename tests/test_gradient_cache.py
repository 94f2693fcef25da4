"""Length-sorted mini-batches and the gradient cache change nothing but memory and padding.

Single process, tiny BERT (LoRA) in float64, every task/loss: chunked vs one forward per role, and cached vs
plain, give the same loss and the same parameter gradients (relative 1e-6); with dropout on, the cache replays
each chunk's dropout masks. The two-process (gathered, uneven shards) versions are cases of
``tests/scripts/contrastive_exactness.py``; the end-to-end runs are in ``test_embed_distributed.py``,
``test_resume_exact.py`` and the slow cases below.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re

import pytest
import torch
from multiproc import REPO, run_multiprocess
from test_embed_train import FAST, sentences, write_jsonl

from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from train.common.args import ModelArguments
from train.embed import main
from train.embed.cached import gradient_cache_step
from train.embed.collator import (
    FORWARD_COST_TOKENS,
    MAX_PADDING_SHARE,
    ContrastiveCollator,
    LengthSortedChunker,
    length_sorted_chunks,
    token_slots,
)
from train.embed.config import DEFAULT_MINI_BATCH_SIZE, EmbedConfig
from train.embed.loss_spec import build_objective
from train.embed.model import build_embedding_model, in_text_order, set_dropout
from train.embed.resolve import resolve_mini_batches
from train.embed.tasks import EMBED_TASKS
from train.embed.trainer import embedded_batch

TOLERANCE = 1e-6
COMBINATION = {"cosent": 1, "ibn": {"weight": 0.5, "temperature": 0.1}, "angle": 1}


def task_rows(task: str) -> list[dict]:
    """Six rows of ``task`` with texts of very different lengths (chunks pad differently from roles)."""
    texts = [s * (1 + i % 3) for i, s in enumerate(sentences(6))]
    others = sentences(6, offset=4)
    if task == "simcse_unsup":
        return [{"text": t} for t in texts]
    if task == "pairs":
        return [{"anchor": a, "positive": b} for a, b in zip(texts, others, strict=True)]
    if task == "triplets":
        return [
            {"anchor": a, "positive": b, "negatives": [others[(i + 1) % 6], texts[(i + 2) % 6]]}
            for i, (a, b) in enumerate(zip(texts, others, strict=True))
        ]
    if task == "tags":  # duplicate tags within the batch
        return [
            {"text": t, "tags": [t.split()[1], "shared"] if i % 2 else [t.split()[1]]}
            for i, t in enumerate(texts)
        ]
    return [
        {"sentence1": a, "sentence2": b, "score": [0.1, 0.9, 0.5, 0.5, 0.3, 1.0][i]}
        for i, (a, b) in enumerate(zip(texts, others, strict=True))
    ]


CASES = [("simcse_unsup", "infonce"), ("pairs", "infonce"), ("triplets", "infonce"), ("tags", "infonce"),
         ("scored_pairs", COMBINATION)]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="module")
def model(tiny_bert_dir):
    torch.manual_seed(0)
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=4, lora_dropout=0.0)
    model = build_embedding_model(args, "mean", True).double().train()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # lora_B starts at 0: give lora_A a gradient too
    return model


def batch_of(tokenizer, task: str, mini_batch_size: int, packing: bool = False) -> dict:
    """The collated batch of ``task_rows(task)`` with its ``chunks`` (the step cut on its own) and their
    ``padded_tokens``."""
    collator = ContrastiveCollator(tokenizer, EMBED_TASKS[task], 64, mini_batch_size=mini_batch_size, packing=packing)
    batch = collator(task_rows(task))
    batch["chunks"] = collator.chunks(batch)
    batch["padded_tokens"] = token_slots(batch["chunks"])
    return batch


def loss_and_gradients(model, objective, task: str, batch: dict, *, cached: bool, seed: int = 0):
    """(loss, flat parameter gradient) of one step, plain (one forward of all chunks) or with the cache."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    b = batch["anchor_ids"].shape[0]

    def loss_of(embeddings):
        return objective(embedded_batch(EMBED_TASKS[task], embeddings[:b], embeddings[b:], batch))

    if cached:
        output = gradient_cache_step(
            batch["chunks"], batch["text_order"], encode=lambda chunk: model([chunk]), loss_of=loss_of,
            backward=lambda surrogate, last: surrogate.backward(),
        )  # fmt: skip
    else:
        output = loss_of(in_text_order(model(batch["chunks"]), batch["text_order"]))
        output.loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return float(output.loss.detach()), gradients


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("task", "loss"), CASES, ids=[task for task, _ in CASES])
def test_chunked_packed_and_cached_steps_equal_the_plain_step(model, tokenizer, task, loss):
    set_dropout(model.encoder, 0.0)
    objective = build_objective(EMBED_TASKS[task], loss)
    plain_batch, chunked_batch = batch_of(tokenizer, task, 0), batch_of(tokenizer, task, 2)
    packed_batch = batch_of(tokenizer, task, 1, packing=True)  # forwards of <= 1 x 64 token slots
    assert len(chunked_batch["chunks"]) > 2 and chunked_batch["padded_tokens"] < plain_batch["padded_tokens"]
    assert len(packed_batch["chunks"]) > 1 and "segments" in packed_batch["chunks"][0]

    plain_loss, plain = loss_and_gradients(model, objective, task, plain_batch, cached=False)
    assert plain.norm() > 0
    cases = ((chunked_batch, False), (chunked_batch, True), (plain_batch, True), (packed_batch, False),
             (packed_batch, True))  # fmt: skip
    for batch, cached in cases:
        loss, gradients = loss_and_gradients(model, objective, task, batch, cached=cached)
        assert loss == pytest.approx(plain_loss, rel=TOLERANCE)
        assert relative(gradients, plain) <= TOLERANCE


@pytest.mark.parametrize(("task", "loss"), [CASES[0], CASES[3]], ids=["simcse_unsup", "tags"])
def test_the_cache_replays_dropout(model, tokenizer, task, loss):
    set_dropout(model.encoder, 0.1)
    try:
        objective = build_objective(EMBED_TASKS[task], loss)
        batch = batch_of(tokenizer, task, 2)
        plain_loss, plain = loss_and_gradients(model, objective, task, batch, cached=False, seed=3)
        cached_loss, cached = loss_and_gradients(model, objective, task, batch, cached=True, seed=3)
        other_loss, _ = loss_and_gradients(model, objective, task, batch, cached=False, seed=4)
        assert other_loss != pytest.approx(plain_loss, rel=1e-4)  # dropout is really on
        assert cached_loss == pytest.approx(plain_loss, rel=TOLERANCE)
        assert relative(cached, plain) <= TOLERANCE
    finally:
        set_dropout(model.encoder, 0.0)


def test_length_sorted_chunks_put_similar_lengths_together():
    unbounded = {"max_padding_share": 1.0}
    # a huge forward cost: fewest forwards (3 of at most 2 texts), the least padding among those
    assert length_sorted_chunks([4, 9, 1, 9, 5], 2, forward_cost=1e9, **unbounded) == [[1, 3], [4, 0], [2]]
    # no forward cost: least padding, one chunk per distinct length
    assert length_sorted_chunks([3, 9, 1, 9, 5], 8, forward_cost=0) == [[1, 3], [4], [0], [2]]
    assert length_sorted_chunks([4, 4, 4], 8) == [[0, 1, 2]]
    # the cut goes where the length drops, not after max_size texts
    assert length_sorted_chunks([30, 8, 29, 10, 28, 9], 6, forward_cost=5) == [[0, 2, 4], [3, 5, 1]]
    # a padding bound makes forwards cheaper until it holds: [30, 29, 28] alone pads 3 of 90 slots
    assert length_sorted_chunks([30, 8, 29, 28], 4, forward_cost=1e3, **unbounded) == [[0, 2, 3, 1]]
    assert length_sorted_chunks([30, 8, 29, 28], 4, forward_cost=1e3, max_padding_share=0.1) == [[0, 2, 3], [1]]


def chunking_cost(lengths, chunks, forward_cost):
    return sum(len(chunk) * max(lengths[i] for i in chunk) + forward_cost for chunk in chunks)


@pytest.mark.parametrize("seed", range(20))
def test_length_sorted_chunks_are_the_cheapest_cut_of_the_sorted_texts(seed):
    """Against every way of cutting the sorted texts into consecutive chunks of at most max_size."""
    generator = random.Random(seed)
    lengths = [generator.randint(1, 40) for _ in range(generator.randint(1, 9))]
    max_size, forward_cost = generator.randint(1, 5), generator.choice([0, 3, 12, 48])
    chunks = length_sorted_chunks(lengths, max_size, forward_cost, max_padding_share=1.0)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    assert all(1 <= len(chunk) <= max_size for chunk in chunks)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    assert [i for chunk in chunks for i in chunk] == order
    cheapest = min(
        chunking_cost(
            lengths, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], forward_cost
        )
        for count in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), count)
        if all(b - a <= max_size for a, b in itertools.pairwise((0, *cuts, len(order))))
    )
    assert chunking_cost(lengths, chunks, forward_cost) == cheapest


@pytest.mark.parametrize("seed", range(20))
def test_length_sorted_chunks_keep_padding_under_the_bound(seed):
    generator = random.Random(seed)
    lengths = [generator.randint(1, 128) for _ in range(generator.randint(1, 200))]
    for max_padding_share in (0.0, 0.05, 0.1, 0.3):
        chunks = length_sorted_chunks(lengths, generator.randint(1, 64), max_padding_share=max_padding_share)
        slots = sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in chunks)
        assert 1 - sum(lengths) / slots <= max_padding_share + 1e-12


def sentence_like_steps(seed: int, steps: int) -> list[list[int]]:
    """Token lengths of ``steps`` steps of 24-96 texts: log-normal around 14 tokens, 3-128 (sentences, tags)."""
    generator = random.Random(seed)
    return [
        [min(128, max(3, round(generator.lognormvariate(2.6, 0.6)))) for _ in range(generator.randint(24, 96))]
        for _ in range(steps)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_chunker_keeps_the_padding_of_all_its_steps_under_the_bound(seed):
    generator = random.Random(seed)
    max_padding_share, max_size = generator.choice([0.0, 0.05, 0.1, 0.3]), generator.randint(1, 64)
    chunker, real, slots = LengthSortedChunker(max_size, max_padding_share), 0, 0
    for lengths in sentence_like_steps(seed, 60):
        chunks = chunker(lengths)
        assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
        assert all(1 <= len(chunk) <= max_size for chunk in chunks)
        real += sum(lengths)
        slots += sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in chunks)
        assert 1 - real / slots <= max_padding_share + 1e-12  # after every step, not only at the end


def test_chunker_meets_the_bound_with_fewer_forwards_than_a_bound_per_step():
    """One price for all steps (the running bound) is cheaper than each step meeting the bound alone."""
    steps = sentence_like_steps(0, 200)
    chunker = LengthSortedChunker(32)
    running = [chunker(lengths) for lengths in steps]
    per_step = [length_sorted_chunks(lengths, 32) for lengths in steps]

    def padding_and_cost(all_chunks):
        real = sum(map(sum, steps))
        slots = sum(
            len(chunk) * max(lengths[i] for i in chunk)
            for lengths, chunks in zip(steps, all_chunks, strict=True)
            for chunk in chunks
        )
        forwards = sum(map(len, all_chunks))
        return 1 - real / slots, slots + FORWARD_COST_TOKENS * forwards

    running_padding, running_cost = padding_and_cost(running)
    per_step_padding, per_step_cost = padding_and_cost(per_step)
    assert running_padding <= MAX_PADDING_SHARE + 1e-12 and per_step_padding <= MAX_PADDING_SHARE + 1e-12
    assert running_cost < 0.99 * per_step_cost


def test_a_chunker_loaded_from_a_state_cuts_the_next_steps_as_the_one_that_saved_it():
    """What a checkpoint keeps (``state_dict``) is all a resumed run needs to cut its steps the same way."""
    steps = sentence_like_steps(1, 80)
    uninterrupted = LengthSortedChunker(16)
    cuts = [uninterrupted(lengths) for lengths in steps]
    saved = LengthSortedChunker(16)
    for lengths in steps[:37]:
        saved(lengths)
    resumed = LengthSortedChunker(16)
    resumed.load_state_dict(json.loads(json.dumps(saved.state_dict())))
    assert [resumed(lengths) for lengths in steps[37:]] == cuts[37:]
    assert LengthSortedChunker(16).state_dict() != saved.state_dict()
    fresh = LengthSortedChunker(16)  # without the state the cuts differ: the state is not decoration
    assert [fresh(lengths) for lengths in steps[37:]] != cuts[37:]


def test_chunk_padding_matches_the_tokenizer_on_both_sides(tokenizer):
    texts = ["a dog reads", "the cat likes the map and a good book", "my friend", "my friend too", "a"]
    rows = [{"text": text} for text in texts]
    for side in ("right", "left"):
        tokenizer.padding_side = side
        ids = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
        expected = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        collator = ContrastiveCollator(tokenizer, EMBED_TASKS["simcse_unsup"], 32, mini_batch_size=2)
        padded = collator.pad(ids)
        assert torch.equal(padded["input_ids"], expected["input_ids"])
        assert torch.equal(padded["attention_mask"], expected["attention_mask"])
        batch = collator(rows)  # 10 texts (two views), longest first
        chunks = collator.chunks(batch, LengthSortedChunker(2, forward_cost=0))
        row = 0
        for chunk in chunks:  # each chunk = its rows padded on their own, as the tokenizer pads them
            n = chunk["input_ids"].shape[0]
            own = [texts[i % len(texts)] for i in batch["text_order"][row : row + n].tolist()]
            alone = tokenizer(own, padding=True, truncation=True, max_length=32, return_tensors="pt")
            assert torch.equal(chunk["input_ids"], alone["input_ids"])
            assert torch.equal(chunk["attention_mask"], alone["attention_mask"])
            row += n
        assert row == 10 and len(chunks) > 2
    tokenizer.padding_side = "right"


def test_sharded_forwards_refuse_chunks_and_the_cache_and_default_to_plain():
    for distribution in ("deepspeed-zero3", "fsdp"):
        with pytest.raises(ConfigError, match="cannot run under .*zero2.yaml"):
            resolve_mini_batches(EmbedConfig(gradient_cache=True, mini_batch_size=4), distribution)
        with pytest.raises(ConfigError, match="mini_batch_size > 0 cannot run"):
            resolve_mini_batches(EmbedConfig(mini_batch_size=4), distribution)
        config = resolve_mini_batches(EmbedConfig(), distribution)
        assert config.mini_batch_size == 0
    config = resolve_mini_batches(EmbedConfig(gradient_cache=True), "deepspeed-zero2")
    assert config.mini_batch_size == DEFAULT_MINI_BATCH_SIZE == 32
    with pytest.raises(ConfigError, match="gradient_cache needs mini_batch_size > 0"):
        EmbedConfig(gradient_cache=True, mini_batch_size=0)


def test_the_plan_names_the_mode_and_the_mini_batch(tiny_bert_dir, tmp_path, capsys):
    rows = [{"anchor": a, "positive": b} for a, b in zip(sentences(8), sentences(8, offset=2), strict=True)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "pairs", "--train_data", data, "--use_peft", "true",
            "--output_dir", str(tmp_path / "out"), "--dry_run", "true", "--gradient_cache", "true",
            "--mini_batch_size", "4", "--per_device_train_batch_size", "8"]  # fmt: skip
    assert run_main(main, argv) == 0
    plan = capsys.readouterr().out
    assert "gradient cache: packed forwards of <= 4 x max_length token slots" in plan
    assert re.search(r"negatives per anchor +: 7 at most", plan)


def logged_losses(trainer) -> list[float]:
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(["--use_peft", "true", "--gradient_accumulation_steps", "2"], id="lora-accumulation"),
        pytest.param(
            ["--use_peft", "false", "--full_finetune", "true", "--activation_checkpointing", "true"],
            id="full-checkpointing",
        ),  # fmt: skip
        pytest.param(["--use_peft", "true", "--load_in_4bit", "true", "--pooling", "last"], id="qlora-4bit"),
    ],
)
def test_train_embed_with_the_cache_logs_the_plain_losses(tiny_bert_dir, tiny_llama_dir, tmp_path, variant):
    model_dir = tiny_llama_dir if "--load_in_4bit" in variant else tiny_bert_dir
    rows = [{"anchor": a, "positive": b} for a, b in zip(sentences(16), sentences(16, offset=3), strict=True)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    fast = [arg for arg in FAST if arg not in ("query", "value", "--lora_target_modules")]
    common = ["--model_name_or_path", str(model_dir), "--task", "pairs", "--train_data", data, *fast,
              "--max_steps", "3", "--dropout", "0.1", "--export_merged", "false", *variant]  # fmt: skip
    runs = {}
    for name, extra in {"chunked": [], "cached": ["--gradient_cache", "true"]}.items():
        trainer = main([*common, "--mini_batch_size", "2", *extra, "--output_dir", str(tmp_path / name)])
        runs[name] = logged_losses(trainer)
    assert len(runs["chunked"]) == 3 and len(set(runs["chunked"])) > 1
    assert runs["cached"] == pytest.approx(runs["chunked"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LORASMITH_SKIP_DEEPSPEED") == "1", reason="LORASMITH_SKIP_DEEPSPEED=1")
def test_zero2_with_the_cache_logs_the_plain_zero2_losses(tiny_bert_dir, tmp_path):
    """DeepSpeed ZeRO-2 on 2 gloo processes: several engine backwards per step, one optimizer step, same losses."""
    rows = [{"anchor": a, "positive": b} for a, b in zip(sentences(24), sentences(24, offset=3), strict=True)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    fast = [arg for arg in FAST if arg != "--max_steps" and arg != "2"]
    common = ["-m", "train.embed", "--model_name_or_path", str(tiny_bert_dir), "--task", "pairs", "--train_data", data,
              "--use_peft", "true", "--dropout", "0", "--lora_dropout", "0", "--max_steps", "3",
              "--export_merged", "false", *fast]  # fmt: skip
    losses = {}
    for name, extra in {"plain": ["--mini_batch_size", "0"],
                        "cached": ["--gradient_cache", "true", "--mini_batch_size", "2"]}.items():  # fmt: skip
        output_dir = tmp_path / name
        run_multiprocess([*common, *extra, "--output_dir", str(output_dir), "--save_strategy", "steps",
                          "--save_steps", "3"], config_file=REPO / "accelerate_configs" / "zero2.yaml")  # fmt: skip
        state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
        losses[name] = [log["loss"] for log in state["log_history"] if "loss" in log]
    assert len(losses["plain"]) == 3 and len(set(losses["plain"])) > 1
    assert losses["cached"] == pytest.approx(losses["plain"], abs=1e-4)
