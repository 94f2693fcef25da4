"""Start-up checks shared by every entrypoint: the world size we were launched with and the precision.

Both are checked before any model is loaded so that a bad launch or a bad combination costs seconds.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState

from data_utils.errors import ConfigError

EXPECT_WORLD_SIZE_ENV = "LORASMITH_EXPECT_WORLD_SIZE"


def check_world_size(state: PartialState | None = None) -> int:
    """The number of processes; ConfigError if it differs from ``$LORASMITH_EXPECT_WORLD_SIZE``.

    Measured trap: ``accelerate launch --cpu --num_processes 2`` starts ONE process without a word, and a
    2-process launch without the CPU flag trains twice as two worlds of 1. Tests and the SLURM launcher
    export the size they asked for so a silent mismatch becomes an error.
    """
    world_size = (state or PartialState()).num_processes
    expected = os.environ.get(EXPECT_WORLD_SIZE_ENV)
    if expected and int(expected) != world_size:
        raise ConfigError(
            f"launched for {expected} processes but running as {world_size}: on a machine without GPUs use "
            "`accelerate launch --config_file accelerate_configs/cpu_ddp.yaml` (not --cpu, which starts one process)"
        )
    return world_size


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX); plain AVX2 emulates it ~100x slower."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def check_precision(training_args) -> None:
    """Refuse bf16/fp16 on a CPU that would emulate them (measured ~100x slower than fp32 here)."""
    if torch.cuda.is_available():
        if training_args.bf16 and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16 requested but this GPU does not support it: use fp16: true or bf16: false")
        return
    if training_args.fp16:
        raise ConfigError("fp16 needs a GPU; on CPU set fp16: false (fp32 is the fast choice here)")
    if training_args.bf16 and not cpu_supports_bf16():
        raise ConfigError(
            f"bf16 requested on a CPU without bf16 support ({torch.backends.cpu.get_cpu_capability()}): it runs about "
            "100x slower than fp32. Set bf16: false (or --bf16 false) for CPU runs."
        )
