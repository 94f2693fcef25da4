"""Peak memory (CPU RSS) and step time of one contrastive step vs the global batch: the gradient cache on / off,
next to sentence-transformers' CachedMultipleNegativesRankingLoss. Prints a table.

    python bench/embed_memory.py [--batches 32 128 512 2048] [--mini-batch-size 32] [--quick]

Each (batch, configuration) runs in a fresh subprocess (``--one``) so peak RSS (``resource.getrusage`` maxrss) is
that configuration's alone: packaged MiniLM + LoRA r=16 (query/key/value/dense), pairs, InfoNCE (temperature 0.05),
texts of max_length 128 tokens (synthetic sentences truncated to 128, the worst case), fp32, 2 steps, the second
timed. Configurations: ``cache on`` (``gradient_cache``, ``--mini-batch-size`` texts per chunk), ``cache off``
(one forward per role, all activations kept), ``sentence-transformers cached`` (CachedMultipleNegativesRankingLoss,
same mini-batch). A configuration that fails (e.g. out of memory) shows its exit code. Targets:
cache-on peak at the largest batch <= 1.3x its peak at the smallest; cache-on step <= 1.6x cache-off at equal batch.
``--quick`` measures batches 32 and 128 only. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["query", "key", "value", "dense"]}
MAX_LENGTH = 128
CONFIGS = ("cache on", "cache off", "sentence-transformers cached")
WORDS = "the a model trains long text with many words about data science music cats dogs books maps rivers".split()


def synthetic_pairs(n: int) -> list[dict]:
    """``n`` (anchor, positive) pairs of ~160 words each (truncated to MAX_LENGTH tokens), all distinct."""
    rows = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3 + j // 5) % len(WORDS)] for j in range(160)]
        rows.append({"anchor": f"{i} " + " ".join(words), "positive": f"{i} " + " ".join(reversed(words))})
    return rows


def step_ours(batch: int, mini_batch_size: int, cache: bool) -> float:
    """Seconds of the second of two train.embed steps (the trainer's own encoding path, no Trainer loop)."""
    from transformers import AutoTokenizer

    from lorasmith.embedded_models import embedded_model_files
    from train.common.args import ModelArguments
    from train.embed.cached import gradient_cache_step
    from train.embed.collator import ContrastiveCollator
    from train.embed.loss_spec import build_objective
    from train.embed.model import build_embedding_model, in_text_order
    from train.embed.tasks import EMBED_TASKS
    from train.embed.trainer import embedded_batch

    task = EMBED_TASKS["pairs"]
    args = ModelArguments(model_name_or_path="minilm", use_peft=True, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                          lora_dropout=LORA["lora_dropout"], lora_target_modules=LORA["target_modules"])  # fmt: skip
    model = build_embedding_model(args, "mean", True).train()
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_files("minilm")[0]))
    collator = ContrastiveCollator(tokenizer, task, MAX_LENGTH, mini_batch_size=mini_batch_size if cache else 0)
    objective = build_objective(task, {"infonce": {"temperature": 0.05}})
    inputs = collator(synthetic_pairs(batch))
    chunks = collator.chunks(inputs)
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()

        def loss_of(embeddings):
            return objective(embedded_batch(task, embeddings[:batch], embeddings[batch:], inputs))

        if cache:
            gradient_cache_step(chunks, inputs["text_order"], encode=lambda chunk: model([chunk]),
                                loss_of=loss_of, backward=lambda surrogate, last: surrogate.backward())  # fmt: skip
        else:
            loss_of(in_text_order(model(chunks), inputs["text_order"])).loss.backward()
        model.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
    return seconds


def step_sentence_transformers(batch: int, mini_batch_size: int) -> float:
    """Seconds of the second of two CachedMultipleNegativesRankingLoss steps on the same pairs."""
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from lorasmith.embedded_models import embedded_model_files

    model = SentenceTransformer(str(embedded_model_files("minilm")[0]), device="cpu")
    model.max_seq_length = MAX_LENGTH
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, **LORA))
    model.train()
    loss = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=mini_batch_size)
    rows = synthetic_pairs(batch)
    features = [model.tokenize([row[column] for row in rows]) for column in ("anchor", "positive")]
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        loss(features, None).backward()
        model.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
    return seconds


def measure_one(batch: int, config: str, mini_batch_size: int) -> dict:
    """Run one configuration in this process; its step time and peak RSS (MiB)."""
    if config == "sentence-transformers cached":
        seconds = step_sentence_transformers(batch, mini_batch_size)
    else:
        seconds = step_ours(batch, mini_batch_size, cache=config == "cache on")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"step_s": seconds, "peak_mib": peak_kib / 1024}


def measure(batch: int, config: str, mini_batch_size: int) -> dict | int:
    """``measure_one`` in a fresh subprocess; its result, or its exit code when it failed."""
    command = [sys.executable, __file__, "--one", str(batch), config, "--mini-batch-size", str(mini_batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return result.returncode
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512, 2048])
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--quick", action="store_true", help="batches 32 and 128 only")
    parser.add_argument("--one", nargs=2, metavar=("BATCH", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(int(args.one[0]), args.one[1], args.mini_batch_size)))
        return 0
    batches = [32, 128] if args.quick else args.batches
    results = {(b, c): measure(b, c, args.mini_batch_size) for b in batches for c in args.configs}
    rows = []
    for batch in batches:
        row = [batch]
        for config in args.configs:
            value = results[(batch, config)]
            row += [f"exit {value}"] * 2 if isinstance(value, int) else [value["peak_mib"], value["step_s"]]
        rows.append(row)
    headers = ["global batch"] + [f"{c} {unit}" for c in args.configs for unit in ("peak MiB", "step s")]
    print(format_table(headers, rows, digits=1))
    on = {b: results[(b, "cache on")] for b in batches if isinstance(results.get((b, "cache on")), dict)}
    if len(on) >= 2 and "cache on" in args.configs:
        small, large = min(on), max(on)
        print(f"cache-on peak at {large} / at {small}: {on[large]['peak_mib'] / on[small]['peak_mib']:.2f}x "
              "(target <= 1.3x)")  # fmt: skip
    for batch in batches:
        off = results.get((batch, "cache off"))
        if batch in on and isinstance(off, dict):
            print(f"batch {batch}: cache-on step / cache-off step = {on[batch]['step_s'] / off['step_s']:.2f}x "
                  "(target <= 1.6x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
