"""Evaluate a trained classifier folder on labelled data, or label a few texts.

    python -m eval.classify --model out/sst2-lora --data sst2/dev.tsv --columns text=content
    python -m eval.classify --model out/sst2-lora --text "A gripping film." --text "Dull and long."

The folder's ``lorasmith.json`` says which model it is (sequence-classification head or prompt + label
scoring) and which text columns it reads; the data is loaded with the model's label names so ids agree
(a label the model does not know is reported with its row). Reports accuracy, precision / recall / F1
(binary for two labels, macro, micro, weighted), a per-class table, the confusion matrix and the expected
calibration error, all x 100 except counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_utils.options import ReadOptions
from eval.cli import OutputOption, run_cli
from eval.metrics.classification import classification_metrics
from eval.report import emit, format_table
from lorasmith.classifiers import Classifier, load_classifier
from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser

PERCENT_KEYS = ("accuracy", "precision", "recall", "f1", "ece")


def predict(
    classifier: Classifier, rows: list[dict[str, str]], batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, L), predictions): label ids (N,) for single-label, 0/1 (N, L) for multi-label."""
    probabilities = np.asarray(classifier.predict_proba(rows, batch_size=batch_size), dtype=np.float64)
    if classifier.multi_label:
        return probabilities, (probabilities >= getattr(classifier, "threshold", 0.5)).astype(int)
    return probabilities, probabilities.argmax(axis=1)


def evaluate_classifier(
    classifier: Classifier,
    data: str,
    *,
    columns: dict[str, str] | str | None = None,
    batch_size: int = 16,
    **read_options,
) -> dict:
    """Metrics of ``classifier`` on the labelled file ``data`` (see ``classification_metrics``), x 100;
    ``read_options``: how the file is read (``data_utils.options.READ_OPTIONS``)."""
    from data_utils import load

    dataset = load(
        data,
        task="labeled",
        columns=columns,
        text_columns=classifier.text_columns,
        label_names=classifier.label_names,
        multi_label=classifier.multi_label,
        **read_options,
    )
    rows = [{name: row[name] for name in classifier.text_columns} for row in dataset]
    probabilities, predictions = predict(classifier, rows, batch_size)
    targets = list(dataset["label"])
    if classifier.multi_label:
        indicator = np.zeros((len(targets), len(classifier.label_names)), dtype=int)
        for i, ids in enumerate(targets):
            indicator[i, ids] = 1
        targets = indicator
    metrics = classification_metrics(np.asarray(targets), predictions, classifier.label_names, probabilities)
    return {"task": "classify", "data": str(data), **_as_percent(metrics)}


def _as_percent(metrics: dict) -> dict:
    def scale(key: str, value):
        if isinstance(value, dict):
            return {k: scale(k, v) for k, v in value.items()}
        return 100 * value if key.startswith(PERCENT_KEYS) else value

    return {key: scale(key, value) for key, value in metrics.items()}


def metrics_text(result: dict, label_names: Sequence[str]) -> str:
    summary_keys = [
        k
        for k in (
            "accuracy",
            "precision",
            "recall",
            "f1",
            "f1_macro",
            "f1_micro",
            "f1_weighted",
            "precision_macro",
            "recall_macro",
            "ece",
        )
        if k in result
    ]
    summary = format_table(["metric x100", "value"], [[k, result[k]] for k in summary_keys])
    per_class = format_table(
        ["label", "precision", "recall", "f1", "support"],
        [
            [name, *(result["per_class"][name][k] for k in ("precision", "recall", "f1", "support"))]
            for name in label_names
        ],
    )
    parts = [f"{result['num_examples']} examples", summary, "", per_class]
    matrix = result["confusion_matrix"]
    if matrix and not isinstance(matrix[0][0], list):  # single-label: rows = true, columns = predicted
        parts += [
            "",
            "confusion matrix (rows: true, columns: predicted)",
            format_table(
                ["true \\ pred", *label_names],
                [[n, *row] for n, row in zip(label_names, matrix, strict=True)],
            ),
        ]
    return "\n".join(parts)


def label_texts(classifier: Classifier, texts: Sequence[str], batch_size: int = 16) -> dict:
    """Predicted label(s) and probabilities of each text (models reading one text column)."""
    if len(classifier.text_columns) != 1:
        raise ConfigError(
            f"--text needs a model reading one text column; this one reads {classifier.text_columns}"
        )
    rows = [{classifier.text_columns[0]: text} for text in texts]
    probabilities, predictions = predict(classifier, rows, batch_size)
    names = classifier.label_names
    results = []
    for text, probs, prediction in zip(texts, probabilities, predictions, strict=True):
        labels = (
            [names[j] for j in np.flatnonzero(prediction)]
            if classifier.multi_label
            else [names[int(prediction)]]
        )
        results.append(
            {
                "text": text,
                "labels": labels,
                "probability": float(probs[names.index(labels[0])]) if labels else None,
                "probabilities": {name: float(p) for name, p in zip(names, probs, strict=True)},
            }
        )
    return {"task": "classify", "predictions": results}


@dataclasses.dataclass(kw_only=True)
class ClassifyArguments(OutputOption, ReadOptions):
    """The flags of ``python -m eval.classify``: ``--data`` or one or more ``--text``."""

    _argument_group_name = "Classification data"

    model: str = option("lorasmith output folder of a classifier")
    data: str | None = option("labelled file (csv, tsv, jsonl, ...)", default=None)
    columns: str | None = option(
        "role=column pairs mapping the model's text columns and 'label'", default=None
    )
    text: list[str] | None = option(
        "a text to label (repeatable); instead of --data", default=None, action="extend"
    )
    batch_size: int = option("rows per forward pass (default 16)", default=16)


def make_parser() -> RecipeParser:
    return make_cli_parser([ClassifyArguments], module="eval.classify", description=__doc__)


def _run(args: ClassifyArguments) -> dict:
    if bool(args.data) == bool(args.text):
        raise ConfigError("give either --data FILE or one or more --text")
    classifier = load_classifier(args.model)
    if args.text:
        result = label_texts(classifier, args.text, args.batch_size)
        text = format_table(
            ["text", "label", "probability"],
            [
                [p["text"][:60], ", ".join(p["labels"]) or "-", p["probability"] or 0.0]
                for p in result["predictions"]
            ],
            digits=3,
        )
    else:
        result = evaluate_classifier(
            classifier, args.data, columns=args.columns, batch_size=args.batch_size, **args.read_options()
        )
        text = metrics_text(result, classifier.label_names)
    result["model"] = args.model
    emit(result, text, args.output)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, make_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
