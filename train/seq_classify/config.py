"""``SeqClassifyConfig``: the training arguments of ``train.seq_classify`` (a ``TrainingArguments`` subclass).

Fields added for sequence classification:

| field           | meaning                                                                                   |
|-----------------|-------------------------------------------------------------------------------------------|
| `problem_type`  | `single_label` (one class per row, softmax + cross-entropy) or `multi_label` (a set of     |
|                 | labels per row, sigmoid + binary cross-entropy per label)                                 |
| `threshold`     | multi-label: a label is predicted when its probability is >= threshold                    |
| `class_weights` | `balanced`, or one weight per label in id order (`[1.0, 3.0]` / `"1,3"`); see below        |
| `head_pooling`  | what an encoder's head reads: `model` (its own: the first token, [CLS]) or `mean` (the      |
|                 | mean of the token states, as sentence-transformers models are trained; see                |
|                 | ``lorasmith.classifiers.head_pooling``)                                                        |

Long texts (fields inherited from ``data_utils.tokenizer_inputs.LongTextOptions``, recorded in ``lorasmith.json``
so that prediction reads texts the same way):

| field            | meaning                                                                                  |
|------------------|------------------------------------------------------------------------------------------|
| `truncation`     | `end` (default: cut the end) or `head_tail` (keep the first `head_tokens` + last          |
|                  | `tail_tokens`; unset they split the budget 128 : 382 as in Sun et al. 2019)               |
| `long_documents` | `truncate` (default) or `chunks`: overlapping windows of `max_length`, logits pooled      |
| `chunk_overlap`, `max_chunks`, `chunk_pooling` | window overlap (tokens), windows per text cap, `mean` / `max` |

Class weights enter the loss: single-label cross-entropy weights each example by the weight of its true
class (``balanced`` = ``n_rows / (n_labels * count(class))``, scikit-learn's rule); multi-label weights the
positive term of label ``j`` (BCE ``pos_weight``; ``balanced`` = ``negatives_j / positives_j``).

Defaults that differ from ``TrainingArguments`` (what a user of a classification recipe expects):
``learning_rate`` 5e-4 (LoRA; use ~2e-5 with ``full_finetune``), ``eval_strategy``/``save_strategy`` epoch,
``save_total_limit`` 2, ``load_best_model_at_end`` with ``metric_for_best_model`` ``f1_macro`` (defined for
binary, multi-class and multi-label alike; set ``f1`` for the positive-class F1 of a binary task),
``logging_steps`` 10, ``report_to`` tensorboard, ``label_names`` ``[labels]``. Without ``eval_data`` the
entrypoint turns evaluation and best-checkpoint selection off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import IntervalStrategy, TrainingArguments
from transformers.trainer_utils import SaveStrategy

from data_utils.tokenizer_inputs import LongTextOptions
from lorasmith.classifiers.head_pooling import HEAD_POOLINGS
from lorasmith.errors import ConfigError

PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification"}


@dataclass
class SeqClassifyConfig(TrainingArguments, LongTextOptions):
    """``TrainingArguments`` plus the classification and long-text options (see the module docstring)."""

    # --- the classification problem ---
    problem_type: str = field(
        default="single_label",
        metadata={
            "help": "single_label (softmax, one class per row) or multi_label (sigmoid, a set of labels per row)."
        },
    )
    threshold: float = field(
        default=0.5, metadata={"help": "Multi-label: predict a label when its probability is >= threshold."}
    )
    class_weights: list | str | None = field(
        default=None,
        metadata={
            "help": "Loss weights: 'balanced' or one weight per label in id order ([1, 3] or '1,3'); none by default."
        },
    )
    head_pooling: str = field(
        default="model",
        metadata={
            "help": "What an encoder's head reads: 'model' (its own, the first token [CLS]) or 'mean' (the mean of the "
            "token states, as sentence-transformers models are trained). Decoders read their last token.",
            "choices": list(HEAD_POOLINGS),
        },
    )

    # --- defaults that differ from TrainingArguments ---
    learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak learning rate (LoRA; ~2e-5 for full fine-tuning)."}
    )
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."}
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "When to checkpoint: no, steps, epoch or best."}
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (+ the best)."}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={"help": "Restore the checkpoint with the best metric_for_best_model after training."},
    )
    metric_for_best_model: str | None = field(
        default="f1_macro",
        metadata={
            "help": "Metric that picks the best checkpoint: f1_macro, f1 (binary positive class), accuracy, loss..."
        },
    )
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Where to log: tensorboard, wandb, none, ..."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"],
        metadata={"help": "Batch keys holding the labels (keep the default)."},
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
