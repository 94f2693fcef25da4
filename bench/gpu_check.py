"""One-GPU check (< 8 minutes on an H100/H200): step time and MFU of LoRA embedding and LoRA SFT steps in bf16,
QLoRA 4-bit peak memory against the weights' size, a 4-bit decoder embedding step, gradient-cache memory at a 4096
batch, then ``pytest tests/test_launch_gpu.py``. Random-initialised models of real shapes, nothing downloaded.
Prints a table.

    python bench/gpu_check.py            # on the GPU machine
    python bench/gpu_check.py --smoke    # tiny shapes, fp32, CPU, seconds (tests/test_gpu_check_smoke.py)

Shapes: BERT-base (12 x 768, vocab 30522) for embeddings: LoRA r=16 on query/key/value/dense, mean pooling, pairs,
InfoNCE, 128 tokens per text; a ~1.1B Llama-shaped decoder (TinyLlama: 22 x 2048, GQA 32/4 heads, MLP 5632, vocab
32000) for SFT: LoRA r=16 on the attention and MLP projections, 512 tokens per sequence. MFU = model FLOPs per second
/ the GPU's dense bf16 peak (``--peak-tflops``, default 989 = H100/H200 SXM), counting 6 x parameters x tokens for a
step (LoRA's frozen weights skip their weight gradient, so real work is ~4/6 of that: the MFU shown is the usual
6N convention). QLoRA: the SFT model saved once in bf16 to a temp folder, reloaded 4-bit NF4 through
``train.common.modeling.load_model``; peak GPU memory vs the bf16 weights' bytes. 4-bit decoder embedding step:
the same saved Llama loaded 4-bit NF4 the same way (bf16 compute; fp32 on the CPU smoke), LoRA r=16 on every linear
layer, last-token pooling (each text's last token is the EOS id), pairs, InfoNCE, one ``gradient_cache_step`` at 256
anchors + 256 positives of 128 tokens in chunks of 64; step time and peak memory. Estimated, not yet measured on a
GPU: ~20 s to quantize on load + 6 steps of ~2-4 s (~4 x 10^14 FLOPs each: a gradient-free forward, a forward and
a backward of 65k tokens), about a minute of the budget. Gradient cache: one ``gradient_cache_step`` at 4096
anchors + 4096 positives, mini-batch 64, vs one plain step at 256.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402
from train.embed.cached import gradient_cache_step  # noqa: E402
from train.embed.loss_spec import build_objective  # noqa: E402
from train.embed.model import EmbeddingModel, in_text_order  # noqa: E402
from train.embed.tasks import EMBED_TASKS  # noqa: E402

FULL = {
    "bert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "llama": {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
              "intermediate_size": 5632, "vocab_size": 32000},  # fmt: skip
    "embed_batch": 256, "sft_batch": 8, "embed_tokens": 128, "sft_tokens": 512, "cache_batch": 4096,
    "cache_mini": 64, "steps": 5,
}  # fmt: skip
SMOKE = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "llama": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 512},  # fmt: skip
    "embed_batch": 8, "sft_batch": 2, "embed_tokens": 16, "sft_tokens": 32, "cache_batch": 32, "cache_mini": 8,
    "steps": 2,
}  # fmt: skip


def lora(model, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))


def timed(step, steps: int, device: torch.device) -> float:
    """Mean seconds of ``step()`` over ``steps`` runs after one warm-up."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def peak_memory_gib(device: torch.device) -> float | str:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else "n/a (CPU)"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def embedding_model(shape: dict, device, dtype) -> EmbeddingModel:
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(**shape["bert"]), add_pooling_layer=False).to(device, dtype)
    return EmbeddingModel(lora(encoder, ["query", "key", "value", "dense"]), "mean", True).train()


def pair_chunks(
    shape: dict, batch: int, mini: int, device, vocab: int = 30000, eos: int | None = None
) -> tuple[list[dict], torch.Tensor]:
    """``2 * batch`` random texts of ``embed_tokens`` token ids in [1000, vocab) (smaller vocabularies: [10, vocab)),
    in chunks of ``mini`` (0: two role chunks); ``eos``: every text's last token is that id."""
    tokens = shape["embed_tokens"]
    ids = torch.randint(1000 if vocab > 2000 else 10, vocab, (2 * batch, tokens), device=device)
    if eos is not None:
        ids[:, -1] = eos
    size = mini or batch
    chunks = [{"input_ids": ids[i : i + size], "attention_mask": torch.ones_like(ids[i : i + size])}
              for i in range(0, 2 * batch, size)]  # fmt: skip
    return chunks, torch.arange(2 * batch, device=device)


