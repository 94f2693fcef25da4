"""The integration points lorasmith relies on in other libraries, checked against the installed versions.

Each ``check_*`` exercises one integration point the way lorasmith (or a benchmark) uses it, in about a second
once its libraries are imported, and raises ``IntegrationError`` whose message starts with the pair of installed
versions that do not work together, e.g.
``transformers 5.24.0 + peft 0.21.2: add_adapter refuses this peft (transformers 5.24.0 requires peft >= 0.22.0; ...)``.

Callers:
- ``tests/test_integrations.py``: the suite fails on a drifted install instead of passing while a user's
  ``add_adapter`` breaks; ``.ci/refresh-lock`` runs it before it writes ``constraints.txt``.
- the benchmarks that compare against another library's trainer (``bench/embed_stsb.py``, ``bench/sft_sst2.py``):
  ``check_comparisons`` before training anything, so a comparison that cannot run is skipped with the reason
  instead of dying half-way (``--check-deps`` runs only that).

A leaf like the rest of ``lorasmith``: no import of the project's other packages; every check imports its
libraries when called (importing this module is free).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Module names of BERT's attention projections (the tiny test model and the packaged MiniLM).
BERT_LORA_TARGETS = ("query", "value")


class IntegrationError(RuntimeError):
    """Two installed libraries do not work together at an integration point lorasmith uses."""


def version(distribution: str) -> str:
    """Installed version of a distribution, or ``"(not installed)"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def pair(first: str, second: str) -> str:
    """``"transformers 5.24.0 + peft 0.21.2"`` with the installed versions."""
    return f"{first} {version(first)} + {second} {version(second)}"


@contextmanager
def names_pair(first: str, second: str, what: str) -> Iterator[None]:
    """Turn any failure inside the block into ``IntegrationError("<first> v + <second> v: <what> (<error>)")``."""
    try:
        yield
    except IntegrationError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever broke, the message must name the pair
        raise IntegrationError(f"{pair(first, second)}: {what} ({type(error).__name__}: {error})") from error


