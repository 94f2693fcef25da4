"""Data for ``train.seq_classify``: load train/eval with one label map, tokenize (single or pair inputs), count truncation.

The label map is fixed by the training data (or the recipe's ``labels``); the evaluation data is loaded with the
TRAIN label names, so a label the model was never told about is a ``DataError`` naming the file, row and label.
Tokenized splits hold ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the tokenizer makes them) and
``labels``: an int id, or for multi-label an (L,) float 0/1 vector. Padding happens per batch in the collator.

Long texts (``LongTextOptions``): ``truncation: end`` is the tokenizer's truncation; ``head_tail`` keeps the first
and last tokens (``input_ids`` only: the collator adds the attention mask, single texts have all-zero token types);
``long_documents: chunks`` stores each row's windows as ``input_ids`` (a list of id lists) for
``train.seq_classify.chunks.WindowCollator``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from data_utils import label_names_from_dataset, load
from lorasmith.errors import ConfigError
from lorasmith.tokenizer_inputs import (
    LongTextOptions,
    check_long_text,
    encode_long_texts,
    head_tail_counts,
    text_budget,
    text_inputs,
)
from train.common import launch, learnable
from train.common.args import DataArguments
from train.common.modeling import load_tokenizer
from train.common.run import first_rows, require_train_data
from train.seq_classify.trainer import class_weight_vector, reported_metrics


@dataclass
class TokenizedSplit:
    """A tokenized split and how its long rows were handled.

    truncated: rows longer than ``max_length`` cut at the end / cut in the middle (head_tail) / split into more
    than one window (chunks). windows: chunks only, windows over all rows; capped: rows that needed more than
    ``max_chunks`` windows; most_windows: the largest window count of a row.
    """

    dataset: Dataset
    truncated: int
    windows: int | None = None
    capped: int = 0
    most_windows: int = 1

    @property
    def rows(self) -> int:
        return len(self.dataset)


def load_splits(data_args: DataArguments, multi_label: bool) -> tuple[Dataset, Dataset | None]:
    """(train, eval or None) with canonical columns ``text_columns`` + ``label`` and the same label names."""
    if data_args.task not in (None, "labeled"):
        raise ConfigError(
            f"seq_classify trains on task 'labeled' data; the recipe says task: {data_args.task}"
        )
    require_train_data(data_args, "a labeled file (csv, jsonl, ...) with text column(s) and a label")
    options = {**dataclasses.replace(data_args, task="labeled").load_options(), "multi_label": multi_label}
    if multi_label:
        options["label_delimiter"] = data_args.tag_delimiter
    train = _load(data_args.train_data, data_args, options, data_args.max_train_samples)
    if not data_args.eval_data:
        return train, None
    options["label_names"] = label_names_from_dataset(train)
    return train, _load(data_args.eval_data, data_args, options, data_args.max_eval_samples)


def _load(source: str, data_args: DataArguments, options: dict, limit: int | None) -> Dataset:
    return first_rows(load(source, task="labeled", columns=data_args.columns, **options), limit)


def text_columns_of(dataset: Dataset) -> list[str]:
    """The input columns of a loaded ``labeled`` dataset, in encoding order (every column but ``label``)."""
    return [name for name in dataset.column_names if name != "label"]


def tokenize_split(
    dataset: Dataset, tokenizer, max_length: int, multi_label: bool, long_text: LongTextOptions | None = None
) -> TokenizedSplit:
    """Tokenize a loaded ``labeled`` split (no padding) and count the rows longer than ``max_length`` tokens.

    Pair inputs are truncated longest-first (the tokenizer's rule), so both segments keep some text; head_tail and
    chunks read one text column (``check_long_text`` refused others before). ``long_text`` None: truncation end.
    """
    long_text = long_text or LongTextOptions()
    text_columns = text_columns_of(dataset)
    num_labels = len(label_names_from_dataset(dataset))
    separator = tokenizer.sep_token or tokenizer.eos_token

    def encode(batch: dict) -> dict:
        labels = [_multi_hot(ids, num_labels) for ids in batch["label"]] if multi_label else batch["label"]
        if not long_text.cuts_end:
            encoding = encode_long_texts(tokenizer, batch[text_columns[0]], max_length, long_text)
            sequences = encoding.sequences if long_text.chunks else [s[0] for s in encoding.sequences]
            return {
                "input_ids": sequences,
                "labels": labels,
                "truncated": encoding.cut,
                "capped": encoding.capped,
            }
        texts, pairs = text_inputs(batch, text_columns, separator)
        full_lengths = [len(ids) for ids in tokenizer(texts, pairs, truncation=False)["input_ids"]]
        encoded = dict(tokenizer(texts, pairs, truncation=True, max_length=max_length))
        encoded["truncated"] = [length > max_length for length in full_lengths]
        encoded["capped"] = [False] * len(texts)
        encoded["labels"] = labels
        return encoded

    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    split = TokenizedSplit(tokenized.remove_columns(["truncated", "capped"]), sum(tokenized["truncated"]))
    if long_text.chunks:
        counts = [len(windows) for windows in tokenized["input_ids"]]
        split.windows, split.most_windows = sum(counts), max(counts, default=0)
        split.capped = sum(tokenized["capped"])
    return split


def data_summary(train: TokenizedSplit, evaluation: TokenizedSplit | None, max_length: int) -> dict:
    """The ``data`` entry of metrics.json: rows per split, how many were truncated to ``max_length`` (cut in the
    middle / split into windows) and, for chunks, the window counts."""
    summary = {"max_length": max_length}
    for name, split in (("train", train), ("eval", evaluation)):
        if split is not None:
            summary.update({f"{name}_rows": split.rows, f"{name}_truncated": split.truncated})
            if split.windows is not None:
                summary.update({f"{name}_windows": split.windows, f"{name}_capped": split.capped})
    return summary


def long_rows_summary(
    split: TokenizedSplit, name: str, long_text: LongTextOptions, tokenizer, max_length: int
) -> str:
    """One plan phrase: how many rows of ``split`` (called ``name``) the long-text strategy touched."""
    if long_text.chunks:
        return (
            f"chunks: {split.rows} {name} rows -> {split.windows} windows, max {split.most_windows} per row "
            f"({split.capped} capped at max_chunks {long_text.max_chunks})"
        )
    if long_text.truncation == "head_tail":
        head, tail = head_tail_counts(
            text_budget(tokenizer, max_length), long_text.head_tokens, long_text.tail_tokens
        )
        return (
            f"head_tail: {split.truncated} of {split.rows} {name} rows longer than {head + tail} tokens cut in the "
            f"middle (first {head} + last {tail} kept)"
        )
    return (
        f"end: {split.truncated} of {split.rows} {name} rows longer than {max_length} tokens cut at the end"
    )


def _multi_hot(ids: list[int], num_labels: int) -> list[float]:
    """(L,) 0/1 vector with ones at ``ids``."""
    vector = [0.0] * num_labels
    for i in ids:
        vector[i] = 1.0
    return vector


@dataclass
class PreparedData:
    """What ``train.seq_classify`` trains on, checked before any model weights are loaded."""

    tokenizer: object
    train: TokenizedSplit
    evaluation: TokenizedSplit | None
    label_names: list[str]
    text_columns: list[str]
    class_weights: torch.Tensor | None  # (num_labels,) loss weights, or None
    long_text: LongTextOptions


def prepare_data(data_args: DataArguments, model_args, training_args, world_size: int) -> PreparedData:
    """Read, validate and tokenize both splits, in the order that reports bad data before the tokenizer and
    bad settings before the model: labels, long-text options, single-class data, ``metric_for_best_model``
    against the metrics evaluation reports, zero optimizer steps."""
    multi_label = training_args.multi_label
    train_raw, eval_raw = load_splits(data_args, multi_label)
    label_names, text_columns = label_names_from_dataset(train_raw), text_columns_of(train_raw)
    tokenizer = load_tokenizer(model_args)
    long_text = training_args.long_text_options()
    check_long_text(long_text, tokenizer, model_args.max_length, text_columns)
    train = tokenize_split(train_raw, tokenizer, model_args.max_length, multi_label, long_text)
    evaluation = (
        tokenize_split(eval_raw, tokenizer, model_args.max_length, multi_label, long_text) if eval_raw else None
    )
    train_labels = np.asarray(train.dataset["labels"]).astype(np.int64)
    learnable.check_label_classes(train_labels, label_names, str(data_args.train_data), multi_label)
    weights = class_weight_vector(training_args.class_weights, train_labels, label_names, multi_label)
    launch.check_best_metric(training_args, reported_metrics(label_names, multi_label))
    learnable.check_optimizer_steps(len(train.dataset), training_args, world_size)
    return PreparedData(tokenizer, train, evaluation, label_names, text_columns, weights, long_text)