def embed_loss(batch: int, temperature: float = 0.05):
    """``(2 * batch, D)`` embeddings (anchors, then their positives) -> the pairs InfoNCE output."""
    objective = build_objective(EMBED_TASKS["pairs"], {"infonce": {"temperature": temperature}})
    ids = torch.arange(2 * batch)

    def loss_of(embeddings):
        from train.embed.batch import EmbeddedBatch

        device = embeddings.device
        return objective(EmbeddedBatch.aligned(embeddings[:batch], embeddings[batch:], ids[:batch].to(device),
                                               ids[batch:].to(device)))  # fmt: skip

    return loss_of


def check_embed_step(shape, device, dtype, autocast) -> dict:
    model = embedding_model(shape, device, dtype)
    batch = shape["embed_batch"]
    chunks, order = pair_chunks(shape, batch, 0, device)
    loss_of = embed_loss(batch)

    def step():
        with autocast():
            output = loss_of(in_text_order(model(chunks), order))
        output.loss.backward()
        model.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = timed(step, shape["steps"], device)
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": seconds, "flops": 6 * params * 2 * batch * shape["embed_tokens"], "peak": peak_memory_gib(device)}


def llama(shape, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**shape["llama"])).to(device, dtype)


def check_sft_step(shape, device, dtype, autocast) -> dict:
    model = lora(llama(shape, device, dtype), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"]).train()  # fmt: skip
    ids = torch.randint(10, shape["llama"]["vocab_size"], (shape["sft_batch"], shape["sft_tokens"]), device=device)

    def step():
        with autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = timed(step, shape["steps"], device)
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": seconds, "flops": 6 * params * ids.numel(), "peak": peak_memory_gib(device)}


@contextlib.contextmanager
def saved_llama(shape):
    """``(folder, bf16 weight bytes)`` of the random SFT Llama saved in bf16 to a temp folder (removed after)."""
    with tempfile.TemporaryDirectory() as folder:
        model = llama(shape, torch.device("cpu"), torch.bfloat16)
        weights = sum(p.numel() * 2 for p in model.parameters())
        model.save_pretrained(folder)
        del model
        yield folder, weights


def check_qlora_memory(shape, device, folder: str, weights: int) -> dict:
    """Peak memory of a 4-bit load of ``folder`` + one LoRA step, against the bf16 weights' bytes."""
    from transformers import AutoModelForCausalLM

    from train.common.args import ModelArguments
    from train.common.modeling import apply_tuning, load_model

    reset_peak(device)
    args = ModelArguments(model_name_or_path=folder, load_in_4bit=True, dtype="bfloat16", use_peft=True, lora_r=16)
    model = apply_tuning(load_model(args, AutoModelForCausalLM), args, "CAUSAL_LM").train()
    ids = torch.randint(10, shape["llama"]["vocab_size"], (1, shape["sft_tokens"]), device=model.device)
    model(input_ids=ids, labels=ids).loss.backward()
    return {"weights_gib": weights / 2**30, "peak": peak_memory_gib(device)}


def decoder_embedding_model(folder: str, dtype: str, load_in_4bit: bool = True) -> EmbeddingModel:
    """The decoder in ``folder`` as train.embed trains it: loaded by ``train.common.modeling.load_model`` in
    ``dtype`` (``load_in_4bit``: NF4 with double quantization computing in ``dtype``), LoRA r=16 / alpha 32 /
    dropout 0 on every linear layer, last-token pooling, L2-normalised; in train mode."""
    from train.common.args import ModelArguments
    from train.embed.model import build_embedding_model

    args = ModelArguments(model_name_or_path=folder, dtype=dtype, load_in_4bit=load_in_4bit, use_peft=True, lora_r=16,
                          lora_alpha=32, lora_dropout=0.0, lora_target_modules=["all-linear"])  # fmt: skip
    return build_embedding_model(args, "last", True).train()


def cached_step(model, chunks: list, order: torch.Tensor, loss_of, autocast):
    """``step()``: one ``gradient_cache_step`` of ``model`` over ``chunks`` (``order``: their rows' text order,
    ``loss_of``: text-ordered embeddings -> objective output), gradients cleared after."""

    def encode(chunk):
        with autocast():
            return model([chunk])

    def step():
        gradient_cache_step(chunks, order, encode=encode, loss_of=loss_of,
                            backward=lambda surrogate, last: surrogate.backward())  # fmt: skip
        model.zero_grad(set_to_none=True)

    return step


def check_qlora_embed_step(shape, device, folder: str, autocast) -> dict:
    """Mean step time and peak memory of the 4-bit decoder embedding step (module docstring) on ``folder``."""
    reset_peak(device)
    model = decoder_embedding_model(folder, "bfloat16" if device.type == "cuda" else "float32")
    if not any(type(module).__name__ == "Linear4bit" for module in model.modules()):
        raise RuntimeError("the decoder did not load in 4-bit: no bitsandbytes Linear4bit layer")
    batch, llama_shape = shape["embed_batch"], shape["llama"]
    chunks, order = pair_chunks(shape, batch, shape["cache_mini"], model.encoder.device, llama_shape["vocab_size"],
                                model.base_model.config.eos_token_id)  # fmt: skip
    seconds = timed(cached_step(model, chunks, order, embed_loss(batch), autocast), shape["steps"], device)
    return {"batch": batch, "seconds": seconds, "peak": peak_memory_gib(device)}


def check_cache_memory(shape, device, dtype, autocast) -> dict:
    """Peak memory of one cached step at ``cache_batch`` vs one plain step at ``embed_batch``."""
    model = embedding_model(shape, device, dtype)
    results = {}
    for name, batch, mini in (("plain", shape["embed_batch"], 0), ("cached", shape["cache_batch"], shape["cache_mini"])):
        chunks, order = pair_chunks(shape, batch, mini, device)
        loss_of = embed_loss(batch)
        reset_peak(device)
        start = time.perf_counter()
        if mini:
            cached_step(model, chunks, order, loss_of, autocast)()
        else:
            with autocast():
                output = loss_of(in_text_order(model(chunks), order))
            output.loss.backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[name] = {"batch": batch, "seconds": time.perf_counter() - start, "peak": peak_memory_gib(device)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, runs on CPU in seconds")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--skip-pytest", action="store_true", help="do not run tests/test_launch_gpu.py")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA device: run on the GPU machine, or use --smoke for the CPU check")
        return 1
    device = torch.device("cuda" if cuda and not args.smoke else "cpu")
    shape = SMOKE if args.smoke else FULL
    dtype = torch.float32
    bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    torch.manual_seed(0)
    rows = []
    for name, check in (("LoRA embed step (BERT-base)", check_embed_step), ("LoRA SFT step (1.1B Llama)", check_sft_step)):
        result = check(shape, device, dtype, autocast)
        mfu = result["flops"] / result["seconds"] / (args.peak_tflops * 1e12)
        rows.append([name, f"{result['seconds'] * 1000:.1f} ms", f"{100 * mfu:.1f} %" if bf16 else "n/a (smoke)",
                     result["peak"]])  # fmt: skip
    print(format_table(["step (bf16 autocast)" if bf16 else "step (fp32 smoke)", "time", "MFU", "peak GiB"], rows))

    with saved_llama(shape) as (folder, weights):
        if cuda:
            qlora = check_qlora_memory(shape, device, folder, weights)
            print(f"\nQLoRA 4-bit: bf16 weights {qlora['weights_gib']:.2f} GiB, peak GPU memory {qlora['peak']} GiB "
                  "(load + one LoRA step at 1 x sft_tokens)")  # fmt: skip
        else:
            print("\nQLoRA 4-bit: skipped (no CUDA device)")
        decoder = check_qlora_embed_step(shape, device, folder, autocast)
    compute = "bf16" if bf16 else "fp32, bitsandbytes CPU backend"
    print("\n" + format_table(
        [f"4-bit decoder embedding step ({compute})", "global batch", "time", "peak GiB"],
        [["QLoRA embed step (1.1B Llama, nf4, cache)", decoder["batch"], f"{decoder['seconds'] * 1000:.1f} ms",
          decoder["peak"]]],
    ))  # fmt: skip

    cache = check_cache_memory(shape, device, dtype, autocast)
    print("\n" + format_table(
        ["embedding step", "global batch", "seconds", "peak GiB"],
        [[name, r["batch"], r["seconds"], r["peak"]] for name, r in cache.items()],
    ))  # fmt: skip
    if args.smoke or args.skip_pytest:
        return 0
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_launch_gpu.py"], cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
