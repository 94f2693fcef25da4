"""Labeled rows -> the tokenized prompt-completion dataset ``trl.SFTTrainer`` trains on, with the length guards.

Each row becomes ``input_ids`` (prompt + the row's answer, encoded by ``lorasmith.prompts.encode_choices``,
exactly as TRL encodes a prompt-completion example) and ``completion_mask`` (1 on the answer tokens). TRL turns
the mask into labels (-100 on the prompt) because the dataset is already tokenized.

Guards (all raised before any model is loaded):
- every verbalizer is tokenized in the context of the first row and must be distinguishable (``check_choices``);
- a row longer than ``max_length`` has its input columns shortened, never its answer; a row whose prompt cannot
  fit even with empty input columns is a ``DataError`` naming the row;
- every encoded row keeps at least one answer token within ``max_length``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from datasets import Dataset

import data_utils
from lorasmith.errors import ConfigError, DataError
from lorasmith.prompts import (
    PromptSpec,
    answer_tokens,
    build_verbalizers,
    check_choices,
    default_template,
    encode_choices,
    fit_row,
    resolve_format,
    template_columns,
)
from train.common import launch, learnable
from train.common.args import DataArguments, ModelArguments, label_answers
from train.common.modeling import load_tokenizer
from train.common.run import first_rows
from train.sft_classify.config import SFTClassifyConfig
from train.sft_classify.trainer import reported_metrics


@dataclass
class SFTRows:
    """The SFT dataset of one split plus what the start-up plan reports."""

    dataset: Dataset  # columns input_ids, completion_mask
    shortened: int  # rows whose input columns were shortened to fit max_length
    longest: int  # tokens in the longest encoded row


def prompt_columns(data_args: DataArguments, training_args: SFTClassifyConfig) -> tuple[list[str], str]:
    """(text columns to load, template): from the template's placeholders, else ``text_columns``, else ``text``."""
    if training_args.template:
        columns = template_columns(training_args.template)
        if data_args.text_columns and set(data_args.text_columns) != set(columns):
            raise ConfigError(
                f"text_columns {list(data_args.text_columns)} differ from the template's placeholders {columns}: "
                "drop text_columns (the template names the columns) or make them agree"
            )
        return columns, training_args.template
    columns = list(data_args.text_columns or ["text"])
    return columns, default_template(columns)


def load_labeled_splits(data_args: DataArguments, text_columns: list[str]) -> tuple[Dataset, Dataset | None]:
    """(train, eval or None) with columns ``text_columns`` + ``label``; eval uses the training label names.

    The label names come from the recipe's ``labels`` (in id order) when it gives them, else from the data.
    """
    options = data_args.load_options() if data_args.labels else {}
    names = {"label_names": options["label_names"]} if "label_names" in options else {}
    read = data_args.read_options()
    train = data_utils.load(
        data_args.train_data, task="labeled", columns=data_args.columns, text_columns=text_columns, **names, **read
    )
    evaluation = None
    if data_args.eval_data:
        evaluation = data_utils.load(
            data_args.eval_data,
            task="labeled",
            columns=data_args.columns,
            text_columns=text_columns,
            label_names=train.features["label"].names,
            **read,
        )
    return first_rows(train, data_args.max_train_samples), first_rows(evaluation, data_args.max_eval_samples)


def prompt_spec(
    template: str,
    label_names: list[str],
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: SFTClassifyConfig,
    tokenizer,
) -> PromptSpec:
    """How every row is rendered: the system message, ``template``, each label's answer (``labels`` as a
    label -> answer map, else the label name) and the chat or plain format, capped at ``max_length`` tokens with
    the recipe's ``truncation`` of long text columns."""
    return PromptSpec(
        template=template,
        verbalizers=build_verbalizers(label_names, label_answers(data_args.labels)),
        system_message=training_args.system_message,
        format=resolve_format(training_args.prompt_format, tokenizer),
        max_length=model_args.max_length,
        truncation=training_args.truncation,
        head_tokens=training_args.head_tokens,
        tail_tokens=training_args.tail_tokens,
    )


