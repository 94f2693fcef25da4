"""Run cells on this machine, one after another: each an ordinary entrypoint run in a subprocess.

Per cell (``run_cell``): skip it when ``sweep_done.json`` says it finished (its files are not touched); else
write ``cell.yaml``, run the entrypoint on it with the output appended to ``sweep.log`` (the same output_dir,
so an interrupted cell resumes from its last complete checkpoint), check the entrypoint's files, evaluate the
suite, and write ``sweep_done.json``. A non-zero exit writes ``sweep_failed.json`` (exit code + output tail)
and the sweep goes on with the next cell.

Signals: SIGTERM / SIGUSR1 / SIGINT to the sweep are forwarded to the running cell (which checkpoints and
exits); the sweep then stops without starting another cell, and a re-run continues where it stopped.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from train.sweep import state, suite
from train.sweep.cells import Cell, cell_command, format_command
from train.sweep.spec import SweepSpec


@dataclass(frozen=True)
class Outcome:
    """How a cell ended in this invocation: done | skipped (already done) | failed | interrupted."""

    status: str
    seconds: float = 0.0
    error: str = ""


class Stopper:
    """Forwards SIGTERM/SIGUSR1/SIGINT to the running cell and remembers that the sweep must stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._child: subprocess.Popen | None = None
        self._previous: dict = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.requested = True
        print(
            f"[sweep] signal {signal.Signals(signum).name}: the running cell saves a checkpoint; no new cell starts",
            flush=True,
        )
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    def run(self, command: list[str], log_path: Path) -> int:
        """Run ``command`` with stdout+stderr appended to ``log_path``; its exit code."""
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n### sweep: {format_command(command)}\n")
            log.flush()
            self._child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                while True:
                    try:
                        return self._child.wait()
                    except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                        continue
            finally:
                self._child = None


class Progress:
    """Progress lines: ``cell i/N <name> | done d/N, failed f | ETA``; the ETA is the mean duration of the
    cells trained in this invocation times the cells still to run."""

    def __init__(self, total: int):
        self.total, self.done, self.failed = total, 0, 0
        self.durations: list[float] = []

    def eta(self, remaining: int) -> str:
        if not self.durations or remaining <= 0:
            return "?" if remaining > 0 else "0s"
        return _duration(sum(self.durations) / len(self.durations) * remaining)

    def start(self, position: int, cell: Cell, remaining: int) -> None:
        print(
            f"[sweep] cell {position}/{self.total} {cell.name} | done {self.done}/{self.total}, failed {self.failed} "
            f"| ETA {self.eta(remaining)} | log {cell.folder / state.LOG}",
            flush=True,
        )

    def finish(self, position: int, cell: Cell, outcome: Outcome) -> None:
        if outcome.status in ("done", "skipped"):
            self.done += 1
        if outcome.status == "failed":
            self.failed += 1
        if outcome.status == "done":
            self.durations.append(outcome.seconds)
        took = f" in {_duration(outcome.seconds)}" if outcome.seconds else ""
        print(f"[sweep] cell {position}/{self.total} {cell.name}: {outcome.status}{took}", flush=True)
        if outcome.error:
            print("\n".join("    " + line for line in outcome.error.splitlines()), flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _run_step(step, folder, log_path, stopper: Stopper, started: float) -> Outcome | None:
    """Run one step of a cell (``step()`` -> exit code, its output appended to ``log_path``): the cell's outcome
    when the step ends the cell (a stop was requested; a non-zero exit, recorded with the log lines it wrote),
    None when it succeeded."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    returncode = step()
    if stopper.requested:
        return Outcome("interrupted", time.monotonic() - started)
    if returncode != 0:
        tail = state.log_tail(log_path, since=offset)
        state.mark_failed(folder, returncode, tail)
        return Outcome("failed", time.monotonic() - started, tail)
    return None


def run_cell(spec: SweepSpec, cell: Cell, stopper: Stopper) -> Outcome:
    """Train (or resume) one cell, evaluate its suite, mark it done or failed (see the module docstring)."""
    folder, log_only = cell.folder, not spec.save_model
    if state.is_marked_done(folder):
        return Outcome("skipped")
    changed = state.recipe_differences(cell.recipe_path, cell.recipe)
    if changed:
        print(f"[sweep] warning: {cell.name} was started with another recipe ({', '.join(changed)}); the "
              "entrypoint refuses to mix runs: use a new sweep output_dir to train it again", flush=True)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / state.LOG
    started = time.monotonic()
    if not state.training_finished(folder, log_only):
        state.clear_failure(folder)
        state.write_cell_recipe(cell.recipe_path, cell.recipe)
        train = functools.partial(stopper.run, cell_command(spec, cell), log_path)
        ended = _run_step(train, folder, log_path, stopper, started)
        if ended is not None:
            return ended
        if not state.training_finished(folder, log_only):  # exit 0 after a signal: a checkpoint, no outputs
            return Outcome("interrupted", time.monotonic() - started)
    if spec.suite is not None and not log_only and not suite.suite_done(folder):
        evaluate = functools.partial(suite.evaluate_cell, folder, spec.suite, log_path)
        ended = _run_step(evaluate, folder, log_path, stopper, started)
        if ended is not None:
            return ended
    seconds = time.monotonic() - started
    state.mark_done(
        folder, {"seconds": round(seconds, 1), "command": format_command(cell_command(spec, cell))}
    )
    return Outcome("done", seconds)


def run_cells(spec: SweepSpec, cells: list[Cell]) -> dict[str, Outcome]:
    """Every cell in order (finished ones skipped); {cell name: outcome}. Stops early on a signal."""
    progress, outcomes = Progress(len(cells)), {}
    with Stopper() as stopper:
        for position, cell in enumerate(cells, start=1):
            if state.is_marked_done(cell.folder):
                outcome = Outcome("skipped")
            else:
                remaining = sum(not state.is_marked_done(c.folder) for c in cells[position - 1 :])
                progress.start(position, cell, remaining)
                outcome = run_cell(spec, cell, stopper)
            outcomes[cell.name] = outcome
            progress.finish(position, cell, outcome)
            if stopper.requested:
                break
    return outcomes
