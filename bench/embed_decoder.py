"""A decoder LLM as an embedder on CPU: the packaged SmolLM2-135M-Instruct (``smollm2``) as-is (mean pooling; last
token after an appended EOS) vs LoRA-trained by ``train.embed``, on STS-B and SciFact, and one training step with
the base in full precision vs 4-bit nf4. Prints a quality table (targets next to the measured values) and a speed
table; ``--json PATH`` writes both there too.

    python bench/embed_decoder.py [--parts sts scifact speed] [--data-root ../shared/data] [--max-steps N]
        [--corpus-docs 2000] [--doc-max-length 64] [--work-dir DIR] [--json PATH] [--smoke]

The model: the GGUF is dequantized once to fp32 safetensors in the work folder (``smollm2-fp32/``; ~20 s) and every
run loads that copy: bitsandbytes quantizes safetensors weights, not a GGUF, and dequantizing costs ~20 s per load.
Trained runs: LoRA r=16 / alpha 32 / dropout 0.05 on every linear layer, last-token pooling on the appended EOS,
seed 42, fp32, ``--max-steps`` optimizer steps (default: 100 for STS-B, 16 for SciFact).

- ``sts``: STS-B test Spearman x 100 (``eval.sts`` on the raw release, 1,379 pairs). Trained:
  ``configs/embed/sts_cosent.yaml`` (CoSENT, batch 16, lr 2e-4, max length 128) on ``sts-train.csv``; 100 steps
  read 1,600 of its 5,749 pairs. No instruction. Target >= 80.
- ``scifact``: NDCG@10 x 100 of the 300 test queries (``eval.retrieval``). Trained:
  ``configs/embed/decoder_retrieval.yaml`` (InfoNCE at temperature 0.02, gradient cache in chunks of 8, batch 16,
  lr 2e-4) on every train query -> each document judged relevant to it (title + text; 809 queries, 919 pairs), each
  pair with 1 hard negative mined by ``train.mine`` over the full corpus with the packaged MiniLM (ranks 10-100,
  relative margin 0.05: ``bench/embed_scifact.py``'s mining, at the documents' max length; at 64 tokens 808 pairs
  keep one; 16 steps read 256 of them). Queries carry the e5-mistral style instruction ``QUERY_TEMPLATE`` (as-is
  rows too), documents none. Queries and documents are cut at ``--doc-max-length`` tokens (default 64; the
  instruction and a claim take 38 on average, 85 at most). The corpus: ``--corpus-docs`` documents (default 2,000,
  to keep the run near 30 minutes (see below): every document judged for a test query, plus a seeded sample of the
  others; 0 = all 5,183). Target >= 60, stated for the full corpus: a smaller corpus has fewer distractors and
  scores higher, so the table names the corpus it used.
- ``speed``: one training step of the SciFact recipe (8 train pairs, gradient cache in chunks of 8, packed) with the
  base in fp32 and loaded 4-bit (nf4, double quantization) through ``train.common.modeling.load_model``, each in a
  fresh subprocess: mean seconds of 2 steps after a warm-up, peak memory during them (weights included), its growth
  over the memory before them (the step's own), the parameters' bytes as stored. On CPU memory = the process's
  resident set (tracemalloc cannot see torch's allocations): its peak is the kernel's high-water mark, reset through
  ``/proc/self/clear_refs`` just before the steps, after the weights were copied out of the safetensors file mapping
  (``own_memory``) and freed heap returned (``malloc_trim``); the growth includes what the allocator keeps after the
  warm-up step. On CUDA: ``torch.cuda.max_memory_allocated`` / ``memory_allocated``, bf16 weights and compute.
  Optimizer excluded (the same LoRA AdamW in both).

As-is rows: one forward per text serves both poolings. Texts end with the appended EOS; its state is the last-token
embedding, and the mean of the states before it is the mean-pooling embedding, because a causal decoder's state of a
token does not depend on later tokens: exactly what ``Embedder.load(model, pooling="mean")`` (no EOS) gives, except
for a text cut at the max length, which lost its last token to the EOS.

Time on 2 CPU cores alone, from measured pieces: smollm2 forwards ~450 tokens/s (7 documents/s at 64 tokens, 3.6 at
128, 1.65 at 256; STS-B test's 2,552 sentences ~65 s); train.embed steps ~3 s on STS-B, ~27 s on SciFact (16
triplets, 64 tokens, gradient cache); mining ~45 s. Defaults: sts ~7 min, scifact ~19 min (each of the two encodes
of 300 queries + 2,000 documents ~5 min, 16 steps ~7.5 min), speed ~1 min, the model copy 0.5 min: ~28 min. A
corpus encode grows with the corpus and its length: ``--corpus-docs 0`` adds ~15 min at 64 tokens; at 256 tokens
one encode of the full corpus takes ~52 min. The times of the finished parts are printed. ``--smoke``: a few texts
and 2 steps per part, ~2 minutes. Exits 0 with a note when the data folder is absent.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import embed_scifact  # noqa: E402
import gpu_check  # noqa: E402

from eval.report import format_table, write_json  # noqa: E402
from eval.retrieval import RetrievalTask, load_beir_task, run_retrieval  # noqa: E402
from eval.sts import load_sts_data, sts_correlations  # noqa: E402
from lorasmith.encoder import Embedder  # noqa: E402
from lorasmith.pooling import last_token_index, pool  # noqa: E402
from lorasmith.tokenizer_inputs import positions_from_mask  # noqa: E402
from train.embed.instructions import prefix_of  # noqa: E402

QUERY_TEMPLATE = "Instruct: Given a scientific claim, retrieve documents that support or refute the claim\nQuery: {text}"
TARGETS = {"sts": 80.0, "scifact": 60.0}
STS_MAX_LENGTH = 128  # configs/embed/sts_cosent.yaml's
MINI_BATCH = 8  # configs/embed/decoder_retrieval.yaml's gradient-cache chunk
LORA_FLAGS = ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05",
              "--lora_target_modules", "all-linear", "--pooling", "last"]  # fmt: skip
RUN_FLAGS = ["--eval_data", "", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
             "--eval_before_training", "false", "--export_merged", "false", "--report_to", "none",
             "--disable_tqdm", "true", "--logging_steps", "10", "--seed", "42", "--overwrite_output_dir", "true"]  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """How much of each part runs (None: all rows). ``mine_full_corpus``: mine over the 5,183 documents, else over
    the evaluation corpus."""

    sts_test_pairs: int | None
    sts_train_rows: int | None
    sts_steps: int
    test_queries: int | None
    corpus_docs: int
    train_pairs: int | None
    scifact_steps: int
    batch: int
    doc_max_length: int
    mine_full_corpus: bool
    speed_pairs: int
    speed_steps: int


DEFAULT = Sizes(None, None, 100, None, 2000, None, 16, 16, 64, True, 8, 2)
SMOKE = Sizes(24, 16, 2, 6, 40, 16, 2, 4, 32, False, 4, 1)


class BothPoolings(Embedder):
    """``encode(texts) -> (N, 2D)``: columns ``[:D]`` last-token pooling (the appended EOS's state), ``[D:]`` the mean
    of the states before the EOS (the module docstring says why that is the text's mean pooling); each half
    L2-normalised. Load it with ``pooling="last", append_eos=True``."""

    @property
    def dimension(self) -> int:
        return 2 * self.model.get_input_embeddings().embedding_dim

    @torch.no_grad()
    def embed_batch(self, texts) -> torch.Tensor:
        batch = self.tokenize(texts)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)  # (B, T) each
        positions = positions_from_mask(mask)
        hidden = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state  # (B, T, D)
        before_eos = mask.clone()
        before_eos[torch.arange(mask.shape[0]), last_token_index(mask)] = 0
        halves = (pool(hidden, mask, "last"), pool(hidden, before_eos, "mean"))
        return torch.cat([F.normalize(half.float(), dim=-1) for half in halves], dim=-1).cpu()


class AsIs:
    """The model as-is for ``eval.sts`` / ``eval.retrieval``: :meth:`pooled` gives one pooling as the embedder they
    call; every distinct text is embedded once, for both poolings (cached by its prefixed text)."""

    def __init__(self, model_dir: Path, max_length: int):
        self.embedder = BothPoolings.load(str(model_dir), pooling="last", append_eos=True, max_length=max_length,
                                          show_progress=False)  # fmt: skip
        self.cache: dict[str, torch.Tensor] = {}  # prefixed text -> (2D,)

    def encode(self, texts: list[str], batch_size: int) -> torch.Tensor:
        """``(N, 2D)`` of ``BothPoolings`` for ``texts``, embedding only those not seen before."""
        missing = [text for text in dict.fromkeys(texts) if text not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embedder.encode(missing, batch_size), strict=True))
        return torch.stack([self.cache[text] for text in texts])

    def pooled(self, pooling: str, query_prefix: str = "") -> Pooled:
        return Pooled(self, 0 if pooling == "last" else 1, query_prefix)


class Pooled:
    """One pooling of an :class:`AsIs` model: ``encode(texts, batch_size, prefix) -> (N, D)``, rows L2-normalised;
    queries get ``query_prefix``, documents and STS sentences none."""

    normalize = True
    device = torch.device("cpu")
    document_prefix = symmetric_prefix = ""

    def __init__(self, model: AsIs, half: int, query_prefix: str):
        self.model, self.half, self.query_prefix = model, half, query_prefix

    def encode(self, texts, batch_size: int = 64, prefix: str = "", **_) -> torch.Tensor:
        both = self.model.encode([prefix + text for text in texts], batch_size)  # (N, 2D)
        return both.chunk(2, dim=-1)[self.half]


def dequantized_model(folder: Path) -> Path:
    """``folder`` holding smollm2 dequantized to fp32 safetensors with its tokenizer (written once, then reused)."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM

    from train.common.args import ModelArguments
    from train.common.modeling import load_model, load_tokenizer

    args = ModelArguments(model_name_or_path="smollm2", dtype="float32")
    partial = folder.with_name(folder.name + ".partial")
    load_tokenizer(args).save_pretrained(partial)
    load_model(args, AutoModelForCausalLM).save_pretrained(partial)
    partial.rename(folder)
    return folder


def train_run(model_dir: Path, output: Path, config: str, steps: int, batch: int, *flags: str) -> Path:
    """``python -m train.embed --config config`` on the dequantized model with the shared LoRA and run flags."""
    command = [sys.executable, "-m", "train.embed", "--config", config, "--model_name_or_path", str(model_dir),
               "--output_dir", str(output), "--max_steps", str(steps), "--per_device_train_batch_size", str(batch),
               *LORA_FLAGS, *RUN_FLAGS, *flags]  # fmt: skip
    subprocess.run(command, cwd=REPO, env=embed_scifact.ENV, check=True)
    return output


def run_sts(data: Path, work: Path, model_dir: Path, sizes: Sizes) -> dict:
    """Spearman x 100 on STS-B test: as-is mean / last, and the run trained on sts-train.csv."""
    test = load_sts_data(str(data / "sts-test.csv"))
    if sizes.sts_test_pairs:
        test = test.select(range(sizes.sts_test_pairs))
    sentences = (list(test["sentence1"]), list(test["sentence2"]), list(test["score"]))
    as_is = AsIs(model_dir, STS_MAX_LENGTH)
    result = {f"as-is {pooling}": sts_correlations(as_is.pooled(pooling), *sentences)["spearman"]
              for pooling in ("mean", "last")}  # fmt: skip
    limit = ["--max_train_samples", str(sizes.sts_train_rows)] if sizes.sts_train_rows else []
    run = train_run(model_dir, work / "run", "configs/embed/sts_cosent.yaml", sizes.sts_steps, 16,
                    "--train_data", str(data / "sts-train.csv"), *limit)  # fmt: skip
    result["trained"] = sts_correlations(Embedder.load(str(run), show_progress=False), *sentences)["spearman"]
    return result


def subset(task: RetrievalTask, queries: int | None, docs: int, seed: int = embed_scifact.SPLIT_SEED) -> RetrievalTask:
    """``task`` with its first ``queries`` queries (None: all) over ``docs`` documents (0 or more than there are: all):
    every document judged for a kept query, then a seeded sample of the others, in corpus order."""
    query_ids = task.query_ids[:queries]
    qrels = {query: task.qrels[query] for query in query_ids}
    keep = range(len(task.corpus_ids))
    if 0 < docs < len(task.corpus_ids):
        judged = {doc for judgments in qrels.values() for doc in judgments}
        first = [i for i, doc in enumerate(task.corpus_ids) if doc in judged]
        others = [i for i, doc in enumerate(task.corpus_ids) if doc not in judged]
        keep = sorted(first + random.Random(seed).sample(others, max(docs - len(first), 0)))
    return RetrievalTask(query_ids, task.query_texts[: len(query_ids)], [task.corpus_ids[i] for i in keep],
                         [task.corpus_texts[i] for i in keep], qrels)  # fmt: skip


def scifact_files(data: Path, work: Path, sizes: Sizes) -> tuple[RetrievalTask, Path, Path]:
    """(test task, training pairs file, mining corpus file) of the SciFact part."""
    corpus, queries = str(data / "corpus.jsonl"), str(data / "queries.jsonl")
    test = subset(load_beir_task(corpus, queries, str(data / "qrels/test.tsv")), sizes.test_queries, sizes.corpus_docs)
    train = load_beir_task(corpus, queries, str(data / "qrels/train.tsv"))
    embed_scifact.write_jsonl(work / "train_pairs.jsonl", embed_scifact.relevant_pairs(train)[: sizes.train_pairs])
    documents = train.corpus_texts if sizes.mine_full_corpus else test.corpus_texts
    embed_scifact.write_jsonl(work / "corpus.jsonl", [{"text": text} for text in documents])
    return test, work / "train_pairs.jsonl", work / "corpus.jsonl"


def run_scifact(data: Path, work: Path, model_dir: Path, sizes: Sizes) -> dict:
    """NDCG@10 x 100 on the test queries: as-is mean / last, and the run trained on the mined triplets."""
    test, pairs, corpus = scifact_files(data, work, sizes)
    as_is = AsIs(model_dir, sizes.doc_max_length)
    prefix = prefix_of(QUERY_TEMPLATE, "query_prefix")
    result = {f"as-is {pooling}": run_retrieval(as_is.pooled(pooling, prefix), test, ks=(10,))["ndcg@10"]
              for pooling in ("mean", "last")}  # fmt: skip
    del as_is  # its model is not needed while train.mine and train.embed run
    length = str(sizes.doc_max_length)
    mined = embed_scifact.mine({"pairs": pairs, "corpus": corpus}, work / "mined.jsonl", extra=("--max_length", length))
    run = train_run(model_dir, work / "run", "configs/embed/decoder_retrieval.yaml", sizes.scifact_steps, sizes.batch,
                    "--task", "triplets", "--train_data", str(mined), "--query_prefix", QUERY_TEMPLATE,
                    "--max_length", length)  # fmt: skip
    result["trained"] = run_retrieval(Embedder.load(str(run), show_progress=False), test, ks=(10,))["ndcg@10"]
    result["corpus_docs"] = len(test.corpus_ids)
    return result


def resident_kib(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, in KiB."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def own_memory(model: torch.nn.Module) -> None:
    """Copy every floating-point parameter and buffer into process memory. Loading maps the safetensors file: fp32
    weights would page in only as the forward touches them, and a 4-bit load leaves the whole fp32 file mapped and
    read; copied, the resident set holds each weight once, as stored (4-bit weights are uint8 copies already)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point:
                tensor.data = tensor.data.clone()


def measure_step(spec: dict) -> dict:
    """One speed configuration in this process (``spec``: model, nf4, pairs, max_length, steps): mean step seconds,
    peak MiB (module docstring) and the parameters' MiB as stored."""
    from lorasmith.tokenizer_inputs import append_eos
    from train.common.args import ModelArguments
    from train.common.modeling import load_tokenizer
    from train.embed.collator import ContrastiveCollator
    from train.embed.packing import packing_problem
    from train.embed.tasks import EMBED_TASKS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = gpu_check.decoder_embedding_model(spec["model"], "bfloat16" if device.type == "cuda" else "float32",
                                              load_in_4bit=spec["nf4"])  # fmt: skip
    if not spec["nf4"]:  # a quantized model is placed by its device map
        model.to(device)
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=spec["model"]))
    append_eos(tokenizer)
    packing = packing_problem(model, tokenizer, spec["max_length"]) is None
    collator = ContrastiveCollator(tokenizer, EMBED_TASKS["pairs"], spec["max_length"],
                                   prefix_of(QUERY_TEMPLATE, "query_prefix"), "", MINI_BATCH, packing)  # fmt: skip
    inputs = collator(spec["pairs"])
    chunks = [{key: value.to(device) for key, value in chunk.items()} for chunk in collator.chunks(inputs)]

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    loss_of = gpu_check.embed_loss(len(spec["pairs"]), temperature=0.02)
    step = gpu_check.cached_step(model, chunks, inputs["text_order"].to(device), loss_of, autocast)
    gpu_check.reset_peak(device)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated() / 2**20
    else:
        own_memory(model)
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what loading freed leaves the resident set
        before = resident_kib("VmRSS") / 1024
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the resident set now
    seconds = gpu_check.timed(step, spec["steps"], device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resident_kib("VmHWM") / 1024
    stored = sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])
    return {"step_s": seconds, "peak_mib": peak, "growth_mib": peak - before, "param_mib": stored / 2**20,
            "packing": packing, "device": device.type}  # fmt: skip


