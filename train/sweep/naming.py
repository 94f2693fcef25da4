"""Cell folder names derived from the cell's values.

``{learning_rate: 0.001, lora_r: 8}`` -> ``lr=0.001_lora_r=8``;
``{loss: {cosent: {weight: 1}, angle: {weight: 1}}}`` -> ``loss=cosent+angle-1f0c9a2b``.

Invariants:
- stable: the same values give the same name in every process and on every run (no counters, no time);
- filesystem-safe: only ``[A-Za-z0-9._+=-]``, at most ``MAX_LENGTH`` characters;
- collision-free: when the readable part does not determine the values exactly (a dict or list value, a
  path shortened to its stem, a character replaced, or a cut for length), an 8-hex hash of the values'
  canonical JSON is appended, so two different cells never share a folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePath

import yaml

MAX_LENGTH = 96
SHORT_KEYS = {
    "model_name_or_path": "model",
    "learning_rate": "lr",
    "train_data": "train",
    "eval_data": "eval",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "bs",
    "global_batch_size": "gbs",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def values_hash(values: dict) -> str:
    """8 hex characters of the SHA-256 of the values' canonical JSON (sorted keys)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def value_label(value) -> str:
    """A short readable label: a loss mapping -> its enabled losses joined by '+', a path -> its stem."""
    if isinstance(value, dict):
        enabled = [name for name, options in value.items() if _weight(options) != 0]
        return "+".join(enabled) or "none"
    if isinstance(value, (list, tuple)):
        return "+".join(value_label(v) for v in value)
    text = str(value)
    if "/" in text or "\\" in text:
        text = PurePath(text).stem or text
    return text


def _weight(options) -> float:
    if isinstance(options, dict):
        return float(options.get("weight", 1))
    if isinstance(options, (int, float)) and not isinstance(options, bool):
        return float(options)
    return 1.0


def cell_label(values: dict) -> str:
    """``key=label`` parts joined by ``_`` (readable; may be lossy)."""
    return "_".join(f"{SHORT_KEYS.get(k, k)}={value_label(v)}" for k, v in values.items())


def _reads_back(value) -> bool:
    """True when ``key=<label>`` alone determines ``value``: a scalar whose text has no separator and, for a
    string, does not read as another type (``"0.001"`` vs ``0.001``)."""
    if not isinstance(value, (str, int, float, bool)) or value_label(value) != str(value):
        return False
    text = str(value)
    if "_" in text or "=" in text:
        return False
    return not isinstance(value, str) or yaml.safe_load(text) == value


def cell_name(values: dict) -> str:
    """The folder name of the cell with ``values`` (see the module invariants)."""
    label = cell_label(values) or "base"
    safe = _UNSAFE.sub("_", label)
    exact = safe == label and all(_reads_back(v) for v in values.values())
    if exact and len(safe) <= MAX_LENGTH:
        return safe
    return f"{safe[: MAX_LENGTH - 9]}-{values_hash(values)}"
