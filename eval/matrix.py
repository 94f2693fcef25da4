"""Run an evaluation suite for several models into a results matrix (CSV + JSON + heat-map PNG).

    python -m eval.matrix --models minilm out/embed-run --suite configs/eval/suite_example.yaml \\
        --output_dir eval_matrix

The suite is a YAML file with a list ``tasks``; each task has a ``name``, a ``kind`` (sts, retrieval,
probe), the options of that kind's evaluator (the CLI flags, with underscores) and optionally ``metric``,
the number shown in the matrix (default: sts spearman, retrieval ndcg@10, probe accuracy). Data paths
(``data``, ``corpus``, ``queries``, ``qrels``) are relative to the suite file. Example::

    tasks:
      - {name: sts, kind: sts, data: sts_eval.tsv}
      - {name: tags, kind: retrieval, data: tags_eval.jsonl, task: tags, k: [1, 5, 10]}
      - {name: sentiment, kind: probe, data: labeled_sentiment.csv, folds: 5}

Each model is loaded once and runs every task. Writes ``results.csv`` (models x tasks, the chosen
metric), ``results.json`` (every metric of every run) and ``results.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from accelerate import PartialState

from data_utils.schemas import parse_columns
from eval.cli import EmbeddingOptions, load_embedder, run_cli
from eval.probe import evaluate_probe
from eval.report import emit, format_table, write_json
from eval.retrieval import evaluate_retrieval
from eval.sts import evaluate_sts
from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option
from lorasmith.recipe_parser import RecipeParser, make_cli_parser

PATH_KEYS = ("data", "corpus", "queries", "qrels")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """What a suite task of one ``kind`` runs: ``evaluate(embedder, batch_size=..., **options)``, the option
    keys it accepts and the metric the matrix shows by default."""

    evaluate: Callable[..., dict]
    options: tuple[str, ...]
    default_metric: str


EVALUATORS = {
    "sts": Evaluator(evaluate_sts, ("data", "columns", "format", "score_range"), "spearman"),
    "retrieval": Evaluator(
        evaluate_retrieval,
        ("data", "task", "columns", "corpus", "queries", "qrels", "k", "query_prefix", "document_prefix"),
        "ndcg@10",
    ),
    "probe": Evaluator(
        evaluate_probe, ("data", "text_column", "columns", "folds", "select_c", "seed"), "accuracy"
    ),
}


@dataclasses.dataclass(frozen=True)
class SuiteTask:
    name: str
    kind: str
    metric: str
    options: dict


def load_suite(path: str | Path) -> list[SuiteTask]:
    """Parse and validate a suite file (unknown kinds and keys are errors naming the task)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list) or not spec["tasks"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty list 'tasks'")
    tasks, names = [], set()
    for number, entry in enumerate(spec["tasks"], start=1):
        if not isinstance(entry, dict) or "name" not in entry or "kind" not in entry:
            raise ConfigError(f"{path}: task {number} needs at least 'name' and 'kind'")
        entry = dict(entry)
        name, kind_name = str(entry.pop("name")), entry.pop("kind")
        if name in names:
            raise ConfigError(f"{path}: task name {name!r} is used twice")
        names.add(name)
        if kind_name not in EVALUATORS:
            raise ConfigError(
                f"{path}: task {name!r} has kind {kind_name!r}; choose one of {', '.join(EVALUATORS)}"
            )
        kind = EVALUATORS[kind_name]
        metric = entry.pop("metric", None)
        for key in entry:
            if key not in kind.options:
                close = difflib.get_close_matches(key, kind.options, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(kind.options)}"
                raise ConfigError(f"{path}: task {name!r} ({kind_name}) has unknown key {key!r}{hint}")
        options = _resolve_options(entry, path.parent)
        tasks.append(SuiteTask(name, kind_name, str(metric or _default_metric(kind_name, options)), options))
    return tasks


def _default_metric(kind: str, options: dict) -> str:
    """sts: spearman; probe: accuracy; retrieval: ndcg@10, or ndcg at the largest k when 10 is not a cut-off."""
    if kind != "retrieval":
        return EVALUATORS[kind].default_metric
    ks = options.get("k", (1, 5, 10))
    return f"ndcg@{10 if 10 in ks else max(ks)}"


def _resolve_options(options: dict, base: Path) -> dict:
    resolved = dict(options)
    for key in PATH_KEYS:
        if key in resolved:
            resolved[key] = str(base / resolved[key])
    if isinstance(resolved.get("columns"), str):
        resolved["columns"] = parse_columns(resolved["columns"])
    if "k" in resolved:
        ks = resolved["k"]
        resolved["k"] = tuple(int(k) for k in (ks if isinstance(ks, list) else str(ks).split(",")))
    return resolved


def run_suite(
    models: Sequence[str],
    tasks: Sequence[SuiteTask],
    load_model: Callable[[str], object],
    batch_size: int = 64,
) -> dict[str, dict[str, dict]]:
    """{model: {task name: result dict}}; each model loaded once with ``load_model(model)``."""
    results: dict[str, dict[str, dict]] = {}
    for model in models:
        embedder = load_model(model)
        results[model] = {}
        for task in tasks:
            result = EVALUATORS[task.kind].evaluate(embedder, batch_size=batch_size, **task.options)
            if task.metric not in result:
                numeric = [k for k, v in result.items() if isinstance(v, float)]
                raise ConfigError(
                    f"task {task.name!r}: no metric {task.metric!r}; available: {', '.join(numeric)}"
                )
            results[model][task.name] = result
    return results


def write_matrix(
    results: dict[str, dict[str, dict]], tasks: Sequence[SuiteTask], output_dir: str | Path
) -> dict:
    """results.csv, results.json and results.png in ``output_dir``; returns {model: {task: value}}."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    matrix = {model: {t.name: runs[t.name][t.metric] for t in tasks} for model, runs in results.items()}
    with open(output_dir / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *(f"{t.name} ({t.metric})" for t in tasks)])
        for model, row in matrix.items():
            writer.writerow([model, *(f"{row[t.name]:.4f}" for t in tasks)])
    write_json(
        output_dir / "results.json",
        {
            "tasks": [{"name": t.name, "kind": t.kind, "metric": t.metric, **t.options} for t in tasks],
            "matrix": matrix,
            "results": results,
        },
    )
    plot_matrix(matrix, [f"{t.name}\n{t.metric}" for t in tasks], output_dir / "results.png")
    return matrix


def plot_matrix(matrix: dict[str, dict[str, float]], column_labels: Sequence[str], path: Path) -> None:
    """Heat map, models as rows, tasks as columns, each cell annotated with its value. Metrics differ in
    scale, so colour shows a model's standing within each task (column min -> dark, max -> bright)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(matrix)
    values = np.array([list(matrix[m].values()) for m in models], dtype=float)
    low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    spread = np.where(high > low, high - low, 1.0)
    relative = np.where(high > low, (values - low) / spread, 0.5)
    figure, axes = plt.subplots(figsize=(1.8 + 1.6 * values.shape[1], 1.4 + 0.6 * len(models)))
    axes.imshow(relative, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(values.shape[1]), labels=column_labels, fontsize=8)
    axes.set_yticks(range(len(models)), labels=[Path(m).name or m for m in models], fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        axes.text(j, i, f"{value:.1f}", ha="center", va="center", color="w" if relative[i, j] < 0.6 else "k")
    axes.set_title("colour: rank of the model within each task", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclasses.dataclass(kw_only=True)
class MatrixArguments(EmbeddingOptions):
    """The flags of ``python -m eval.matrix``; the embedding overrides apply to every model."""

    _argument_group_name = "Suite"

    models: list[str] = option(
        "models to compare: lorasmith, sentence-transformers or HF model folders, hub ids, 'minilm'"
    )
    suite: str = option("suite YAML (see above)")
    output_dir: str = option("where results.csv/json/png go (default eval_matrix)", default="eval_matrix")


def make_parser() -> RecipeParser:
    return make_cli_parser([MatrixArguments], module="eval.matrix", description=__doc__)


def _run(args: MatrixArguments) -> dict:
    tasks = load_suite(args.suite)
    results = run_suite(
        args.models, tasks, lambda model: load_embedder(args, model), batch_size=args.batch_size
    )
    if not PartialState().is_main_process:
        return results
    matrix = write_matrix(results, tasks, args.output_dir)
    table = format_table(
        ["model", *(f"{t.name} {t.metric}" for t in tasks)],
        [[model, *row.values()] for model, row in matrix.items()],
    )
    output_dir = Path(args.output_dir)
    summary = {
        "suite": args.suite,
        "matrix": matrix,
        "files": [str(output_dir / name) for name in ("results.csv", "results.json", "results.png")],
    }
    emit(summary, table)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, make_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
