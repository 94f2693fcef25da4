"""Graceful stops: SIGTERM / SIGUSR1 / Ctrl-C become a checkpoint at the next optimizer-step boundary and an exit.

SIGTERM / SIGUSR1 end the run with exit 0 (a scheduler's stop: the job is requeued and resumes). Ctrl-C
(SIGINT) ends it with exit 130 and one line saying how to resume (``run.train`` raises KeyboardInterrupt,
``lorasmith.process.run_main`` prints it); a second Ctrl-C before that quits at once, exit 130, without saving
(a checkpoint cut short has no completion marker: the next run moves it aside and resumes from the previous one).

Who sends them: ``kill <pid>``, SLURM at the time limit (SIGTERM, then SIGKILL after ``KillWait``), and
``#SBATCH --signal=USR1@<seconds>`` before the limit (``slurm/launch.slurm`` forwards it to every rank and
requeues the job). ``torchrun`` (under ``accelerate launch``) forwards SIGTERM to its workers and, when
``PET_SIGNALS_TO_HANDLE`` lists it, SIGUSR1 too; it kills them ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds
(default 30) later, so that must exceed one step plus one checkpoint save.

Invariant: every rank stops after the same optimizer step. A signal may reach one rank only (or reach the
ranks at different steps), so after each step the ranks agree with one all-reduce (MAX) of their flags.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist
from accelerate import PartialState
from transformers import TrainerCallback

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopOnSignal(TrainerCallback):
    """Set a flag from the signal handler; at the next step end, save a checkpoint and stop training.

    Handlers are installed when the callback is built (so a signal that arrives while the model is still
    loading is not lost) and the previous handlers come back at the end of training.
    ``received`` is the signal number caught on this rank (None if none); ``stopped`` is True once
    training was stopped because of a signal on any rank; ``interrupted`` is True when that stop was a
    Ctrl-C on any rank (the run then exits 130, not 0).
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.received: int | None = None
        self.stopped = False
        self.interrupted = False
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():  # signal.signal raises elsewhere
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:  # pressed twice: quit now
            raise KeyboardInterrupt("pressed twice: stopped without saving; the last complete checkpoint is kept")
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        control.should_training_stop = False  # a control restored from a signal-stopped checkpoint must not stop us

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.received is not None):
            self.stopped = True
            self.interrupted = _any_rank(self.received == signal.SIGINT)
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                name = signal.Signals(self.received).name if self.received else "a signal on another rank"
                again = " (press Ctrl-C again to quit without saving)" if self.interrupted else ""
                print(f"lorasmith: got {name}; saving checkpoint-{state.global_step} and stopping{again}", flush=True)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:  # the checkpoint was written at the step end; no epoch-end evaluation or second save
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _any_rank(flag: bool) -> bool:
    """True if ``flag`` is True on any rank (one all-reduce; the plain value without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=PartialState().device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