def run_speed(data: Path, work: Path, model_dir: Path, sizes: Sizes) -> list[dict]:
    """``measure_step`` for fp32 (bf16 on CUDA) and nf4, each in a fresh subprocess (its own peak)."""
    train = load_beir_task(str(data / "corpus.jsonl"), str(data / "queries.jsonl"), str(data / "qrels/train.tsv"))
    pairs = embed_scifact.relevant_pairs(train)[: sizes.speed_pairs]
    results = []
    for nf4 in (False, True):
        spec = {"model": str(model_dir), "nf4": nf4, "pairs": pairs, "max_length": sizes.doc_max_length,
                "steps": sizes.speed_steps}  # fmt: skip
        spec_file = work / f"speed-{'nf4' if nf4 else 'full'}.json"
        spec_file.write_text(json.dumps(spec))
        command = [sys.executable, __file__, "--measure-step", str(spec_file)]
        output = subprocess.run(command, cwd=REPO, env=embed_scifact.ENV, check=True, capture_output=True, text=True)
        results.append({"nf4": nf4, **json.loads(output.stdout.strip().splitlines()[-1])})
    return results


def quality_table(results: dict) -> str:
    """Rows: as-is mean, as-is last, trained; per part run: its measured value and its target."""
    headers, columns = ["smollm2 (135M)"], []
    if "sts" in results:
        headers += ["STS-B test Spearman", "target"]
        columns.append(("sts", results["sts"]))
    if "scifact" in results:
        docs = results["scifact"]["corpus_docs"]
        headers += [f"SciFact NDCG@10 ({docs:,} of 5,183 docs)", "target (full corpus)"]
        columns.append(("scifact", results["scifact"]))
    names = {"as-is mean": "as-is, mean pooling", "as-is last": "as-is, last token + EOS",
             "trained": "+ LoRA (train.embed on the part's train set), last token + EOS"}  # fmt: skip
    rows = [[label] + [cell for part, values in columns for cell in (values[key], f">= {TARGETS[part]:g}")]
            for key, label in names.items()]  # fmt: skip
    return format_table(headers, rows)


