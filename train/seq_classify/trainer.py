"""Loss, metrics and the ``Trainer`` subclass of ``train.seq_classify``.

The loss is computed here (never by the model) so that class weights and multi-label apply the same way to
every backbone:

| problem      | logits | labels          | loss                                                           |
|--------------|--------|-----------------|----------------------------------------------------------------|
| single-label | (B, L) | (B,) int ids    | cross-entropy, ``weight[y]`` per example, weighted mean          |
| multi-label  | (B, L) | (B, L) 0/1      | BCE-with-logits, ``pos_weight[j]`` on the positive term, mean     |

Without class weights both equal the loss transformers' heads compute themselves. The loss is a per-batch
mean; the Trainer divides it by the gradient-accumulation steps (``loss_is_scaled_for_ga = False``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from transformers import EvalPrediction, Trainer

from eval.metrics.classification import classification_metrics, metric_names
from lorasmith.classifiers.sequence import decide, probabilities_from_logits
from lorasmith.errors import ConfigError
from lorasmith.run_folder import scalar_metrics
from train.common.telemetry import ForwardTelemetry
from train.seq_classify.chunks import pooled_forward
from train.seq_classify.packing import PackedClassifier


def class_weight_vector(
    spec, labels: np.ndarray, label_names: Sequence[str], multi_label: bool
) -> torch.Tensor | None:
    """(L,) loss weights from the recipe's ``class_weights`` (None when unset).

    Args:
        spec: None, ``"balanced"``, a list of L positive numbers, or the CLI string ``"1,3"``.
        labels: training labels — (N,) ids, or (N, L) 0/1 for multi-label.
    Balanced: single-label ``N / (L * count_j)`` (scikit-learn); multi-label ``negatives_j / positives_j``.
    Raises ConfigError for a wrong count, non-positive weights, or a label with no training example.
    """
    if spec is None:
        return None
    num_labels = len(label_names)
    if spec == "balanced":
        counts = labels.sum(axis=0) if multi_label else np.bincount(labels, minlength=num_labels)
        absent = [name for name, count in zip(label_names, counts, strict=True) if count == 0]
        if absent:
            raise ConfigError(
                f"class_weights: balanced needs a training example of every label; none for {', '.join(absent)}. "
                "Give explicit weights or remove the label from labels"
            )
        if multi_label:
            return torch.tensor((len(labels) - counts) / counts, dtype=torch.float32)
        weights = compute_class_weight("balanced", classes=np.arange(num_labels), y=labels)
        return torch.tensor(weights, dtype=torch.float32)
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        weights = [float(part) for part in parts]
    except (TypeError, ValueError):
        raise ConfigError(
            f"class_weights must be 'balanced' or numbers like [1.0, 3.0]; got {spec!r}"
        ) from None
    if len(weights) != num_labels or min(weights) <= 0:
        raise ConfigError(
            f"class_weights needs {num_labels} positive numbers, one per label in id order "
            f"({', '.join(label_names)}); got {spec!r}"
        )
    return torch.tensor(weights, dtype=torch.float32)


class ClassificationLoss(nn.Module):
    """Weighted cross-entropy (single-label) or BCE-with-logits (multi-label); see the module table.

    Args:
        multi_label: labels are (B, L) 0/1 instead of (B,) ids.
        weights: (L,) class weights (single-label) or positive-term weights (multi-label); None = unweighted.
    """

    def __init__(self, multi_label: bool, weights: torch.Tensor | None = None):
        super().__init__()
        self.multi_label = multi_label
        self.register_buffer("weights", weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weights = None if self.weights is None else self.weights.to(logits.device)
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits), pos_weight=weights
            )
        return nn.functional.cross_entropy(logits, labels.long(), weight=weights)


class SeqClassifyTrainer(ForwardTelemetry, Trainer):
    """``Trainer`` whose loss is ``ClassificationLoss`` applied to the model's (B, L) logits.

    With ``packed`` (``packing``, ``seq_classify.packing``) every batch, training and evaluation, runs as packed
    rows: the same logits as the padded batch. Training logs carry ``padding_share`` and the tokens and examples
    per second (``train.common.telemetry``).

    With ``chunk_pooling`` (``long_documents: chunks``, batches from ``seqcls_chunks.WindowCollator``) the (B, L)
    logits are the pooled window logits of each document (``seqcls_chunks.pooled_forward``), for the loss and for
    evaluation alike.
    """

    loss_is_scaled_for_ga = False  # per-batch mean: the Trainer divides by the accumulation steps

    def __init__(
        self,
        *args,
        loss: ClassificationLoss,
        chunk_pooling: str | None = None,
        packed: PackedClassifier | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.classification_loss = loss
        self.chunk_pooling = chunk_pooling
        self.packed = packed

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        slots = inputs["input_ids"].numel()
        if self.chunk_pooling is not None:
            outputs = pooled_forward(model, inputs, self.chunk_pooling)
        elif self.packed is not None:
            outputs, slots = self.packed.forward(model, inputs)
        else:
            outputs = model(**inputs)
        if self.model.training and "attention_mask" in inputs:
            self.record_forward(inputs["attention_mask"].sum().item(), slots, labels.shape[0])
        loss = self.classification_loss(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


def evaluation_report(
    logits: np.ndarray, label_ids: np.ndarray, label_names: Sequence[str], multi_label: bool, threshold: float
) -> dict:
    """Every metric of ``eval.metrics.classification_metrics`` for (N, L) logits against the gold labels."""
    probabilities = probabilities_from_logits(logits, multi_label)
    predicted = decide(probabilities, multi_label, threshold)
    gold = label_ids.astype(np.int64)
    return classification_metrics(gold, predicted, list(label_names), probabilities=probabilities)


def final_evaluation(trainer: SeqClassifyTrainer, dataset, label_names, multi_label: bool, threshold: float) -> dict:
    """The ``eval`` entry of metrics.json: ``evaluation_report`` of the trained (or best) model on ``dataset``
    plus its loss (every process takes part in the prediction)."""
    prediction = trainer.predict(dataset, metric_key_prefix="eval")
    report = evaluation_report(prediction.predictions, prediction.label_ids, label_names, multi_label, threshold)
    return {**report, "loss": prediction.metrics["eval_loss"]}


def reported_metrics(label_names: Sequence[str], multi_label: bool) -> list[str]:
    """The metric names an evaluation of :func:`metrics_function` logs (without ``eval_``), loss included."""
    scalars = metric_names(label_names, multi_label=multi_label, probabilities=True)
    return [*scalars, *(f"class_f1/{name}" for name in label_names), "loss"]


def metrics_function(
    label_names: Sequence[str], multi_label: bool, threshold: float
) -> Callable[[EvalPrediction], dict[str, float]]:
    """``compute_metrics`` for the Trainer: accuracy, P/R/F1 (binary, macro, micro, weighted), ECE, and per-class
    F1 as ``class_f1/<label>``."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        report = evaluation_report(logits, prediction.label_ids, label_names, multi_label, threshold)
        return scalar_metrics(report, per_class_f1=True)

    return compute
