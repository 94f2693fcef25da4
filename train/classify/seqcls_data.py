"""Data for ``train.seq_classify``: load train/eval with one label map, tokenize (single or pair inputs), count truncation.

The label map is fixed by the training data (or the recipe's ``labels``); the evaluation data is loaded with the
TRAIN label names, so a label the model was never told about is a ``DataError`` naming the file, row and label.
Tokenized splits hold ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the tokenizer makes them) and
``labels``: an int id, or for multi-label an (L,) float 0/1 vector. Padding happens per batch in the collator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from datasets import Dataset

from data_utils import label_names_from_dataset, load
from data_utils.tokenizer_inputs import text_inputs
from lorasmith.errors import ConfigError
from train.common.args import DataArguments
from train.common.run import first_rows, require_train_data


@dataclass
class TokenizedSplit:
    """A tokenized split and how many of its rows were cut to ``max_length`` tokens."""

    dataset: Dataset
    truncated: int

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


def tokenize_split(dataset: Dataset, tokenizer, max_length: int, multi_label: bool) -> TokenizedSplit:
    """Tokenize a loaded ``labeled`` split (no padding) and count the rows longer than ``max_length`` tokens.

    Pair inputs are truncated longest-first (the tokenizer's rule), so both segments keep some text.
    """
    text_columns = text_columns_of(dataset)
    num_labels = len(label_names_from_dataset(dataset))
    separator = tokenizer.sep_token or tokenizer.eos_token

    def encode(batch: dict) -> dict:
        texts, pairs = text_inputs(batch, text_columns, separator)
        full_lengths = [len(ids) for ids in tokenizer(texts, pairs, truncation=False)["input_ids"]]
        encoded = dict(tokenizer(texts, pairs, truncation=True, max_length=max_length))
        encoded["truncated"] = [length > max_length for length in full_lengths]
        encoded["labels"] = (
            [_multi_hot(ids, num_labels) for ids in batch["label"]] if multi_label else batch["label"]
        )
        return encoded

    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    truncated = sum(tokenized["truncated"])
    return TokenizedSplit(tokenized.remove_columns("truncated"), truncated)


def data_summary(train: TokenizedSplit, evaluation: TokenizedSplit | None, max_length: int) -> dict:
    """The ``data`` entry of metrics.json: rows per split and how many were truncated to ``max_length``."""
    summary = {"train_rows": train.rows, "train_truncated": train.truncated, "max_length": max_length}
    if evaluation is not None:
        summary.update({"eval_rows": evaluation.rows, "eval_truncated": evaluation.truncated})
    return summary


def _multi_hot(ids: list[int], num_labels: int) -> list[float]:
    """(L,) 0/1 vector with ones at ``ids``."""
    vector = [0.0] * num_labels
    for i in ids:
        vector[i] = 1.0
    return vector
