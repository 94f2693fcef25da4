"""``SFTClassifyConfig``: TRL's ``SFTConfig`` plus the prompt-classification fields of ``train.sft_classify``.

Fields added, by concern:

> Prompt (rendered by ``data_utils.prompts``; the label map and text columns are ``DataArguments.labels`` /
> ``text_columns``)
- ``system_message``: the system turn — role, task and condition.
- ``template``: the user turn with ``{column}`` placeholders; default ``{text}`` for one column,
  ``col: {col}`` lines for several.
- ``prompt_format``: ``auto`` (the tokenizer's chat template if it has one), ``chat`` or ``plain``.

> Long texts (inherited from ``data_utils.tokenizer_inputs.LongTextOptions``; saved with the prompt in
> ``lorasmith.json``, so label scoring shortens rows as training did)
- ``truncation``: ``end`` (a text column too long for ``max_length`` keeps its first tokens) or ``head_tail`` (its
  first and last tokens, split ``head_tokens`` : ``tail_tokens``, by default 128 : 382); the system message, the
  template and the answer are never cut. ``long_documents: chunks`` is seq_classify only (a ConfigError here).

> Evaluation (label scoring on ``eval_data``: every label's answer scored by its log-likelihood after the prompt)
- ``eval_before_training``: also score the untrained model (``before`` in metrics.json).
- ``compare_generation``: at the end, also classify by free generation (greedy) for comparison.

Defaults that differ from ``SFTConfig``: ``learning_rate`` 2e-4 (LoRA), ``num_train_epochs`` 1,
``eval_strategy``/``save_strategy`` ``steps`` every 100 steps, ``save_total_limit`` 2, ``load_best_model_at_end``
with ``metric_for_best_model`` ``f1_macro`` (label-scoring macro-F1), ``report_to`` tensorboard,
``completion_only_loss`` True. Without ``eval_data`` the entrypoint turns evaluation and best-model loading off.

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
from train.common.args import DataArguments, ModelArguments
from train.common.run import replace_args, require_train_data


@dataclass
class SFTClassifyConfig(SFTConfig, LongTextOptions):
    system_message: str | None = field(
        default=None,
        metadata={"help": "System turn: the role, the task and the condition to decide."},
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "User turn with {column} placeholders, e.g. 'Requirement: {requirement}\\nData: {sample_data}'."
        },
    )
    prompt_format: str = field(
        default="auto",
        metadata={
            "help": "auto: the tokenizer's chat template when it has one, else plain prompt-completion.",
            "choices": list(FORMATS),
        },
    )
    eval_before_training: bool = field(
        default=False,
        metadata={"help": "Also evaluate the untrained model; metrics.json gets 'before' and 'eval'."},
    )
    compare_generation: bool = field(
        default=False,
        metadata={"help": "At the end also classify by free (greedy) generation, for comparison."},
    )

    # Defaults that differ from SFTConfig
    learning_rate: float = field(default=2e-4, metadata={"help": "Initial AdamW learning rate (LoRA-sized)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training rows."})
    eval_strategy: IntervalStrategy | str = field(
        default="steps", metadata={"help": "When to evaluate: no, steps or epoch."}
    )
    save_strategy: SaveStrategy | str = field(
        default="steps", metadata={"help": "When to checkpoint: no, steps, epoch or best."}
    )
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most N checkpoints (plus the best)."}
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Finish with the checkpoint that has the best metric_for_best_model."}
    )
    metric_for_best_model: str | None = field(
        default="f1_macro", metadata={"help": "Label-scoring metric that picks the best checkpoint."}
    )
    greater_is_better: bool | None = field(
        default=True, metadata={"help": "Whether a larger metric is better."}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Logging integrations."}
    )
    completion_only_loss: bool | None = field(
        default=True,
        metadata={"help": "Loss only on the answer tokens (the prompt is context, not a target)."},
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
