"""Pieces every eval CLI shares: the flag dataclasses (model, how it embeds, output) a CLI's arguments dataclass
inherits, running a CLI (flags parsed by ``lorasmith.recipe_parser``, user errors as exit 2), distributed start-up."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import torch

from lorasmith.errors import ConfigError
from lorasmith.pooling import POOLING_MODES
from lorasmith.process import check_world_size, run_main
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, parse_cli


@dataclasses.dataclass(kw_only=True)
class ModelOption:
    """``--model``: the one model a CLI evaluates."""

    _argument_group_name = "Model"

    model: str = option(
        "a lorasmith output folder, a sentence-transformers folder, an HF model folder or hub id, "
        "or 'minilm' (the packaged all-MiniLM-L6-v2)",
    )


@dataclasses.dataclass(kw_only=True)
class EmbeddingOptions:
    """The flags that override how models embed (default: what the model folder says), as ``load_embedder`` reads
    them."""

    _argument_group_name = "Embedding"

    pooling: str | None = option(
        "override the pooling (default: from the folder, else mean)", default=None, choices=POOLING_MODES
    )
    normalize: bool | None = option("L2-normalize embeddings: true or false (default: from the folder, else yes)", default=None)
    max_length: int | None = option(
        "truncate texts to this many tokens (default: from the folder)", default=None
    )
    truncate_dim: int | None = option(
        "keep the first D dimensions of every embedding, re-normalized (Matryoshka-trained models; "
        "default: all)",
        default=None,
    )
    batch_size: int = option("texts per forward pass (default 64)", default=64)
    device: str | None = option("cpu, cuda, cuda:1 ... (default: this process's GPU, else CPU)", default=None)
    append_eos: bool | None = option(
        "end every text with the tokenizer's EOS token (default: from the folder, else on for a decoder with "
        "pooling last)",
        default=None,
    )
    dtype: str | None = option(
        "weights' dtype: float32, bfloat16, float16 (default: bfloat16 on GPU, float32 on CPU)",
        default=None,
        choices=["float32", "bfloat16", "float16"],
    )
    load_in_4bit: bool = option(
        "load the model in 4-bit (bitsandbytes nf4, double quantization, computing in dtype); a LoRA run's "
        "adapter stays unmerged on the 4-bit base, as QLoRA trained it",
        default=False,
    )
    no_progress: bool = option("hide the progress bar", default=False)

    def __post_init__(self):
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise ConfigError(f"--truncate_dim expects a positive integer, got {self.truncate_dim}")


@dataclasses.dataclass(kw_only=True)
class OutputOption:
    """``--output``: a file that also receives the result JSON."""

    _argument_group_name = "Output"

    output: str | None = option("also write the result JSON to this file", default=None)


def load_embedder(args: EmbeddingOptions, model: str | None = None):
    """``Embedder.load(model or args.model)`` with the override flags of :class:`EmbeddingOptions`."""
    from lorasmith.encoder import Embedder

    return Embedder.load(
        model or args.model,
        pooling=args.pooling,
        normalize=args.normalize,
        max_length=args.max_length,
        device=args.device,
        show_progress=not args.no_progress,
        truncate_dim=args.truncate_dim,
        append_eos=args.append_eos,
        dtype=args.dtype,
        load_in_4bit=args.load_in_4bit,
    )


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,5,10"`` -> ``(1, 5, 10)``."""
    try:
        ks = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise ConfigError(f"--k expects comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k expects comma-separated positive integers, got {text!r}")
    return ks


def check_device(device: str | None) -> None:
    """ConfigError for a ``--device`` this machine does not have (``cuda`` without CUDA, ``cuda:3`` of 2 GPUs)."""
    if not device:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device name (cpu, cuda, cuda:1, mps ...)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: this machine has no CUDA GPU; use --device cpu or leave it out")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")


def check_writable(path: str | None, flag: str, *, folder: bool = False) -> None:
    """ConfigError unless ``path`` (a file, or with ``folder`` a folder) can be written, checked before any work so
    that results are never computed and then lost. Missing parent folders are created later and pass."""
    if not path:
        return
    existing = os.path.abspath(path)
    if os.path.exists(existing):
        if os.path.isdir(existing) != folder:
            kind = "a file" if folder else "a folder: give a file path, e.g. " + os.path.join(path, "result.json")
            raise ConfigError(f"{flag} {path} is {kind}")
    else:
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{flag} {path}: no permission to write {existing}")


def init_distributed() -> None:
    """Join the process group when started by ``accelerate launch``/torchrun with several processes.

    On a machine without CUDA the processes use gloo (accelerate would otherwise start them as
    independent world-1 processes). ``LORASMITH_EXPECT_WORLD_SIZE``, when set, must equal the world size.
    """
    from accelerate import PartialState

    check_world_size(PartialState(cpu=not torch.cuda.is_available()))


def run_cli(body: Callable, parser: RecipeParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` into the parser's arguments dataclass and run ``body(args)``; a user error (a bad flag
    included) prints one line to stderr and returns 2."""

    def start_and_run():
        (args,) = parse_cli(parser, argv)
        check_device(getattr(args, "device", None))
        check_writable(getattr(args, "output", None), "--output")
        check_writable(getattr(args, "output_dir", None), "--output_dir", folder=True)
        init_distributed()
        body(args)

    return run_main(start_and_run)
