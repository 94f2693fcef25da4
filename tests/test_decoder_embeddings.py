"""Decoder LLMs as embedders: the EOS token every text ends with (once, kept under truncation) in training,
evaluation, mining and the exported sentence-transformers folder; left and right padding embed alike; 4-bit
loading for evaluation on the CPU backend of bitsandbytes."""

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

import train.embed
from lorasmith.encoder import Embedder
from lorasmith.errors import ConfigError
from lorasmith.tokenizer_inputs import append_eos, appends_eos

TEXTS = ["a short one", "a much longer text about the weather and a cat that sat on the mat", "mid length words"]


@pytest.fixture
def llama_tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_append_eos_adds_it_once_after_the_bos_and_truncation_keeps_it(llama_tokenizer):
    before = llama_tokenizer("a b c")["input_ids"]
    assert not appends_eos(llama_tokenizer)
    append_eos(llama_tokenizer)
    append_eos(llama_tokenizer)  # a second call changes nothing
    eos = llama_tokenizer.eos_token_id
    assert llama_tokenizer("a b c")["input_ids"] == [*before, eos]
    truncated = llama_tokenizer(TEXTS[1], truncation=True, max_length=6)["input_ids"]
    assert len(truncated) == 6 and truncated[-1] == eos and truncated.count(eos) == 1
    assert truncated[0] == llama_tokenizer.bos_token_id


def test_a_tokenizer_without_eos_is_a_config_error(tiny_bert_dir):
    with pytest.raises(ConfigError, match="has no EOS token; set append_eos: false"):
        append_eos(AutoTokenizer.from_pretrained(tiny_bert_dir))


