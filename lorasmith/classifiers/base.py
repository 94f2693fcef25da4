"""What every classifier implementation provides, and the input-row check they share.

A leaf: imports no implementation, so ``lorasmith.classifiers.prompt`` and ``lorasmith.classifiers.sequence`` both import it
and ``lorasmith.classifiers`` (the registry) imports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from lorasmith.errors import DataError


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