def unavailable(check: Callable[..., Any], *args, **kwargs) -> str | None:
    """``None`` when ``check(*args, **kwargs)`` passes, else why not, in one line (for a benchmark to print)."""
    try:
        check(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - a benchmark reports any failure and runs what it can
        text = str(error) if isinstance(error, IntegrationError) else f"{type(error).__name__}: {error}"
        return " ".join(text.split())
    return None


def check_comparisons(
    needs: dict[str, Sequence[Callable[[], Any]]], out: Callable[[str], Any] = print
) -> dict[str, str | None]:
    """What a benchmark runs BEFORE training anything: for each part it will run (``name -> the checks it needs``,
    zero-argument callables, ``functools.partial`` for arguments), ``None`` when it can run, else the first
    failing check's message. Prints one line per part, so the reader sees up front what will not run and why.
    A check shared by several parts runs once."""
    results: dict[Callable[[], Any], str | None] = {}
    problems: dict[str, str | None] = {}
    for name, checks in needs.items():
        problem = None
        for check in checks:
            if check not in results:
                results[check] = unavailable(check)
            if results[check] is not None:
                problem = results[check]
                break
        problems[name] = problem
        out(f"dependency check: {name}: " + ("ok" if problem is None else f"CANNOT RUN: {problem}"))
    return problems


def report_not_run(problems: dict[str, str | None], out: Callable[[str], Any] = print) -> int:
    """After a benchmark's table: repeat each part ``check_comparisons`` found unable to run, with why; the exit
    code (1 when a part did not run, else 0)."""
    for name, problem in problems.items():
        if problem:
            out(f"NOT RUN: {name}: {problem}")
    return 1 if any(problems.values()) else 0


def tiny_bert():
    """A 2-layer, hidden-32 ``BertModel`` built from its config (no download, no tokenizer), for the checks."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32,
    )  # fmt: skip
    return BertModel(config)


def _lora_weights(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)


def check_peft_add_adapter(model=None, target_modules: Sequence[str] = BERT_LORA_TARGETS) -> None:
    """transformers' PEFT integration: ``model.add_adapter(LoraConfig(...))`` adds trainable LoRA weights and the
    model still runs forward. sentence-transformers' ``add_adapter`` (its LoRA path) is this call.

    ``model``: a transformers model whose ``target_modules`` exist (default: ``tiny_bert()``).
    """
    import torch

    with names_pair("transformers", "peft", "transformers' PEFT integration does not import"):
        from peft import LoraConfig
        from transformers.integrations import peft as hf_peft
    from packaging.version import Version

    minimum = getattr(hf_peft, "MIN_PEFT_VERSION", None)
    what = "add_adapter fails"
    if minimum and Version(version("peft")) < Version(minimum):
        what = f"add_adapter refuses this peft: transformers {version('transformers')} requires peft >= {minimum}"
    model = tiny_bert() if model is None else model
    with names_pair("transformers", "peft", what):
        model.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=list(target_modules)))
    with names_pair("transformers", "peft", "add_adapter added no trainable LoRA weights"):
        if _lora_weights(model) == 0:
            raise RuntimeError(f"no trainable lora_ parameter on {target_modules}")
    with names_pair("transformers", "peft", "a model with an adapter from add_adapter fails forward"):
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 5, 7, 2]]))


def check_peft_model() -> None:
    """peft's own path, as ``train.common`` uses it: ``get_peft_model`` on a transformers model, save the adapter,
    ``PeftModel.from_pretrained`` + ``merge_and_unload``."""
    import torch

    with names_pair("peft", "transformers", "peft does not import"):
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: F401
    with names_pair(
        "peft", "transformers", "get_peft_model / save / PeftModel.from_pretrained / merge_and_unload fails"
    ):
        model = get_peft_model(
            tiny_bert(), LoraConfig(r=2, lora_alpha=4, target_modules=list(BERT_LORA_TARGETS))
        )
        if _lora_weights(model) == 0:
            raise RuntimeError("get_peft_model added no trainable lora_ parameter")
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            merged = PeftModel.from_pretrained(tiny_bert(), folder).merge_and_unload()
        with torch.no_grad():
            merged(input_ids=torch.tensor([[1, 5, 7, 2]]))


def check_trainer() -> None:
    """``transformers.Trainer`` imports with the installed accelerate (every entrypoint trains with it)."""
    with names_pair("transformers", "accelerate", "transformers.Trainer does not import"):
        from transformers import Trainer  # noqa: F401
        from transformers.utils import import_utils

        minimum = getattr(import_utils, "ACCELERATE_MIN_VERSION", None)
        if not import_utils.is_accelerate_available(*([minimum] if minimum else [])):
            raise RuntimeError(f"transformers wants accelerate >= {minimum}")


def check_trl_sft() -> None:
    """TRL as ``train.sft_classify`` and ``bench/sft_sst2.py`` use it: ``SFTTrainer`` and friends import,
    ``get_peft_config`` builds a LoraConfig, ``SFTConfig`` accepts the answer-only-loss CPU settings."""
    with names_pair("trl", "transformers", "TRL's SFTTrainer does not import"):
        from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config  # noqa: F401
    with names_pair("trl", "peft", "trl.get_peft_config does not build a LoraConfig"):
        lora = get_peft_config(
            ModelConfig(use_peft=True, lora_r=2, lora_target_modules=list(BERT_LORA_TARGETS))
        )
        if type(lora).__name__ != "LoraConfig":
            raise RuntimeError(f"got {type(lora).__name__}")
    with (
        names_pair("trl", "transformers", "SFTConfig rejects lorasmith's settings"),
        tempfile.TemporaryDirectory() as out,
    ):
        SFTConfig(
            output_dir=out, completion_only_loss=True, max_length=32, bf16=False, use_cpu=True, report_to=[],
            save_strategy="no",
        )  # fmt: skip


def check_sentence_transformers(folder: str | Path, lora: Sequence[str] | None = None):
    """sentence-transformers loads ``folder`` (a merged/ output folder, or any sentence-transformers model) and
    encodes; with ``lora`` (target module names) it first adds a LoRA adapter through its ``add_adapter``, as a
    benchmark trains with sentence-transformers' own trainer. Returns the loaded model."""
    with names_pair("sentence-transformers", "transformers", "sentence-transformers does not import"):
        from sentence_transformers import SentenceTransformer
    with names_pair("sentence-transformers", "transformers", f"SentenceTransformer({str(folder)!r}) fails"):
        model = SentenceTransformer(str(folder), device="cpu")
    if lora:
        check_peft_add_adapter(target_modules=lora)  # names transformers + peft when they are the broken pair
        with names_pair("sentence-transformers", "peft", "SentenceTransformer.add_adapter fails"):
            from peft import LoraConfig, TaskType

            model.add_adapter(
                LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=2, target_modules=list(lora))
            )
            if _lora_weights(model) == 0:
                raise RuntimeError(f"no trainable lora_ parameter on {list(lora)}")
    with names_pair("sentence-transformers", "transformers", "SentenceTransformer.encode fails"):
        embeddings = model.encode(["a short sentence", "another one"], convert_to_numpy=True)
        if embeddings.shape[0] != 2:
            raise RuntimeError(f"encode returned shape {embeddings.shape}")
    return model