def speed_table(results: list[dict], sizes: Sizes) -> str:
    """One row per ``measure_step`` result: step seconds, peak and growth of memory, parameters' bytes."""
    cuda = results[0]["device"] == "cuda"
    dtype = "bf16" if cuda else "fp32"
    memory = "allocated" if cuda else "RSS"
    headers = [f"training step ({sizes.speed_pairs} pairs, {sizes.doc_max_length} tokens, cache {MINI_BATCH})",
               "step s", f"peak {memory} MiB", f"{memory} growth MiB", "parameters MiB"]  # fmt: skip
    rows = [[f"nf4 4-bit base, {dtype} compute" if r["nf4"] else f"{dtype} base", r["step_s"], r["peak_mib"],
             r["growth_mib"], r["param_mib"]] for r in results]  # fmt: skip
    return format_table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["sts", "scifact", "speed"], choices=["sts", "scifact", "speed"])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps of each trained run "
                        f"(default: sts {DEFAULT.sts_steps}, scifact {DEFAULT.scifact_steps})")  # fmt: skip
    parser.add_argument("--corpus-docs", type=int, default=None,
                        help=f"SciFact evaluation corpus size (default {DEFAULT.corpus_docs}; 0 = all 5,183)")  # fmt: skip
    parser.add_argument("--doc-max-length", type=int, default=None,
                        help=f"SciFact max tokens per query and document (default {DEFAULT.doc_max_length})")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None, help="runs and the model copy (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="a few texts, 2 training steps a run (~2 minutes)")
    parser.add_argument("--measure-step", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_step:
        print(json.dumps(measure_step(json.loads(args.measure_step.read_text()))))
        return 0
    data = {"sts": args.data_root / "stsb" / "raw", "scifact": args.data_root / "scifact",
            "speed": args.data_root / "scifact"}  # fmt: skip
    needed = {"sts": "sts-test.csv", "scifact": "corpus.jsonl", "speed": "corpus.jsonl"}
    missing = sorted({str(data[part] / needed[part]) for part in args.parts if not (data[part] / needed[part]).is_file()})
    if missing:
        print(f"note: {', '.join(missing)} not found; nothing to benchmark")
        return 0
    sizes = SMOKE if args.smoke else DEFAULT
    overrides = {"corpus_docs": args.corpus_docs, "doc_max_length": args.doc_max_length}
    if args.max_steps is not None:
        overrides.update(sts_steps=args.max_steps, scifact_steps=args.max_steps)
    sizes = replace(sizes, **{key: value for key, value in overrides.items() if value is not None})
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="embed-decoder-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    model_dir = dequantized_model(work / "smollm2-fp32")
    seconds = {"model copy": time.perf_counter() - started}
    parts = {"sts": run_sts, "scifact": run_scifact, "speed": run_speed}
    results = {}
    for name in args.parts:
        start = time.perf_counter()
        (work / name).mkdir(exist_ok=True)
        results[name] = parts[name](data[name], work / name, model_dir, sizes)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: done in {seconds[name] / 60:.1f} min", flush=True)

    tables = []
    if {"sts", "scifact"} & set(results):
        tables.append(quality_table(results))
    if "speed" in results:
        tables.append(speed_table(results["speed"], sizes))
    print("\n" + "\n\n".join(tables))
    print(f"\nwall time: {', '.join(f'{name} {s / 60:.1f} min' for name, s in seconds.items())}, "
          f"total {(time.perf_counter() - started) / 60:.1f} min; runs in {work}")  # fmt: skip
    if args.json:
        write_json(args.json, {"sizes": vars(sizes), "results": results, "seconds": seconds, "tables": tables})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
