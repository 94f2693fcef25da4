"""``SFTClassifyConfig``: TRL's ``SFTConfig`` plus the prompt-classification fields of ``train.sft_classify``.

It adds the prompt (``system_message``, ``template``, ``prompt_format``: rendered by ``data_utils.prompts``; the
label map and text columns are ``DataArguments.labels`` / ``text_columns``), the long-text fields of
``data_utils.tokenizer_inputs.LongTextOptions`` (saved with the prompt in ``lorasmith.json``, so label scoring
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

from data_utils.prompts import FORMATS
from data_utils.tokenizer_inputs import LongTextOptions
from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option
from train.common.args import DataArguments, ModelArguments
from train.common.run import replace_args, require_train_data


@dataclass
class SFTClassifyConfig(SFTConfig, LongTextOptions):
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
) -> tuple[DataArguments, SFTClassifyConfig]:
    """(data arguments, training arguments) with the fields that depend on the recipe's combination settled (new
    objects, checked before any data is read): the task is ``labeled``; ``max_length`` and ``trust_remote_code``
    are copied from ``model_args``."""
    if data_args.task not in (None, "labeled"):
        raise ConfigError(
            f"sft_classify trains on labeled data: task must be 'labeled' (or unset), got {data_args.task!r}"
        )
    training_args.check_long_text()
    if training_args.chunks:
        raise ConfigError(
            "long_documents: chunks is for train.seq_classify (window logits pooled); a prompt classifier answers "
            "once per text: use truncation: head_tail to keep the start and the end of long texts"
        )
    require_train_data(data_args, "a labeled table with the template's columns and a label column")
    if model_args.max_length is None or model_args.max_length < 8:
        raise ConfigError(f"max_length must be a number of tokens >= 8, got {model_args.max_length}")
    # one max_length for our length guard and TRL's truncation (which then never triggers: rows already fit)
    training_args = replace_args(
        training_args, max_length=model_args.max_length, trust_remote_code=model_args.trust_remote_code
    )
    return dataclasses.replace(data_args, task="labeled"), training_args
