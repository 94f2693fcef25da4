"""Correlation between predicted similarities and gold scores (STS evaluation).

Thin, validated wrappers over ``scipy.stats``: the reference implementation is the metric.
Both return a float in [-1, 1]; NaN when one input is constant (correlation undefined).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def _as_pair(predicted, gold) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    gold = np.asarray(gold, dtype=np.float64).ravel()
    if predicted.shape != gold.shape:
        raise ValueError(f"predicted and gold differ in length: {predicted.size} vs {gold.size}")
    if predicted.size < 2:
        raise ValueError(f"a correlation needs at least 2 pairs, got {predicted.size}")
    return predicted, gold


def _statistic(function, predicted, gold) -> float:
    predicted, gold = _as_pair(predicted, gold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(function(predicted, gold).statistic)


def spearman(predicted, gold) -> float:
    """Spearman rank correlation (ties get average ranks), ``scipy.stats.spearmanr``."""
    return _statistic(stats.spearmanr, predicted, gold)


def pearson(predicted, gold) -> float:
    """Pearson linear correlation, ``scipy.stats.pearsonr``."""
    return _statistic(stats.pearsonr, predicted, gold)
