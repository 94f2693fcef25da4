"""Classification metrics (offline: scikit-learn, never ``evaluate.load``).

Single-label: ``y_true``/``y_pred`` are (N,) integer label ids in ``[0, L)``.
Multi-label: ``y_true``/``y_pred`` are (N, L) 0/1 indicator matrices.
``probabilities`` is (N, L): rows sum to 1 for single-label, independent per-label probabilities for
multi-label. Every label id in ``[0, L)`` gets a row in the per-class table and in the confusion
matrix even if it never occurs; undefined ratios (no prediction / no example of a class) are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

AVERAGES = ("macro", "micro", "weighted")


def _is_multi_label(y_true: np.ndarray) -> bool:
    return y_true.ndim == 2


def _validate(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no examples to evaluate")
    if _is_multi_label(y_true):
        if y_true.shape[1] != num_labels:
            raise ValueError(f"multi-label targets have {y_true.shape[1]} columns for {num_labels} labels")
    elif y_true.min() < 0 or max(y_true.max(), y_pred.max()) >= num_labels:
        raise ValueError(f"label ids must lie in [0, {num_labels})")


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches (subset accuracy for multi-label)."""
    return float(skm.accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def precision_recall_f1(y_true, y_pred, num_labels: int, average: str | None) -> tuple:
    """``(precision, recall, f1)`` for ``average`` in {"binary" (positive class = label 1), "macro",
    "micro", "weighted", None (per class: three (L,) arrays)}."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = None if _is_multi_label(y_true) or average == "binary" else list(range(num_labels))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, pos_label=1, zero_division=0
    )
    return precision, recall, f1


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """Single-label: (L, L) counts, rows = true label, columns = predicted label.
    Multi-label: (L, 2, 2) per label ``[[tn, fp], [fn, tp]]``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if _is_multi_label(y_true):
        return skm.multilabel_confusion_matrix(y_true, y_pred)
    return skm.confusion_matrix(y_true, y_pred, labels=list(range(num_labels)))


def expected_calibration_error(y_true, probabilities, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (Guo et al. 2017): sum over bins of
    ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``.

    Single-label: confidence = max probability, prediction = its argmax. Multi-label: every
    (example, label) decision counts, confidence = max(p, 1 - p), prediction = p >= 0.5.
    """
    y_true, probabilities = np.asarray(y_true), np.asarray(probabilities, dtype=np.float64)
    if _is_multi_label(y_true):
        confidence = np.maximum(probabilities, 1 - probabilities).ravel()
        correct = ((probabilities >= 0.5) == y_true.astype(bool)).ravel()
    else:
        confidence = probabilities.max(axis=1)
        correct = probabilities.argmax(axis=1) == y_true
    bin_ids = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)  # bins (lo, hi]
    ece = 0.0
    for b in np.unique(bin_ids):
        in_bin = bin_ids == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def metric_names(label_names: Sequence[str], *, multi_label: bool, probabilities: bool) -> list[str]:
    """The scalar keys :func:`classification_metrics` returns for these labels (``ece`` with ``probabilities``)."""
    names = ["num_examples", "accuracy"]
    names += [f"{metric}_{average}" for average in AVERAGES for metric in ("precision", "recall", "f1")]
    if len(label_names) == 2 and not multi_label:
        names += ["precision", "recall", "f1"]
    return names + (["ece"] if probabilities else [])


def classification_metrics(
    y_true, y_pred, label_names: Sequence[str], probabilities=None, *, ece_bins: int = 15
) -> dict:
    """Every metric as a flat, JSON-ready dict.

    Keys: ``accuracy``, ``{precision,recall,f1}_{macro,micro,weighted}``, for two labels also
    ``precision``/``recall``/``f1`` of the positive class (label id 1), ``per_class``
    ({name: {precision, recall, f1, support}}), ``confusion_matrix`` (nested lists, see
    ``confusion_matrix``), ``num_examples``, and ``ece`` when ``probabilities`` is given.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    num_labels = len(label_names)
    _validate(y_true, y_pred, num_labels)
    result: dict = {"num_examples": int(y_true.shape[0]), "accuracy": accuracy(y_true, y_pred)}
    for average in AVERAGES:
        precision, recall, f1 = precision_recall_f1(y_true, y_pred, num_labels, average)
        result.update(
            {
                f"precision_{average}": float(precision),
                f"recall_{average}": float(recall),
                f"f1_{average}": float(f1),
            }
        )
    if num_labels == 2 and not _is_multi_label(y_true):
        precision, recall, f1 = precision_recall_f1(y_true, y_pred, num_labels, "binary")
        result.update({"precision": float(precision), "recall": float(recall), "f1": float(f1)})
    precision, recall, f1 = precision_recall_f1(y_true, y_pred, num_labels, None)
    support = y_true.sum(axis=0) if _is_multi_label(y_true) else np.bincount(y_true, minlength=num_labels)
    result["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, num_labels).tolist()
    if probabilities is not None:
        result["ece"] = expected_calibration_error(y_true, probabilities, n_bins=ece_bins)
    return result
