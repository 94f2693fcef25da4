"""The run folder: what a finished lorasmith ``output_dir`` holds, written by the three trainers and read back
by eval, the sweeps and re-runs. Every name in it is defined here, and so is how each file is written and read.

A lorasmith ``output_dir`` looks like::

    output_dir/
      lorasmith.json        manifest (below): what was trained and how to load it
      adapter/              PEFT adapter (adapter_config.json, adapter_model.safetensors) + tokenizer
      merged/               full model with the adapter merged + tokenizer; for embeddings also the
                            sentence-transformers files (modules.json, 1_Pooling/config.json,
                            sentence_bert_config.json, 2_Dense/ when rotated, then the Normalize module when
                            normalized)
      rotation.safetensors  embeddings with the Matryoshka rotation: the (D, D) rotation applied after pooling
      metrics.json          final evaluation metrics (groups such as ``before`` / ``after`` / ``train``)
      README.md             model card
      recipe.yaml           the resolved recipe that produced the folder (written before training starts)
      lorasmith_run.json    the run record, written last: the run is finished once it says ``complete``
      checkpoint-*/         Trainer checkpoints; complete once ``lorasmith_checkpoint.json`` is in them
      incomplete-checkpoints/, previous-runs/   what re-runs moved aside (never deleted)
      adapter.partial/, merged.partial/         an export in progress (:func:`partial_folder`)
      lorasmith.lock        who runs in the folder now: a file lock held by that process (``lorasmith.run_lock``)

Every file is written atomically (temp file + rename; folders through :func:`publish_folder`), so an
interrupted run never leaves a half-written file behind. Only the main process writes.

Manifest (``lorasmith.json``) keys:

    lorasmith_version   str
    kind                "embedding" | "seq_classifier" | "prompt_classifier"
    base_model          hub id or path of the model the adapter was trained on
    gguf_file           GGUF file name inside ``base_model`` (or null)
    adapter             "adapter" or null (path relative to the output folder)
    merged              "merged" or null (path relative to the output folder)
    embedding           kind "embedding": {"pooling", "normalize", "max_length", "query_prefix",
                        "document_prefix", "matryoshka_dims", "rotation" (file name relative to the output
                        folder, or null)}
    labels              classifiers: label names in id order
    text_columns        classifiers: input columns, in prompt / pair order
    multi_label         classifiers: bool
    threshold           classifiers: decision threshold for multi-label
    prompt              kind "prompt_classifier": {"system_message", "template",
                        "verbalizers": {label: answer text}}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from lorasmith.errors import ConfigError
from lorasmith.files import write_atomic
from lorasmith.pooling import SENTENCE_TRANSFORMERS_MODES, validate_pooling_mode

MANIFEST_NAME = "lorasmith.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
METRICS_NAME = "metrics.json"
MODEL_CARD_NAME = "README.md"
ROTATION_NAME = "rotation.safetensors"
RECIPE_NAME = "recipe.yaml"
RUN_RECORD_NAME = "lorasmith_run.json"
MARKER_NAME = "lorasmith_checkpoint.json"
INCOMPLETE_DIR = "incomplete-checkpoints"
PREVIOUS_RUNS_DIR = "previous-runs"
PARTIAL_SUFFIX = ".partial"
LOCK_NAME = "lorasmith.lock"  # held by the running process (lorasmith.run_lock); never moved
# what a run writes at the top of output_dir besides checkpoint-* ("runs": the Trainer's TensorBoard logs)
RUN_ARTIFACTS = (RECIPE_NAME, METRICS_NAME, MANIFEST_NAME, MODEL_CARD_NAME, ADAPTER_DIR, MERGED_DIR, "runs",
                 RUN_RECORD_NAME)
# names only lorasmith puts in output_dir: a folder holding one of them (or a checkpoint) is a lorasmith run
RUN_MARKS = (RECIPE_NAME, RUN_RECORD_NAME, PREVIOUS_RUNS_DIR, INCOMPLETE_DIR)
# what a manifest's ``kind`` may be (the classifier kinds are ``lorasmith.classifiers.CLASSIFIER_TYPES``' keys)
MODEL_KINDS = ("embedding", "seq_classifier", "prompt_classifier")


def lorasmith_version() -> str:
    """The installed lorasmith version recorded in manifests; "source" for an uninstalled checkout."""
    try:
        return version("lorasmith")
    except PackageNotFoundError:
        return "source"


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write ``manifest`` to ``folder/lorasmith.json`` atomically (creating ``folder``); returns the file path."""
    kind = manifest.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"manifest 'kind' must be one of {MODEL_KINDS}, got {kind!r}")
    if not manifest.get("base_model"):
        raise ValueError("manifest needs 'base_model'")
    path = Path(folder) / MANIFEST_NAME
    write_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of a lorasmith output folder, or None when ``folder`` is not one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_recipe(output_dir: str | os.PathLike, recipe: dict) -> None:
    """Write ``recipe.yaml``: the resolved configuration that produced this folder."""
    write_atomic(Path(output_dir) / RECIPE_NAME, yaml.safe_dump(yaml_safe(recipe), sort_keys=True, allow_unicode=True))


