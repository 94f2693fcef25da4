"""Training that cannot learn is an error, not a run that exits 0 and saves an unchanged model.

Before any model loads (each entrypoint calls the check for its data, then :func:`check_optimizer_steps`):
- contrastive data (``train.embed``): at least 2 rows, at least 2 distinct candidate texts (an anchor needs
  something to tell its positive from), scores that vary (``scored_pairs``: nothing to rank or fit otherwise);
- labelled data: at least 2 classes among the training rows (``train.seq_classify``: an error, a head trained
  on one class learns a constant; ``train.sft_classify``: a loud warning, its language-model loss still teaches
  the answer text, which makes a constant classifier some runs want);
- every run: at least one optimizer step from its rows, batch, processes and epochs (or ``max_steps``).
These raise ``DataError`` / ``ConfigError`` with the number found and the fix (exit 2).

After training (``run.finish``), :func:`nothing_learned` catches what the data checks cannot see: zero
optimizer steps, or a LoRA run whose every logged loss is exactly 0 while every LoRA B weight is still zero
(the adapter changes nothing). That run keeps its outputs, is not marked complete and exits 3.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from lorasmith.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def check_optimizer_steps(rows: int, training_args, world_size: int) -> int:
    """The optimizer steps a run on ``rows`` training rows takes, as transformers counts them (``max_steps``
    when set, else epochs x updates per epoch); ConfigError when that is 0: nothing would be trained."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    per_rank = rows // world_size if training_args.dataloader_drop_last else math.ceil(rows / world_size)
    per_device = training_args.per_device_train_batch_size
    batches = per_rank // per_device if training_args.dataloader_drop_last else math.ceil(per_rank / per_device)
    updates = math.ceil(batches / training_args.gradient_accumulation_steps)
    steps = math.ceil(training_args.num_train_epochs * updates)
    if steps < 1:
        raise ConfigError(
            f"this run would take 0 optimizer steps: {rows} training rows, per_device_train_batch_size {per_device} "
            f"x {world_size} process(es) (dataloader_drop_last {training_args.dataloader_drop_last}) give "
            f"{batches} batch(es) per epoch, and num_train_epochs is {training_args.num_train_epochs:g}. Set "
            "num_train_epochs > 0 (or max_steps > 0), and give at least one full batch of rows"
        )
    return steps


def check_contrastive_rows(dataset, task, source: str) -> None:
    """DataError when ``dataset`` (rows in ``task.schema``, a ``train.embed.tasks.EmbedTask``) cannot
    teach a contrastive model: fewer than 2 rows, fewer than 2 distinct candidate texts, or constant scores."""
    rows = len(dataset)
    if rows < 2:
        raise DataError(
            f"{rows} training row(s): contrastive training needs at least 2 (an anchor learns against the other "
            "rows' texts; with one row the loss is 0 and nothing is learned)",
            source=source,
            expected="at least 2 rows",
        )
    if task.schema == "scored_pairs":
        scores = np.asarray(dataset["score"], dtype=float)
        if scores.min() == scores.max():
            raise DataError(
                f"all {rows} scores are {scores[0]:g}: there is nothing to rank or fit",
                source=source,
                column="score",
                expected="gold similarities that differ between pairs",
            )
        return
    column, distinct = _distinct_candidates(dataset, task.schema)
    if distinct < 2:
        raise DataError(
            f"all {rows} rows have the same {column} text: every anchor's positive is also every other anchor's, so "
            "there is no negative to learn from",
            source=source,
            column=column,
            expected="at least 2 distinct texts",
        )


def _distinct_candidates(dataset, schema: str) -> tuple[str, int]:
    """(column, number of distinct candidate texts) of contrastive rows: what anchors are told apart by."""
    if schema == "sentences":
        return "text", len(dataset.unique("text"))
    if schema == "tags":
        return "tags", len({tag for tags in dataset["tags"] for tag in tags})
    texts = set(dataset.unique("positive"))
    if "negatives" in dataset.column_names:  # triplets: hard negatives are candidates too
        texts.update(text for negatives in dataset["negatives"] for text in negatives)
    return "positive", len(texts)


def check_label_classes(
    labels, label_names: list[str], source: str, multi_label: bool = False, *, warn_only: bool = False
) -> None:
    """DataError when the training ``labels`` (class ids, or multi-hot rows with ``multi_label``) hold fewer than
    2 distinct values: a classifier trained on one class (or one label set) learns nothing. ``warn_only``
    logs the same message as a warning instead."""
    values = np.unique(np.asarray(labels), axis=0)
    if len(values) >= 2:
        return
    if multi_label:
        present = [name for name, on in zip(label_names, values[0], strict=True) if on] if len(values) else []
        found = f"every training row has the same label set {present}"
    else:
        found = f"every training row has the label {label_names[int(values[0])]!r}" if len(values) else "no labels"
    error = DataError(
        f"{found}: a classifier needs at least 2 classes among its training rows",
        source=source,
        column="label",
        expected="rows of at least 2 different labels",
    )
    if not warn_only:
        raise error
    logger.warning("%s; the model will learn to give that answer to everything", error)


def nothing_learned(trainer) -> str | None:
    """Why the finished ``trainer`` run cannot have learned anything, or None.

    Zero optimizer steps; or a LoRA run (every process holds the same LoRA weights, so every process answers
    alike) whose every logged loss is exactly 0 and whose every LoRA B weight is still exactly zero (B starts
    at zero, so the adapter is a no-op). Full fine-tuning and parameters partitioned away from this process
    (ZeRO-3) are not judged by their weights.
    """
    state = trainer.state
    if state.global_step == 0:
        return "it took 0 optimizer steps"
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    model = trainer.accelerator.unwrap_model(trainer.model)
    lora_b = [param for name, param in model.named_parameters() if "lora_B" in name]
    if not lora_b or any(param.numel() == 0 for param in lora_b) or any(loss != 0 for loss in losses):
        return None
    if any(param.detach().any() for param in lora_b):
        return None
    return (
        f"every logged loss was exactly 0 ({len(losses)} logged over {state.global_step} steps) and every LoRA B "
        "weight is still zero, so the adapter changes nothing. Check the training data (distinct positives, "
        "scores that vary, several classes) and the learning rate"
    )
