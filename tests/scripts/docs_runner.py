"""Run many documented ``lorasmith`` commands and Python snippets cheaply: import the heavy libraries once, then
fork one child per job, so each job starts in milliseconds with a fresh interpreter state of its own.

Reads a JSON list of jobs from stdin, each ``{"kind": "lorasmith" | "python" | "exec", "argv": [...] |
"code": "...", "log": PATH, "env": {...}}`` (``exec``: another program, run as a subprocess with ``env`` added to the
environment), runs them in order in the current directory, and prints one JSON line per job:
``{"index": i, "rc": exit code, "seconds": s}``. A job's stdout and stderr go to its ``log`` file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback


def preload() -> None:
    """What every job would import on its own (seconds each time without the fork)."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import sentence_transformers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import lorasmith.command  # noqa: F401


def run_job(job: dict) -> int:
    """In the child: the job's exit code (0 on success)."""
    try:
        if job["kind"] == "lorasmith":
            from lorasmith.command import main

            return int(main(job["argv"]) or 0)
        sys.argv = ["-c"]
        exec(compile(job["code"], "<documented snippet>", "exec"), {"__name__": "__main__"})
        return 0
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the snippet's failure is the result
        traceback.print_exc()
        return 1


def fork_job(job: dict) -> int:
    if job["kind"] == "exec":
        with open(job["log"], "wb") as log:
            env = {**os.environ, **job.get("env", {})}
            return subprocess.run(job["argv"], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300).returncode
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = run_job(job)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main() -> None:
    jobs = json.load(sys.stdin)
    preload()
    for index, job in enumerate(jobs):
        start = time.monotonic()
        rc = fork_job(job)
        print(json.dumps({"index": index, "rc": rc, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