def check_verbalizers(tokenizer, spec: PromptSpec, row: Mapping[str, str]) -> dict[str, list[int]]:
    """Tokenize every label's answer after the prompt of a real row; ConfigError unless distinguishable.

    Returns label -> answer token ids (for the start-up plan).
    """
    choices = encode_choices(tokenizer, spec, row)
    check_choices(choices)
    return {label: encoded.completion_ids for label, encoded in choices.items()}


def label_rows(dataset: Dataset, spec: PromptSpec) -> list[dict[str, str]]:
    """The text columns of every row, as the dicts ``PromptClassifier`` scores."""
    columns = {name: dataset[name] for name in spec.text_columns}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def build_sft_rows(dataset: Dataset, tokenizer, spec: PromptSpec, source: str) -> SFTRows:
    """Encode every labeled row of ``dataset`` (text columns + ``label`` ClassLabel) for completion-only SFT.

    Rows are fitted so that any label's answer fits (``answer_tokens``), hence label scoring sees the same
    (shortened) prompt as training. Raises DataError (1-based row, source) for a row that cannot fit.
    """
    budget = answer_tokens(tokenizer, spec)
    label_names = dataset.features["label"].names
    input_ids, completion_mask = [], []
    shortened = 0
    for number, (row, label_id) in enumerate(
        zip(label_rows(dataset, spec), dataset["label"], strict=True), start=1
    ):
        fitted = fit_row(tokenizer, spec, row, budget)
        if fitted is None:
            raise DataError(
                f"the prompt does not fit max_length={spec.max_length} tokens even with its input columns emptied "
                f"(the answer needs {budget} tokens)",
                source=source,
                row=number,
                expected="a larger max_length or a shorter system_message/template",
            )
        shortened += fitted != row
        label = label_names[label_id]
        encoded = encode_choices(tokenizer, spec, fitted, [label])[label]
        if spec.max_length is not None and len(encoded.input_ids) > spec.max_length:
            raise DataError(
                f"encodes to {len(encoded.input_ids)} tokens > max_length={spec.max_length} after shortening",
                source=source,
                row=number,
                expected="a larger max_length",
            )
        input_ids.append(encoded.input_ids)
        completion_mask.append([0] * encoded.completion_start + [1] * len(encoded.completion_ids))
    dataset = Dataset.from_dict({"input_ids": input_ids, "completion_mask": completion_mask})
    return SFTRows(dataset, shortened, max(map(len, input_ids), default=0))


@dataclass
class PromptData:
    """What ``train.sft_classify`` trains on, checked before any model weights are loaded."""

    tokenizer: object
    spec: PromptSpec
    answer_ids: dict[str, list[int]]  # label -> its answer's token ids
    train: Dataset  # labeled rows (``label`` a ClassLabel)
    evaluation: Dataset | None
    train_rows: SFTRows  # prompt-completion rows SFTTrainer trains on
    eval_rows: SFTRows | None


def prepare_prompt_data(data_args, model_args, training_args, world_size: int) -> PromptData:
    """Read and check both splits, then build the prompts, in the order that reports bad data before the
    tokenizer and bad settings before the model: template columns, ``metric_for_best_model`` against the
    metrics evaluation reports, single-class data (a warning), label answers the tokenizer can score, prompts
    that fit ``max_length``, zero optimizer steps. ``data_args`` / ``training_args``: resolved
    (``config.resolve_sft_config``)."""
    text_columns, template = prompt_columns(data_args, training_args)
    train, evaluation = load_labeled_splits(data_args, text_columns)
    label_names = train.features["label"].names
    launch.check_best_metric(training_args, reported_metrics(label_names))
    learnable.check_label_classes(train["label"], label_names, str(data_args.train_data), warn_only=True)

    tokenizer = load_tokenizer(model_args)
    spec = prompt_spec(template, label_names, data_args, model_args, training_args, tokenizer)
    answer_ids = check_verbalizers(tokenizer, spec, label_rows(train.select([0]), spec)[0])
    train_rows = build_sft_rows(train, tokenizer, spec, data_args.train_data)
    eval_rows = build_sft_rows(evaluation, tokenizer, spec, data_args.eval_data) if evaluation is not None else None
    learnable.check_optimizer_steps(len(train_rows.dataset), training_args, world_size)
    return PromptData(tokenizer, spec, answer_ids, train, evaluation, train_rows, eval_rows)
