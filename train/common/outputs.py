"""What every run leaves in ``output_dir`` besides checkpoints: the resolved recipe, metrics and a model card.

Layout (the contract ``lorasmith.run_folder`` reads): ``adapter/``, ``merged/``, ``lorasmith.json``, ``metrics.json``,
``README.md`` (model card), ``recipe.yaml``, ``checkpoint-*/``, and ``lorasmith_run.json``, the run record
(``train.common.resume``: written last by ``run.finish``; a run is finished only once it says ``complete``).
Files are written atomically (temp file + rename) so an interrupted run never leaves a half-written JSON or
YAML behind. Only the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from lorasmith.files import write_atomic  # the one atomic writer (also used by lorasmith.run_folder)
from lorasmith.run_folder import METRICS_NAME, MODEL_CARD_NAME, RECIPE_NAME  # the output contract

RUN_RECORD_NAME = "lorasmith_run.json"


def lorasmith_version() -> str:
    """The installed lorasmith version recorded in manifests; "source" for an uninstalled checkout."""
    try:
        return version("lorasmith")
    except PackageNotFoundError:
        return "source"


def recipe_dict(*arguments) -> dict:
    """The resolved run configuration: every field of the shared dataclasses and the non-default training fields.

    Training arguments contribute only what differs from their class defaults (TrainingArguments has ~150
    fields, most irrelevant), excluding bookkeeping that changes between identical runs.
    """
    recipe: dict = {}
    for args in arguments:
        values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
        if hasattr(args, "to_dict"):  # a TrainingArguments subclass
            defaults = _training_defaults(type(args))
            values = {k: v for k, v in values.items() if defaults.get(k, object()) != v and k not in _VOLATILE}
        recipe.update(values)
    return recipe


_VOLATILE = {"logging_dir", "resume_from_checkpoint", "local_rank", "_n_gpu", "use_cpu", "report_to"}


def _training_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def write_recipe(output_dir: str | os.PathLike, recipe: dict) -> None:
    """Write ``recipe.yaml``: the resolved configuration (:func:`recipe_dict`) that produced this folder."""
    write_atomic(Path(output_dir) / RECIPE_NAME, yaml.safe_dump(yaml_safe(recipe), sort_keys=True, allow_unicode=True))


def read_run_record(output_dir: str | os.PathLike) -> dict | None:
    """The run record of ``output_dir`` (``train.common.resume`` defines its fields), None when absent or unreadable."""
    try:
        record = json.loads((Path(output_dir) / RUN_RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_run_record(output_dir: str | os.PathLike, record: dict) -> None:
    """Write the run record (atomically: it is what says a run finished)."""
    write_atomic(Path(output_dir) / RUN_RECORD_NAME, json.dumps(yaml_safe(record), indent=2, sort_keys=True) + "\n")


def write_metrics(output_dir: str | os.PathLike, metrics: dict) -> dict:
    """Merge ``metrics`` into ``metrics.json`` (keys like ``before``/``after``/``train`` accumulate) and return all."""
    path = Path(output_dir) / METRICS_NAME
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(yaml_safe(metrics))
    write_atomic(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


def write_model_card(
    output_dir: str | os.PathLike, *, title: str, base_model: str, task: str, recipe: dict, metrics: dict, usage: str
) -> None:
    """``README.md`` with what was trained, how to use it, the metrics table and the full recipe; a run that was
    finished and then trained further (its run record in ``output_dir`` lists the earlier completions) says so."""
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft" if recipe.get("use_peft") else "library_name: transformers",
        "tags: [lorasmith, " + task + "]",
        "---",
        f"# {title}",
        "",
        f"Fine-tuned from `{base_model}` with [lorasmith](https://pypi.org/project/lorasmith/) (task: `{task}`).",
        "",
        *_continuation_lines(read_run_record(output_dir)),
        "## Usage",
        "",
        usage.strip(),
        "",
        "## Metrics",
        "",
        metrics_table(metrics),
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(yaml_safe(recipe), sort_keys=True, allow_unicode=True).strip(),
        "```",
        "",
    ]
    write_atomic(Path(output_dir) / MODEL_CARD_NAME, "\n".join(lines))


def _continuation_lines(record: dict | None) -> list[str]:
    """The card's note on a run trained further after it had finished (``record``: the run record found while
    writing the card, i.e. the earlier completions), or nothing for a run trained in one go."""
    if not record:
        return []
    earlier = [*record.get("continued_from", []), record]
    steps = ", then ".join(f"step {entry['global_step']}" for entry in earlier)
    return [
        f"Continued training: this run first finished at {steps} and was then trained further from that "
        "checkpoint with the same recipe (a higher max_steps / num_train_epochs). The metrics below are the final "
        "model's; metrics.json's `train` group covers the steps of the last session (`train_loss_steps`), "
        "`global_step` is the total.",
        "",
    ]


def scalar_metrics(report: dict, names: Sequence[str] | None = None, *, per_class_f1: bool = False) -> dict:
    """The numbers of an evaluation report that fit a log line or a metrics-table column.

    ``report``'s int/float entries (only ``names``, in that order, when given; nested tables such as
    ``per_class`` or ``confusion_matrix`` are left out), plus with ``per_class_f1`` each class's F1 from
    ``report["per_class"]`` as ``class_f1/<label>``.
    """
    keys = report if names is None else [name for name in names if name in report]
    scalars = {key: report[key] for key in keys if isinstance(report[key], (int, float))}
    if per_class_f1:
        scalars.update({f"class_f1/{name}": row["f1"] for name, row in report["per_class"].items()})
    return scalars


def metrics_table(metrics: dict) -> str:
    """A Markdown table of scalar metrics; nested groups (``before``, ``after``) become columns."""
    groups = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if flat:
        groups = {"value": flat, **groups}
    if not groups:
        return "(no metrics recorded)"
    names = sorted({k for group in groups.values() for k, v in group.items() if isinstance(v, (int, float))})
    header = "| metric | " + " | ".join(groups) + " |"
    rule = "|---|" + "---|" * len(groups)
    rows = [
        f"| {name} | " + " | ".join(_format(group.get(name)) for group in groups.values()) + " |" for name in names
    ]
    return "\n".join([header, rule, *rows])


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def yaml_safe(value):
    """Make enums, tuples and paths YAML/JSON-safe."""
    if isinstance(value, dict):
        return {str(k): yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "value", str(value))