def read_recipe(output_dir: str | os.PathLike) -> dict | None:
    """The ``recipe.yaml`` of ``output_dir`` as a mapping, None when absent, unreadable or not a mapping."""
    try:
        recipe = yaml.safe_load((Path(output_dir) / RECIPE_NAME).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return recipe if isinstance(recipe, dict) else None


def read_run_record(output_dir: str | os.PathLike) -> dict | None:
    """The run record of ``output_dir`` (``complete``, ``fingerprint``, ``global_step``, ``epoch``, ``max_steps``,
    ``num_train_epochs``, ``finished_at``, ``continued_from``), None when absent or unreadable."""
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


def partial_folder(folder: Path) -> Path:
    """Where ``folder`` is written until it is complete: a sibling (same filesystem, so the rename is atomic)."""
    return folder.with_name(folder.name + PARTIAL_SUFFIX)


def publish_folder(partial: Path, folder: Path) -> None:
    """Rename the complete ``partial`` to ``folder``. An older ``folder`` is renamed aside first and removed only
    once the new one is in place, so ``folder`` is never a mix of both."""
    if not folder.exists():
        os.replace(partial, folder)
        return
    aside = folder.with_name(folder.name + ".replaced")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    os.replace(partial, folder)
    shutil.rmtree(aside)


def write_sentence_transformers_files(
    folder: str | Path,
    pooling: str,
    normalize: bool,
    max_length: int,
    hidden_size: int,
    prompts: dict[str, str] | None = None,
    rotation: torch.Tensor | None = None,
) -> None:
    """Add the sentence-transformers module files to a saved HF model folder so that
    ``SentenceTransformer(folder)`` rebuilds Transformer -> Pooling(pooling) [-> Dense(rotation)] [-> Normalize].

    ``rotation`` (``(D, D)``, embeddings ``pooled @ rotation``) becomes a ``Dense`` module without bias or
    activation (its ``linear.weight`` is ``rotation.T``).

    ``prompts`` (e.g. ``{"query": "query: ", "document": "passage: "}``, the prefixes the model was trained
    with) go to ``config_sentence_transformers.json``: ``model.encode(texts, prompt_name="query")`` prepends them.
    Written in the legacy format (boolean ``pooling_mode_*`` keys, ``sentence_transformers.models.*``
    types) that every sentence-transformers version from 2.x on reads.
    """
    validate_pooling_mode(pooling)
    folder = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if rotation is not None:
        dense = folder / "2_Dense"
        modules.append({"idx": 2, "name": "2", "path": dense.name, "type": "sentence_transformers.models.Dense"})
        dense.mkdir(parents=True, exist_ok=True)
        _write_json(dense / "config.json", {**_DENSE_CONFIG, "in_features": hidden_size, "out_features": hidden_size})
        save_file({"linear.weight": rotation.T.contiguous().float().cpu()}, str(dense / _DENSE_WEIGHTS))
    if normalize:
        index = len(modules)
        path, kind = f"{index}_Normalize", "sentence_transformers.models.Normalize"
        modules.append({"idx": index, "name": str(index), "path": path, "type": kind})
        (folder / path).mkdir(parents=True, exist_ok=True)
    st_mode = SENTENCE_TRANSFORMERS_MODES[pooling]
    pooling_config = {"word_embedding_dimension": hidden_size}
    pooling_config.update({key: mode == st_mode for key, mode in _LEGACY_POOLING_KEYS.items()})
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    _write_json(folder / "1_Pooling" / "config.json", pooling_config)
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write_json(
        folder / "config_sentence_transformers.json",
        {"prompts": dict(prompts or {}), "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


def read_sentence_transformers_config(folder: str | Path) -> dict | None:
    """``{"pooling", "normalize", "max_length", "transformer_path", "rotation"}`` of a sentence-transformers folder
    (None when ``folder`` has no modules.json). ``rotation``: the ``(D, D)`` map of a square ``Dense`` module
    without bias or activation after pooling (``pooled @ rotation``), else None. What lorasmith cannot reproduce
    (other pooling modes, other Dense modules, any other module) raises ValueError."""
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        return None
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    by_kind = {module["type"].rsplit(".", 1)[-1]: module for module in modules}
    if "Transformer" not in by_kind:
        raise ValueError(f"{folder}/modules.json has no Transformer module")
    unknown = sorted(set(by_kind) - {"Transformer", "Pooling", "Dense", "Normalize"})
    if unknown:
        raise ValueError(f"{folder}/modules.json lists modules lorasmith cannot reproduce: {unknown}")
    transformer_path = folder / by_kind["Transformer"].get("path", "")
    pooling = "cls"  # sentence-transformers without a Pooling module: the first token (CLS)
    if "Pooling" in by_kind:
        pooling = _pooling_from_st_config(
            json.loads((folder / by_kind["Pooling"]["path"] / "config.json").read_text(encoding="utf-8")),
            folder,
        )
    max_length = None
    for config_dir in (transformer_path, folder):
        config_file = config_dir / "sentence_bert_config.json"
        if config_file.is_file():
            max_length = json.loads(config_file.read_text(encoding="utf-8")).get("max_seq_length")
            break
    return {
        "pooling": pooling,
        "normalize": "Normalize" in by_kind,
        "max_length": max_length,
        "transformer_path": str(transformer_path),
        "rotation": _read_dense(folder / by_kind["Dense"]["path"]) if "Dense" in by_kind else None,
    }


def write_rotation(folder: str | Path, rotation: torch.Tensor) -> Path:
    """``folder/rotation.safetensors`` (key ``rotation``, ``(D, D)`` fp32) of a run with the Matryoshka rotation."""
    path = Path(folder) / ROTATION_NAME
    save_file({"rotation": rotation.contiguous().float().cpu()}, str(path))
    return path


def read_rotation(path: str | Path) -> torch.Tensor:
    """The ``(D, D)`` rotation that :func:`write_rotation` wrote (ConfigError when the file is missing)."""
    if not Path(path).is_file():
        raise ConfigError(f"{path} is missing: lorasmith.json says the embeddings are rotated by it")
    return load_file(str(path))["rotation"]


_DENSE_CONFIG = {"bias": False, "activation_function": "torch.nn.modules.linear.Identity"}
_DENSE_WEIGHTS = "model.safetensors"


def _read_dense(folder: Path) -> torch.Tensor:
    """``(D, D)`` map of a sentence-transformers Dense folder that is linear and square (no bias, identity
    activation); ValueError for any other Dense module."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")  # Dense's defaults
    square = config.get("in_features") == config.get("out_features")
    if config.get("bias", True) or activation != _DENSE_CONFIG["activation_function"] or not square:
        raise ValueError(
            f"{folder}: only a square Dense module without bias or activation can be reproduced by lorasmith; "
            f"got {config}"
        )
    weights = folder / _DENSE_WEIGHTS
    if weights.is_file():
        weight = load_file(str(weights))["linear.weight"]
    else:
        weight = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        weight = weight["linear.weight"]
    return weight.T.float()


_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_OUR_MODE = {st: ours for ours, st in SENTENCE_TRANSFORMERS_MODES.items()}


def _pooling_from_st_config(config: dict, folder: Path) -> str:
    """Our pooling name from a 1_Pooling/config.json in the new (``pooling_mode``) or legacy format."""
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in _OUR_MODE:
        raise ValueError(
            f"{folder}: sentence-transformers pooling {modes} is not supported; lorasmith pools with one of "
            f"{sorted(_OUR_MODE)}"
        )
    return _OUR_MODE[modes[0]]


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def load_trained_model(folder: Path, manifest: dict, model_class, *, dtype=None, base_kwargs=None):
    """(model, tokenizer) of a finished run: ``merged/`` if present, else the base model with the saved adapter.

    ``base_kwargs(tokenizer) -> dict`` gives extra ``from_pretrained`` arguments for the base model (e.g. the
    label map of a classification head, which the adapter then fills through ``modules_to_save``).
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    if manifest.get("merged") and (folder / manifest["merged"]).is_dir():
        source = folder / manifest["merged"]
        return model_class.from_pretrained(source, dtype=dtype), AutoTokenizer.from_pretrained(source)
    adapter = folder / (manifest.get("adapter") or ADAPTER_DIR)
    if not adapter.is_dir():
        raise ConfigError(
            f"{folder} has neither {MERGED_DIR}/ nor {ADAPTER_DIR}/: the run did not finish saving"
        )
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = model_class.from_pretrained(
        manifest["base_model"],
        gguf_file=manifest.get("gguf_file"),
        dtype=dtype,
        **(base_kwargs(tokenizer) if base_kwargs else {}),
    )
    return PeftModel.from_pretrained(base, adapter), tokenizer
