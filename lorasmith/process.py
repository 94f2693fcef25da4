"""Process-level conventions shared by every command line (train entrypoints, eval CLIs, data check).

- ``run_main``: a user error (``LorasmithError``) prints one paragraph and exits with its ``exit_code`` (2; 3
  for a run that learned nothing, 4 for one that diverged), never a traceback; Ctrl-C prints one line and exits
  130. The output folders the command locked (``lorasmith.run_lock``) are released when it ends.
- ``check_world_size``: the launch came up with the number of processes it was asked for.
- Library console noise is silenced (``lorasmith.console``): its log filters on import, the rest in ``run_main``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from accelerate import PartialState

from lorasmith import run_lock
from lorasmith.console import quiet_libraries
from lorasmith.errors import ConfigError, LorasmithError

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


def run_main(main: Callable[..., object], *args) -> int:
    """Call ``main(*args)``; a user error prints one paragraph to stderr (no traceback) and returns its
    ``exit_code`` (2, 3 for NothingLearned, 4 for TrainingDiverged); Ctrl-C (KeyboardInterrupt, whose text says what was saved)
    prints one line and returns 130, the shell's code for SIGINT.

    The process group is torn down before returning: gloo threads still alive at interpreter exit can
    abort a rank ("terminate called without an active exception") after a run that succeeded.
    """
    quiet_libraries()
    try:
        main(*args)
    except LorasmithError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        print(f"interrupted (Ctrl-C): {interrupt or 'stopped; the last complete checkpoint is kept'}", file=sys.stderr)
        return 130
    finally:
        run_lock.release_all()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
