"""One run per output folder: an OS file lock (``fcntl.flock``) on ``<folder>/lorasmith.lock``.

The main process takes it before any model loads and holds it until the command ends (``process.run_main``
releases it) or the process dies: the kernel drops a lock with its process, so a run killed with SIGKILL leaves
nothing stale, and a SLURM requeue of the same job (which starts once the old process has ended) takes it again.
The file says who holds it (pid, host, start time), for the message a second run gets; it stays in the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from lorasmith.errors import ConfigError
from lorasmith.run_folder import LOCK_NAME

_held: dict[Path, int] = {}  # resolved folder -> open file descriptor of its locked lock file, in this process


def lock_run_folder(folder: str | os.PathLike) -> None:
    """Take ``folder``'s lock on the main process (creating the folder); a no-op when this process holds it.

    Call on every process (under ``accelerate launch`` the main process's outcome is broadcast, so all of them
    stop together). Raises ConfigError (exit 2) naming the holder's pid and host when another process holds it.
    """
    state = PartialState()
    problem = _acquire(Path(folder)) if state.is_main_process else None
    if state.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem:
        raise ConfigError(problem)


def release_all() -> None:
    """Release every lock this process holds (the end of a command run in-process)."""
    for folder in list(_held):
        os.close(_held.pop(folder))  # closing the only descriptor releases its flock


def _acquire(folder: Path) -> str | None:
    """None once this process holds ``folder``'s lock; else the message saying who does."""
    key = folder.resolve()
    if key in _held:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        return (
            f"output_dir {folder} is in use by another run (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}): two runs must not write one folder. Wait for it to end, "
            "stop it, or use another --output_dir"
        )
    os.ftruncate(descriptor, 0)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.pwrite(descriptor, (json.dumps(record) + "\n").encode(), 0)
    _held[key] = descriptor
    return None


def _holder(descriptor: int) -> dict:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except ValueError:  # the holder is between truncating and writing it
        return {}
    return record if isinstance(record, dict) else {}