def check_deepspeed() -> None:
    """DeepSpeed imports (CPU accelerator on a machine without GPUs) and transformers and accelerate see it."""
    with names_pair("deepspeed", "torch", "import deepspeed fails"):
        import deepspeed  # noqa: F401
    with names_pair(
        "transformers", "deepspeed", "transformers' DeepSpeed integration does not see deepspeed"
    ):
        from transformers.integrations import is_deepspeed_available
        from transformers.integrations.deepspeed import HfDeepSpeedConfig  # noqa: F401

        if not is_deepspeed_available():
            raise RuntimeError("is_deepspeed_available() is False")
    with names_pair("accelerate", "deepspeed", "accelerate's DeepSpeed plugin does not see deepspeed"):
        from accelerate.utils import DeepSpeedPlugin, is_deepspeed_available  # noqa: F401

        if not is_deepspeed_available():
            raise RuntimeError("accelerate.utils.is_deepspeed_available() is False")


def check_bitsandbytes() -> None:
    """bitsandbytes imports and round-trips nf4 on CPU; transformers' ``BitsAndBytesConfig`` and peft's 4-bit
    LoRA layers see it (the QLoRA recipes)."""
    import torch

    with names_pair("bitsandbytes", "torch", "import bitsandbytes fails"):
        import bitsandbytes.functional as bnb_functional
    with names_pair("transformers", "bitsandbytes", "transformers does not accept this bitsandbytes"):
        from transformers import BitsAndBytesConfig
        from transformers.utils import import_utils

        minimum = getattr(import_utils, "BITSANDBYTES_MIN_VERSION", None)
        if not import_utils.is_bitsandbytes_available(*([minimum] if minimum else [])):
            raise RuntimeError(f"transformers wants bitsandbytes >= {minimum}")
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    with names_pair("peft", "bitsandbytes", "peft's 4-bit LoRA layers are unavailable"):
        from peft.import_utils import is_bnb_4bit_available

        if not is_bnb_4bit_available():
            raise RuntimeError("peft.import_utils.is_bnb_4bit_available() is False")
    with names_pair("bitsandbytes", "torch", "nf4 quantize/dequantize on CPU fails"):
        weights = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
        packed, state = bnb_functional.quantize_4bit(weights, quant_type="nf4")
        error = (bnb_functional.dequantize_4bit(packed, state) - weights).abs().mean().item()
        if not error < 0.2:
            raise RuntimeError(f"mean absolute round-trip error {error:.3f}")


def check_gguf() -> None:
    """transformers' GGUF loader accepts the installed ``gguf`` (the embedded ``smollm2`` default is a GGUF file)."""
    with names_pair("transformers", "gguf", "transformers' GGUF loader does not accept this gguf"):
        import gguf  # noqa: F401
        from transformers.utils import import_utils

        minimum = getattr(import_utils, "GGUF_MIN_VERSION", None)
        if not import_utils.is_gguf_available(*([minimum] if minimum else [])):
            raise RuntimeError(f"transformers wants gguf >= {minimum}")
