"""Run a command under ``accelerate launch`` on several CPU processes (gloo) and check it really ran on them.

Measured trap: ``accelerate launch --cpu --num_processes 2`` starts ONE process without a word. We launch
with ``accelerate_configs/cpu_ddp.yaml`` (torchrun underneath) and export ``LORASMITH_EXPECT_WORLD_SIZE``;
lorasmith's entrypoints refuse to run when the world size differs from it, and test scripts assert it too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_DDP_CONFIG = REPO / "accelerate_configs" / "cpu_ddp.yaml"


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_env(**extra: str) -> dict[str, str]:
    """The environment every subprocess of the test suite runs with: offline, repo on the path."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def run_multiprocess(
    args: list[str],
    *,
    num_processes: int = 2,
    config_file: Path | str = CPU_DDP_CONFIG,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    expect_success: bool = True,
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file CONFIG --num_processes N <args>`` with a fresh rendezvous port.

    ``args`` is what follows the launcher options, e.g. ``["-m", "train.embed", "--config", ...]`` or
    ``["path/to/script.py", ...]``. Raises AssertionError with the output tail when the exit code is not 0
    (unless ``expect_success=False``).
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(config_file),
        "--num_processes", str(num_processes),
        "--main_process_port", str(free_port()),
        *args,
    ]
    launch_env = test_env(LORASMITH_EXPECT_WORLD_SIZE=str(num_processes), **(env or {}))
    result = subprocess.run(command, cwd=REPO, env=launch_env, capture_output=True, text=True, timeout=timeout)
    if expect_success and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
            f"\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result
