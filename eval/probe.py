"""Linear probe of frozen embeddings (SentEval protocol for MR / CR / MPQA / SUBJ).

    python -m eval.probe --model minilm --data sst2/dev.tsv --columns text=content --folds 10

Each text is embedded once; a logistic regression is trained and tested in stratified k-fold
cross-validation (shuffled, ``--seed``). With ``--select-c`` the regularisation C is chosen per outer
fold by an inner stratified CV over SentEval's grid 2^-2 .. 2^4; otherwise C = 1. Reports the mean test
accuracy x 100 and its standard deviation over the folds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from accelerate import PartialState
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from data_utils.options import ReadOptions
from eval.cli import EmbeddingOptions, ModelOption, OutputOption, load_embedder, run_cli
from eval.report import emit, format_table
from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser

SENTEVAL_C_GRID = tuple(2.0**t for t in range(-2, 5))


def cross_validated_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = 10,
    select_c: bool = False,
    inner_folds: int = 5,
    seed: int = 0,
) -> dict:
    """Stratified ``folds``-fold CV of a logistic regression on ``features`` (N, D) and labels (N,).

    Returns ``{"accuracy", "accuracy_std"}`` (x 100, std over folds), ``fold_accuracies`` and the C
    used in each fold.
    """
    class_sizes = np.unique(labels, return_counts=True)[1]
    if class_sizes.size < 2:
        raise ConfigError("the probe needs at least two classes in the data")
    smallest_class = int(class_sizes.min())
    if folds < 2 or folds > smallest_class:
        raise ConfigError(
            f"--folds must be between 2 and the size of the smallest class ({smallest_class}), got {folds}"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracies, chosen_c = [], []
    for train, test in splitter.split(features, labels):
        model = LogisticRegression(max_iter=2000)
        if select_c:
            inner = max(2, min(inner_folds, int(np.unique(labels[train], return_counts=True)[1].min())))
            search = GridSearchCV(
                model,
                {"C": list(SENTEVAL_C_GRID)},
                cv=StratifiedKFold(n_splits=inner, shuffle=True, random_state=seed),
            )
            model = search.fit(features[train], labels[train]).best_estimator_
        else:
            model.fit(features[train], labels[train])
        accuracies.append(float(model.score(features[test], labels[test])))
        chosen_c.append(float(model.C))
    return {
        "accuracy": 100 * float(np.mean(accuracies)),
        "accuracy_std": 100 * float(np.std(accuracies)),
        "fold_accuracies": [100 * a for a in accuracies],
        "c": chosen_c,
    }


def evaluate_probe(
    embedder,
    data: str,
    *,
    text_column: str = "text",
    columns: dict[str, str] | str | None = None,
    folds: int = 10,
    select_c: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    **read_options,
) -> dict:
    """Embed ``text_column`` of the labelled file ``data`` and cross-validate a linear probe on it;
    ``read_options``: how the file is read (``data_utils.options.READ_OPTIONS``)."""
    from data_utils import load

    dataset = load(data, task="labeled", columns=columns, text_columns=[text_column], **read_options)
    features = embedder.encode(list(dataset[text_column]), batch_size=batch_size).numpy()
    labels = np.asarray(list(dataset["label"]))
    result = cross_validated_accuracy(features, labels, folds=folds, select_c=select_c, seed=seed)
    return {
        "task": "probe",
        "data": str(data),
        "num_examples": len(labels),
        "num_labels": len(dataset.features["label"].names),
        "folds": folds,
        **result,
    }


@dataclasses.dataclass(kw_only=True)
class ProbeArguments(OutputOption, ReadOptions, EmbeddingOptions, ModelOption):
    """The flags of ``python -m eval.probe``."""

    _argument_group_name = "Probe"

    data: str = option("labelled file (csv, tsv, jsonl, ...)")
    text_column: str = option("column holding the text (default text)", default="text")
    columns: str | None = option("role=column pairs, e.g. label=sentiment", default=None)
    folds: int = option("outer cross-validation folds (default 10)", default=10)
    select_c: bool = option("choose C per fold by inner CV (SentEval grid)", default=False)
    seed: int = option("fold shuffling seed (default 0)", default=0)


def make_parser() -> RecipeParser:
    return make_cli_parser([ProbeArguments], module="eval.probe", description=__doc__)


def _run(args: ProbeArguments) -> dict:
    embedder = load_embedder(args)
    result = evaluate_probe(
        embedder,
        args.data,
        text_column=args.text_column,
        columns=args.columns,
        folds=args.folds,
        select_c=args.select_c,
        seed=args.seed,
        batch_size=args.batch_size,
        **args.read_options(),
    )
    result["model"] = args.model
    if PartialState().is_main_process:
        table = format_table(
            ["model", "examples", "labels", "folds", "accuracy x100", "std"],
            [[args.model, result["num_examples"], result["num_labels"], args.folds, result["accuracy"],
              result["accuracy_std"]]],  # fmt: skip
        )
        emit(result, table, args.output)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, make_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
