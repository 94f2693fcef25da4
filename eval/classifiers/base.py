"""Load a trained classifier folder behind one interface, whatever the training method.

``kind`` in ``lorasmith.json`` picks the implementation (imported lazily; their modules own the models):
``seq_classifier`` -> ``eval.seqcls_predictor.SequenceClassifier``, ``prompt_classifier`` ->
``eval.label_scoring.PromptClassifier``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from eval.artifacts import MANIFEST_NAME, read_manifest
from lorasmith.errors import ConfigError, DataError


@runtime_checkable
class Classifier(Protocol):
    """What ``eval.classify`` needs from a classifier.

    label_names: label names in id order (column j of ``predict_proba`` is ``label_names[j]``).
    text_columns: the input fields each row must have, in the order the model reads them.
    multi_label: labels are independent (rows of ``predict_proba`` need not sum to 1); a label is
        predicted when its probability >= ``threshold`` (optional attribute, default 0.5).
    """

    label_names: list[str]
    text_columns: list[str]
    multi_label: bool

    def predict_proba(self, rows: list[dict[str, str]], batch_size: int = 16) -> np.ndarray:
        """(N, L) probabilities; each row sums to 1 unless ``multi_label``."""
        ...


def load_classifier(path: str | Path) -> Classifier:
    """The classifier saved in the lorasmith output folder ``path``."""
    manifest = read_manifest(path)
    if manifest is None:
        raise ConfigError(f"{path} is not a lorasmith output folder (no {MANIFEST_NAME})")
    kind = manifest.get("kind")
    if kind == "seq_classifier":
        from eval.seqcls_predictor import SequenceClassifier

        return SequenceClassifier.load(path)
    if kind == "prompt_classifier":
        from eval.label_scoring import PromptClassifier

        return PromptClassifier.load(path)
    raise ConfigError(
        f"{path} holds a model of kind {kind!r}; eval.classify evaluates seq_classifier and prompt_classifier "
        "folders (embedding models: eval.probe)"
    )


def check_input_rows(rows: Sequence[Mapping[str, str]], text_columns: Sequence[str], expected: str) -> None:
    """DataError naming the first 1-based row that lacks text in one of ``text_columns``."""
    for number, row in enumerate(rows, start=1):
        missing = [name for name in text_columns if not isinstance(row.get(name), str)]
        if missing:
            raise DataError(
                f"input has no text in {', '.join(repr(m) for m in missing)}",
                row=number,
                expected=f"{expected} {list(text_columns)}",
                available=list(row),
            )
