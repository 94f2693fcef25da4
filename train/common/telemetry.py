"""What the classifiers' training logs say about their forwards: ``padding_share``, ``tokens_per_second`` and
``examples_per_second`` (a ``Trainer`` mixin; ``train.embed`` logs the same names from its own trainer).

Per logging window (the training steps between two logs), summed over every process:

- ``padding_share``: padding token slots / all token slots of the training forwards (``R x L`` of a packed
  forward, ``B x W`` of a padded one);
- ``tokens_per_second``: real (non-padding) tokens / seconds since the window's first forward;
- ``examples_per_second``: examples / the same seconds.
"""

from __future__ import annotations

import time

import torch


class ForwardTelemetry:
    """Mixin for a ``Trainer`` subclass (put it first in the bases): call :meth:`record_forward` for each training
    forward; training logs (those with ``loss``) then carry the window's numbers (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._forward_window = [0, 0, 0]  # real tokens, token slots, examples
        self._window_start: float | None = None

    def record_forward(self, real_tokens: int, token_slots: int, examples: int) -> None:
        """Count one training forward: its real tokens, its token slots (real + padding) and its examples."""
        if self._window_start is None:
            self._window_start = time.perf_counter()
        for i, value in enumerate((real_tokens, token_slots, examples)):
            self._forward_window[i] += int(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window_start is not None:
            logs.update(self._window_telemetry())
        super().log(logs, start_time)

    def _window_telemetry(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        counts = torch.tensor(self._forward_window, dtype=torch.float64, device=self.args.device)
        real, slots, examples = self.accelerator.reduce(counts, reduction="sum").tolist()  # every process
        self._forward_window, self._window_start = [0, 0, 0], time.perf_counter()
        return {
            "padding_share": 1 - real / max(slots, 1),
            "tokens_per_second": real / elapsed,
            "examples_per_second": examples / elapsed,
        }
