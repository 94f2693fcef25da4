"""``SFTClassifyConfig``: TRL's ``SFTConfig`` plus the prompt-classification fields of ``train.sft_classify``.

It adds the prompt (``system_message``, ``template``, ``prompt_format``: rendered by ``lorasmith.prompts``; the
label map and text columns are ``DataArguments.labels`` / ``text_columns``), the long-text fields of
``lorasmith.tokenizer_inputs.LongTextOptions`` (saved with the prompt in ``lorasmith.json``, so label scoring
shortens rows as training did; the system message, the template and the answer are never cut) and the evaluation
switches, and sets the defaults of a LoRA classification run; each field's help (``--help``) says what it does.
Evaluation scores every label's answer by its log-likelihood after the prompt; without ``eval_data`` the
entrypoint turns evaluation and best-model loading off.

``max_length`` and ``trust_remote_code`` are ``ModelArguments`` fields in lorasmith (one key per recipe); the
entrypoint copies them here, so they are not parsed from this class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers.trainer_utils import IntervalStrategy, SaveStrategy
from trl import SFTConfig

from lorasmith.errors import ConfigError
from lorasmith.prompts import FORMATS
from lorasmith.recipe_fields import option
from lorasmith.tokenizer_inputs import LongTextOptions
from train.common.args import HUB_FIELDS, DataArguments, ModelArguments
from train.common.modeling import resolve_max_length
from train.common.packing import packing_option
from train.common.run import replace_args, require_train_data


@dataclass
class SFTClassifyConfig(SFTConfig, LongTextOptions):

    _argument_group_name = "Prompt classification"
    # TRL's MoE loss and deprecated pad_token, the chunked long-document mode of the sequence classifier, and TRL's
    # dataset packing (rows concatenated to max_length: a step's example count varies; ``packing`` replaces it).
    not_offered = HUB_FIELDS | {
        "score_range", "router_aux_loss_coef", "pad_token", "long_documents", "chunk_overlap", "max_chunks",
        "chunk_pooling", "packing_strategy", "padding_free", "eval_packing",
    }
    system_message: str | None = option(
        "System turn: the role, the task and the condition to decide.", default=None
    )
    template: str | None = option(
        "User turn with {column} placeholders, e.g. 'Requirement: {requirement}\\nData: {sample_data}'. Default: "
        "{text} for one text column, 'column: {column}' lines for several.",
        default=None,
    )
    prompt_format: str = option(
        "auto: the tokenizer's chat template when it has one, else plain prompt-completion.",
        default="auto",
        choices=list(FORMATS),
    )
    packing: bool | None = packing_option()
    eval_before_training: bool = option(
        "Also evaluate the untrained model; metrics.json gets 'before' and 'eval'.", default=False
    )
    compare_generation: bool = option(
        "At the end also classify by free (greedy) generation, for comparison.", default=False
    )

    # Defaults that differ from SFTConfig
    learning_rate: float = option("Initial AdamW learning rate (LoRA-sized).", default=2e-4)
    num_train_epochs: float = option("Epochs over the training rows.", default=1.0)
    eval_strategy: IntervalStrategy | str = option("When to evaluate: no, steps or epoch.", default="steps")
    save_strategy: SaveStrategy | str = option(
        "When to checkpoint: no, steps, epoch or best.", default="steps"
    )
    eval_steps: float | None = option("Evaluate every N steps.", default=100)
    save_steps: float = option("Checkpoint every N steps.", default=100)
    save_total_limit: int | None = option("Keep at most N checkpoints (plus the best).", default=2)
    load_best_model_at_end: bool = option(
        "Finish with the checkpoint that has the best metric_for_best_model.", default=True
    )
    metric_for_best_model: str | None = option(
        "Label-scoring metric that picks the best checkpoint (default: macro-F1).", default="f1_macro"
    )
    greater_is_better: bool | None = option("Whether a larger metric is better.", default=True)
    report_to: None | str | list[str] = option("Logging integrations.", default="tensorboard")
    completion_only_loss: bool | None = option(
        "Loss only on the answer tokens (the prompt is context, not a target).", default=True
    )

    # Set from ModelArguments by the entrypoint (one recipe key each), so not parsed here
    max_length: int | None = field(default=1024, init=False)
    trust_remote_code: bool = field(default=False, init=False)


def resolve_sft_config(
    data_args: DataArguments, model_args: ModelArguments, training_args: SFTClassifyConfig
) -> tuple[DataArguments, ModelArguments, SFTClassifyConfig]:
    """(data, model, training arguments) with the fields that depend on the recipe's combination settled (new
    objects, checked before any data is read): the task is ``labeled``; an unset ``max_length`` fitted to the model
    once the recipe is checked (``modeling.resolve_max_length``), then it and ``trust_remote_code`` copied from
    ``model_args``."""
    if data_args.task not in (None, "labeled"):
        raise ConfigError(
            f"sft_classify trains on labeled data: task must be 'labeled' (or unset), got {data_args.task!r}"
        )
    training_args.check_long_text()
    require_train_data(data_args, "a labeled table with the template's columns and a label column")
    if model_args.max_length is not None and model_args.max_length < 8:
        raise ConfigError(f"max_length must be a number of tokens >= 8, got {model_args.max_length}")
    model_args = resolve_max_length(model_args)
    # one max_length for our length guard and TRL's truncation (which then never triggers: rows already fit)
    training_args = replace_args(
        training_args, max_length=model_args.max_length, trust_remote_code=model_args.trust_remote_code
    )
    return dataclasses.replace(data_args, task="labeled"), model_args, training_args
