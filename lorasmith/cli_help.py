"""How a command's ``--help`` is laid out: lorasmith's own options first, in named groups, then the trainer's.

Every option belongs to one group, found from where its field is declared:

- a field lorasmith declares goes to the group its class names (``_argument_group_name``, the attribute
  ``HfArgumentParser`` reads, e.g. ``DataArguments`` -> "Data"), LoRA and quantization fields to their own group;
- a field of TRL's ``ModelConfig`` goes to "Model" or "LoRA / quantization";
- a field of ``TrainingArguments`` / ``SFTConfig`` goes to "Training" or "Launch & outputs" when it
  is one a recipe usually sets (:data:`TRAINING_KEYS`, :data:`OUTPUT_KEYS`), else to "Trainer passthrough": still
  accepted on the command line and in recipes, listed only by ``--help_all``.

Each option is shown once, in its canonical ``--snake_case`` spelling (``--dash-case`` and ``--no_<flag>`` are
accepted as aliases and not listed), with its real default (after the CPU defaults; with ``--config``, the
recipe's values) unless its help already says what happens when it is unset.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import shutil
import sys
from collections.abc import Iterable

LORA_AND_QUANTIZATION = "LoRA / quantization"
TRAINING = "Training"
OUTPUTS = "Launch & outputs"
PASSTHROUGH = "Trainer passthrough"
MODEL = "Model"

# The TrainingArguments a recipe usually sets, shown by --help; every other trainer field is passthrough.
# (packing: TRL's SFTConfig declares one, which sft_classify redefines as lorasmith's packed batches.)
TRAINING_KEYS = (
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "max_grad_norm", "optim", "gradient_checkpointing", "bf16", "fp16", "use_cpu", "seed", "dataloader_num_workers",
    "packing",
)
OUTPUT_KEYS = (
    "output_dir", "logging_steps", "report_to", "run_name", "eval_strategy", "eval_steps", "save_strategy",
    "save_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
)
_LORA_PREFIXES = ("lora_", "bnb_", "load_in_")
_LORA_NAMES = {"use_peft", "use_rslora", "use_dora", "use_bnb_nested_quant", "full_finetune", "adapter_path"}
_LIBRARIES = ("transformers", "trl")


def group_of(dataclass_type: type, field: dataclasses.Field) -> str:
    """The help group of ``field`` of ``dataclass_type`` (see the module docstring)."""
    declaring = [cls for cls in dataclass_type.__mro__ if field.name in cls.__dict__.get("__annotations__", {})]
    first_declared_by = declaring[-1]
    if field.name in _LORA_NAMES or field.name.startswith(_LORA_PREFIXES):
        return LORA_AND_QUANTIZATION
    if first_declared_by.__module__.split(".")[0] in _LIBRARIES:
        if first_declared_by.__name__ == "ModelConfig":
            return MODEL
        if field.name in TRAINING_KEYS:
            return TRAINING
        return OUTPUTS if field.name in OUTPUT_KEYS else PASSTHROUGH
    for cls in declaring[::-1]:
        if "_argument_group_name" in cls.__dict__:
            return cls.__dict__["_argument_group_name"]
    return dataclass_type.__dict__.get("_argument_group_name", "Options")


def group_order(dataclass_types: Iterable[type]) -> list[str]:
    """The groups of a recipe command in the order ``--help`` shows them: data, model, LoRA, the entrypoint's own
    groups (the entrypoint's first), training, launch & outputs, passthrough."""
    own = []
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            group = group_of(dataclass_type, field) if field.init else None
            if group and group not in own:
                own.append(group)
    fixed_last = [TRAINING, OUTPUTS, PASSTHROUGH]
    fixed_first = ["Data", "Reading files", MODEL, LORA_AND_QUANTIZATION]
    entrypoint_group = list(dataclass_types)[-1].__dict__.get("_argument_group_name")
    middle = sorted((group for group in own if group not in fixed_first + fixed_last), key=lambda g: g != entrypoint_group)
    return [group for group in fixed_first + middle + fixed_last if group in own]


def shown_value(value) -> str:
    """A default as a recipe would write it: true/false, a list's items, an enum's value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return " ".join(shown_value(item) for item in value) or "[]"
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One spelling per option (its first), short metavars, and the default appended where the help does not say."""

    def __init__(self, prog, **kwargs):
        width = min(shutil.get_terminal_size().columns, 118) if sys.stdout.isatty() else 118
        super().__init__(prog, max_help_position=34, width=width)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        name = action.option_strings[0]
        aliases = [s for s in action.option_strings[1:] if s.replace("-", "_") != name.replace("-", "_")]
        names = ", ".join([name, *aliases])
        if action.nargs == 0:
            return names
        return f"{names} {self._value_placeholder(action)}"

    @staticmethod
    def _value_placeholder(action: argparse.Action) -> str:
        if action.metavar:
            return str(action.metavar)
        if getattr(action.type, "__name__", "") == "string_to_bool":
            return "[true|false]"
        if action.choices and len(action.choices) <= 6:
            return "{" + ",".join(str(choice) for choice in action.choices) + "}"
        if action.choices:
            return "NAME"
        kind = {"int": "N", "float": "X", "str": "TEXT"}.get(getattr(action.type, "__name__", ""), "VALUE")
        return f"{kind} [{kind} ...]" if action.nargs in ("+", "*") else kind

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("%", "%%")
        default = action.default
        says_default = "default" in text.lower()
        if action.nargs == 0 or action.required or default in (None, "", argparse.SUPPRESS) or says_default:
            return text
        return f"{text} (default: {shown_value(default).replace('%', '%%')})"


class ShowAllHelp(argparse.Action):
    """``--help_all``: the help with the trainer passthrough options listed too."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help(show_passthrough=True)
        parser.exit()


def trainer_arguments_name(dataclass_types: Iterable[type]) -> str:
    """``transformers' TrainingArguments`` or ``TRL's SFTConfig``: the trainer arguments class a command extends."""
    bases = {cls.__name__ for dataclass_type in dataclass_types for cls in dataclass_type.__mro__}
    return "TRL's SFTConfig" if "SFTConfig" in bases else "transformers' TrainingArguments"


def passthrough_summary(actions: list[argparse.Action], trainer_arguments: str, *, listed: bool) -> str:
    """The passthrough group's text: what its options are and, when they are not listed, how many and how to see
    them."""
    what = f"options of {trainer_arguments}, passed to the trainer as they are"
    if listed:
        return what[0].upper() + what[1:] + "."
    examples = ", ".join(action.option_strings[0] for action in actions[:3])
    return f"{len(actions)} more {what} ({examples}, ...): --help_all lists them."