def test_left_and_right_padding_give_the_same_embeddings(tiny_llama_dir):
    embedder = Embedder.load(tiny_llama_dir, pooling="last", show_progress=False)
    assert appends_eos(embedder.tokenizer)  # a decoder pooled by its last token: EOS on by default
    right = embedder.encode(TEXTS, batch_size=3)
    embedder.tokenizer.padding_side = "left"
    left = embedder.encode(TEXTS, batch_size=3)
    alone = torch.cat([embedder.encode([text]) for text in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=0)


def test_an_encoder_gets_no_eos_by_default(tiny_bert_dir):
    embedder = Embedder.load(tiny_bert_dir, show_progress=False)
    assert embedder.tokenizer.eos_token is None or not appends_eos(embedder.tokenizer)


@pytest.fixture(scope="module")
def decoder_run(tiny_llama_dir, tmp_path_factory):
    """A finished train.embed run on the tiny Llama, last-token pooling, append_eos left unset (packed forwards)."""
    from data_utils import sample_path

    out = tmp_path_factory.mktemp("decoder-run") / "out"
    argv = ["--model_name_or_path", str(tiny_llama_dir), "--task", "pairs", "--train_data", str(sample_path("pairs.jsonl")),
            "--pooling", "last", "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
            "--max_steps", "3", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--max_length", "24",
            "--eval_before_training", "false", "--report_to", "none", "--output_dir", str(out), "--save_strategy", "no"]  # fmt: skip
    trainer = train.embed.main(argv)
    return trainer, out


def test_training_appends_eos_to_every_text_and_records_it(decoder_run):
    trainer, out = decoder_run
    collator = trainer.data_collator
    eos = collator.tokenizer.eos_token_id
    rows = [{"anchor": TEXTS[1] * 3, "positive": TEXTS[0]}, {"anchor": TEXTS[2], "positive": TEXTS[1]}]
    batch = collator(rows)
    for ids, length in zip(batch["input_ids"], batch["lengths"], strict=True):
        real = ids[:length].tolist()
        assert real[-1] == eos and real.count(eos) == 1 and len(real) <= 24  # the long anchor was truncated
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["embedding"]["append_eos"] is True and manifest["embedding"]["pooling"] == "last"


def test_eval_mine_and_sentence_transformers_reproduce_the_training_embeddings(decoder_run):
    from sentence_transformers import SentenceTransformer

    trainer, out = decoder_run
    model = trainer.accelerator.unwrap_model(trainer.model)
    ours = Embedder.from_model(model.encoder, trainer.processing_class, "last", True, 24, show_progress=False)
    trained = ours.encode(TEXTS)
    loaded = Embedder.load(out, show_progress=False)  # what eval.* and train.mine load
    assert appends_eos(loaded.tokenizer) and loaded.tokenizer(TEXTS[0])["input_ids"].count(loaded.tokenizer.eos_token_id) == 1
    torch.testing.assert_close(loaded.encode(TEXTS), trained, atol=1e-5, rtol=0)
    st = SentenceTransformer(str(out / "merged"), device="cpu")
    assert st.tokenizer(TEXTS[0])["input_ids"][-1] == st.tokenizer.eos_token_id
    torch.testing.assert_close(torch.from_numpy(st.encode(TEXTS)), trained, atol=1e-5, rtol=0)


def test_append_eos_false_is_kept_and_changes_the_embeddings(tiny_llama_dir):
    with_eos = Embedder.load(tiny_llama_dir, pooling="last", show_progress=False).encode(TEXTS)
    without = Embedder.load(tiny_llama_dir, pooling="last", append_eos=False, show_progress=False)
    assert not appends_eos(without.tokenizer)
    assert (without.encode(TEXTS) - with_eos).abs().max() > 1e-3


def test_a_run_loads_in_4bit_for_evaluation(decoder_run):
    """bitsandbytes' CPU backend: nf4 base + the unmerged adapter embeds close to the full-precision run."""
    trainer, out = decoder_run
    full = Embedder.load(out, show_progress=False).encode(TEXTS)
    quantized = Embedder.load(out, load_in_4bit=True, dtype="float32", show_progress=False)
    assert any("4bit" in type(module).__name__ for module in quantized.model.modules())
    cosines = (quantized.encode(TEXTS) * full).sum(-1)
    assert cosines.min() > 0.9, cosines



@pytest.mark.slow
def test_a_4bit_decoder_run_trains_resumes_after_kill_9_exactly_and_reloads_in_4bit(tiny_llama_dir, tmp_path):
    """QLoRA on CPU (bitsandbytes' CPU backend, fp32 compute): the loss on its one batch falls, a run killed after its step-4
    checkpoint and started again logs the uninterrupted run's losses, and the adapter on a 4-bit base embeds as
    the trained model did; merged/ is the adapter merged into the full-precision base (the stated policy)."""
    import signal
    import subprocess
    import sys

    import multiproc
    from test_resume_exact import KILL_EMBED, MAX_STEPS, SAVE_STEPS, step_losses

    from data_utils import sample_path

    output_dir = {name: tmp_path / name for name in ("baseline", "interrupted")}

    def train(name: str, kill_at: int = -1) -> subprocess.CompletedProcess:
        argv = ["--model_name_or_path", str(tiny_llama_dir), "--task", "pairs", "--train_data", str(sample_path("pairs.jsonl")),
                "--pooling", "last", "--load_in_4bit", "true", "--dtype", "float32", "--use_peft", "true", "--lora_r", "4",
                "--lora_target_modules", "q_proj", "v_proj", "--lora_dropout", "0.1", "--per_device_train_batch_size", "4",
                "--max_train_samples", "4",
                "--max_steps", str(MAX_STEPS), "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS),
                "--logging_steps", "1", "--eval_before_training", "false", "--learning_rate", "5e-3",
                "--report_to", "none", "--output_dir", str(output_dir[name])]  # fmt: skip
        return subprocess.run([sys.executable, "-c", KILL_EMBED, *argv], cwd=multiproc.REPO, capture_output=True, text=True,
                              env=multiproc.test_env(KILL_AT_STEP=str(kill_at)), timeout=600)  # fmt: skip

    baseline = train("baseline")
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    assert "4-bit" in baseline.stdout or "nf4" in baseline.stdout  # the plan's quantization row
    assert train("interrupted", kill_at=5).returncode == -signal.SIGKILL
    resumed = train("interrupted")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = step_losses(output_dir["baseline"])
    assert len(losses) == MAX_STEPS and step_losses(output_dir["interrupted"]) == losses
    assert sum(losses[-2:]) < sum(losses[:2])
    manifest = json.loads((output_dir["baseline"] / "lorasmith.json").read_text())
    assert manifest["embedding"]["append_eos"] is True
    reloaded = Embedder.load(output_dir["baseline"], load_in_4bit=True, dtype="float32", show_progress=False)
    assert reloaded.model.peft_config and any("4bit" in type(m).__name__ for m in reloaded.model.modules())
    merged = Embedder.load(output_dir["baseline"] / "merged", show_progress=False)
    cosines = (reloaded.encode(TEXTS) * merged.encode(TEXTS)).sum(-1)
    assert cosines.min() > 0.9, cosines


@pytest.mark.slow
def test_a_4bit_run_with_the_gradient_cache_on_two_processes_logs_the_losses_of_one_process_with_the_double_batch(
    tiny_llama_dir, tmp_path
):
    """QLoRA on CPU (bitsandbytes' CPU backend, nf4, fp32 compute) with ``gradient_cache: true`` over gloo: 2 processes
    x 4 pairs log, step by step, the losses of 1 process x 8 (dropout off: ``lora_dropout 0``, the tiny Llama has no
    other). Each process quantizes the same weights the same way, and the cache's chunks embed alone what a bigger
    forward embeds, so the losses agree to float rounding (rel 1e-4)."""
    import re

    from multiproc import run_multiprocess
    from test_embed_distributed import STEPS, logged_steps
    from test_embed_train import sentences, write_jsonl

    from lorasmith.process import run_main

    texts = sentences(8 * STEPS)  # exactly STEPS global batches of 8
    rows = [{"anchor": a, "positive": b} for a, b in zip(texts, sentences(len(texts), offset=3), strict=True)]
    common = ["--model_name_or_path", str(tiny_llama_dir), "--task", "pairs", "--train_data", write_jsonl(tmp_path / "train.jsonl", rows),
              "--pooling", "last", "--load_in_4bit", "true", "--dtype", "float32", "--use_peft", "true", "--lora_r", "4",
              "--lora_target_modules", "all-linear", "--lora_dropout", "0", "--gradient_cache", "true", "--mini_batch_size", "2",
              "--max_length", "24", "--max_steps", str(STEPS), "--logging_steps", "1", "--learning_rate", "1e-2",
              "--warmup_steps", "0", "--save_strategy", "steps", "--save_steps", str(STEPS), "--eval_strategy", "no",
              "--load_best_model_at_end", "false", "--export_merged", "false", "--report_to", "none", "--seed", "7"]  # fmt: skip
    assert run_main(train.embed.main, [*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"]) == 0
    result = run_multiprocess(["-m", "train.embed", *common, "--output_dir", str(tmp_path / "two"),
                               "--per_device_train_batch_size", "4"])  # fmt: skip
    assert re.search(r"world size\s+: 2 \(ddp, cpu\)", result.stdout), result.stdout[-2000:]
    assert re.search(r"quantization\s+: 4-bit nf4", result.stdout), result.stdout[-2000:]
    # the 4-bit layers trained through their backward: bitsandbytes' CPU inference kernel (no backward) stayed off
    assert "gemv_4bit" not in result.stderr

    one, two = logged_steps(tmp_path / "one"), logged_steps(tmp_path / "two")
    assert len(one) == len(two) == STEPS
    for step_one, step_two in zip(one, two, strict=True):
        assert step_two["global_batch_size"] == step_one["global_batch_size"] == 8
        assert math.isfinite(step_one["loss"]) and step_two["loss"] == pytest.approx(step_one["loss"], rel=1e-4)
    assert len({round(step["loss"], 4) for step in one}) > 1  # it trains: the losses move
