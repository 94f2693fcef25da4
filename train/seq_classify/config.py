"""``SeqClassifyConfig``: the training arguments of ``train.seq_classify`` (a ``TrainingArguments`` subclass).

It adds the classification fields (``problem_type``, ``threshold``, ``class_weights``, ``head_pooling``) and the
long-text fields of ``lorasmith.tokenizer_inputs.LongTextOptions`` (recorded in ``lorasmith.json`` so that
prediction reads texts the same way), and sets the defaults a classification recipe expects; each field's help
(``--help``) says what it does. Without ``eval_data`` the entrypoint turns evaluation and best-checkpoint
selection off.

Class weights enter the loss: single-label cross-entropy weights each example by the weight of its true
class (``balanced`` = ``n_rows / (n_labels * count(class))``, scikit-learn's rule); multi-label weights the
positive term of label ``j`` (BCE ``pos_weight``; ``balanced`` = ``negatives_j / positives_j``).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import IntervalStrategy, TrainingArguments
from transformers.trainer_utils import SaveStrategy

from lorasmith.classifiers.head_pooling import HEAD_POOLINGS
from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option
from lorasmith.tokenizer_inputs import LongTextOptions
from train.common.args import HUB_FIELDS
from train.common.packing import packing_option

PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification"}


@dataclass
class SeqClassifyConfig(TrainingArguments, LongTextOptions):
    """``TrainingArguments`` plus the classification and long-text options (see the module docstring)."""

    _argument_group_name = "Sequence classification"
    not_offered = HUB_FIELDS | {"score_range"}

    # --- the classification problem ---
    problem_type: str = option(
        "single_label (softmax, one class per row) or multi_label (sigmoid, a set of labels per row).",
        default="single_label",
    )
    threshold: float = option(
        "Multi-label: predict a label when its probability is >= threshold.", default=0.5
    )
    class_weights: list | str | None = option(
        "Loss weights: 'balanced' or one weight per label in id order ([1, 3] or '1,3'); none by default.",
        default=None,
    )
    head_pooling: str = option(
        "What an encoder's head reads: 'model' (its own, the first token [CLS]) or 'mean' (the mean of the "
        "token states, as sentence-transformers models are trained). Decoders read their last token.",
        default="model",
        choices=list(HEAD_POOLINGS),
    )
    packing: bool | None = packing_option()

    # --- defaults that differ from TrainingArguments ---
    learning_rate: float = option("Peak learning rate (LoRA; ~2e-5 for full fine-tuning).", default=5e-4)
    eval_strategy: IntervalStrategy | str = option("When to evaluate: no, steps or epoch.", default="epoch")
    save_strategy: SaveStrategy | str = option(
        "When to checkpoint: no, steps, epoch or best.", default="epoch"
    )
    save_total_limit: int | None = option("Keep at most this many checkpoints (+ the best).", default=2)
    load_best_model_at_end: bool = option(
        "Restore the checkpoint with the best metric_for_best_model after training.", default=True
    )
    metric_for_best_model: str | None = option(
        "Metric that picks the best checkpoint: f1_macro, f1 (binary positive class), accuracy, loss...",
        default="f1_macro",
    )
    logging_steps: float = option("Log the training loss every N steps.", default=10)
    report_to: None | str | list[str] = option(
        "Where to log: tensorboard, wandb, none, ...", default="tensorboard"
    )
    label_names: list[str] | None = option(
        "Batch keys holding the labels (keep the default).", default_factory=lambda: ["labels"]
    )

    def __post_init__(self):
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(
                f"problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {self.problem_type!r}"
            )
        if self.head_pooling not in HEAD_POOLINGS:
            raise ConfigError(f"head_pooling must be one of {', '.join(HEAD_POOLINGS)}; got {self.head_pooling!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must lie strictly between 0 and 1; got {self.threshold}")
        self.check_long_text()
        super().__post_init__()

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label"

    @property
    def hf_problem_type(self) -> str:
        """The ``problem_type`` name transformers' model configs use."""
        return PROBLEM_TYPES[self.problem_type]
