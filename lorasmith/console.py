"""What the libraries print on a lorasmith console: what helps a user stays, the rest is silenced at its source.

Silenced (each by its logger name or message, nothing else from those libraries):
- transformers' ``LOAD REPORT`` when every key it lists is a ``pooler.*`` weight, UNEXPECTED (a checkpoint
  with a pooler loaded without one) or MISSING (a merged export saved without it, loaded by ``AutoModel``): our
  encoders pool the token states themselves and never call the pooler. A report naming any other key (a
  MISSING weight is a randomly initialised one that the model uses; a MISMATCHED shape) is kept.
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community": an optional CPU kernel for
  4-bit layers, logged when peft is imported; bitsandbytes falls back to its own kernel.
- transformers' "Loading weights" progress bar (one per model load, hence per evaluation); training and
  encoding progress bars are other bars and stay.
- FutureWarnings raised inside torch, transformers, peft, trl, accelerate, datasets, sentence-transformers
  (deprecations the user cannot act on).

``filter_library_logs`` must run before peft is imported: ``lorasmith.process`` (imported by every
entrypoint before its ``train``/``eval`` modules) calls it; ``quiet_libraries`` (called by ``run_main``)
does the rest. Both are idempotent.
"""

from __future__ import annotations

import logging
import re
import warnings

_KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"
_LOAD_REPORT_LOGGERS = ("transformers.modeling_utils", "transformers.modeling_layers")
_LIBRARIES = r"(torch|transformers|peft|trl|accelerate|datasets|sentence_transformers)(\.|$)"
_REPORT_ROW = re.compile(r"^(\S+)\s*\|\s*([A-Z_]+)\s*\|")


class _DropMessages(logging.Filter):
    """Drops records for which ``is_noise(message)`` is true."""

    def __init__(self, is_noise):
        super().__init__()
        self.is_noise = is_noise

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.is_noise(record.getMessage())


def is_pooler_only_load_report(message: str) -> bool:
    """A transformers LOAD REPORT whose every key row is ``pooler.* | UNEXPECTED`` or ``pooler.* | MISSING``."""
    if "LOAD REPORT" not in message:
        return False
    rows = [match.groups() for line in message.splitlines() if (match := _REPORT_ROW.match(line.strip()))]
    keys = [(key, status) for key, status in rows if key != "Key"]
    pooler_only = all(key.startswith("pooler.") and status in ("UNEXPECTED", "MISSING") for key, status in keys)
    return bool(keys) and pooler_only


def _is_kernels_warning(message: str) -> bool:
    return message.startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


def _add_filter(logger_name: str, is_noise) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessages) and f.is_noise is is_noise for f in logger.filters):
        logger.addFilter(_DropMessages(is_noise))


def filter_library_logs() -> None:
    """Attach the message filters to the loggers that emit the noise (see module docstring)."""
    _add_filter(_KERNELS_LOGGER, _is_kernels_warning)
    for name in _LOAD_REPORT_LOGGERS:
        _add_filter(name, is_pooler_only_load_report)


def quiet_libraries() -> None:
    """``filter_library_logs``, no weight-loading progress bar, no library FutureWarnings."""
    from transformers.utils import logging as transformers_logging

    filter_library_logs()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=_LIBRARIES)
