"""The one validation pass over a recipe's values, before any dataclass is built (used by ``recipe_parser.parse_recipe``).

Two checks for every key the user set (in the recipe or on the command line), for every entrypoint:

1. **Type**, from the field's annotation: a list where a number is expected, ``null`` for a field that cannot
   be empty, ``true`` for a batch size. A single value given for a list field becomes a one-item list
   (``eval_ks: 10`` -> ``[10]``), as on the command line.
2. **Range**, from :data:`FIELD_RULES` (field name -> :class:`Rule`): the constraints that make a value
   meaningful (``lora_r >= 1``, ``learning_rate > 0``, a non-empty ``tag_delimiter``...). A list value must
   satisfy the rule item by item. Rules live here, keyed by field name, because the fields come from several
   dataclasses (ours, TRL's ``ModelConfig``, transformers' ``TrainingArguments``) and HfArgumentParser passes
   a field's ``metadata`` to ``argparse.add_argument`` (no room for our own keys there).

Checks that need the model (position limit, module names, layers) run in ``train.common.modeling`` once its
config is read, before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Literal, Union


@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint on a (non-null) recipe value: ``holds(value)`` is True when it is acceptable; ``expected``
    completes the sentence "expected ..."."""

    holds: Callable[[Any], bool]
    expected: str


def at_least(low: float) -> Rule:
    return Rule(lambda value: value >= low, f"a value >= {low}")


def above(low: float) -> Rule:
    return Rule(lambda value: value > low, f"a value > {low}")


def within(low: float, high: float, *, high_included: bool = True) -> Rule:
    if high_included:
        return Rule(lambda value: low <= value <= high, f"a value in [{low}, {high}]")
    return Rule(lambda value: low <= value < high, f"a value in [{low}, {high})")


def matches(pattern: str, expected: str) -> Rule:
    return Rule(lambda value: re.fullmatch(pattern, str(value).strip()) is not None, expected)


NOT_EMPTY = Rule(lambda value: value != "", "a non-empty text")

# lora_layers: 'last', 'lastN' (N >= 1) or comma-separated layer indices (negative counts from the end).
LORA_LAYERS = matches(r"last([1-9]\d*)?|-?\d+(\s*,\s*-?\d+)*", "'last', 'lastN' (N >= 1) or layer indices like '0,5'")

FIELD_RULES: dict[str, Rule] = {
    # batches, steps and schedule (TrainingArguments, RunArguments)
    "per_device_train_batch_size": at_least(1),
    "per_device_eval_batch_size": at_least(1),
    "gradient_accumulation_steps": at_least(1),
    "global_batch_size": at_least(1),
    "learning_rate": above(0),
    "num_train_epochs": at_least(0),
    "max_steps": at_least(-1),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0),
    "max_grad_norm": at_least(0),
    "logging_steps": above(0),
    "save_steps": above(0),
    "eval_steps": above(0),
    "save_total_limit": at_least(1),
    "seed": at_least(0),
    "dataloader_num_workers": at_least(0),
    # data (DataArguments)
    "max_train_samples": at_least(0),
    "max_eval_samples": at_least(0),
    "tag_delimiter": NOT_EMPTY,
    # model and LoRA (ModelArguments, TRL's ModelConfig)
    "max_length": at_least(1),
    "lora_r": at_least(1),
    "lora_alpha": above(0),
    "lora_dropout": within(0, 1, high_included=False),
    "lora_layers": LORA_LAYERS,
    # train.embed (EmbedConfig)
    "temperature": above(0),
    "embed_batch_size": at_least(1),
    "mini_batch_size": at_least(0),
    "eval_ks": at_least(1),
    "matryoshka_dims": at_least(1),
    "dropout": within(0, 1, high_included=False),
    # classifiers
    "threshold": within(0, 1, high_included=False),
}


def field_types(dataclass_types) -> dict[str, Any]:
    """Field name -> resolved annotation over every dataclass a parser builds."""
    types_by_name: dict[str, Any] = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        types_by_name.update({f.name: hints[f.name] for f in dataclasses.fields(dataclass_type)})
    return types_by_name


def check_values(
    values: dict, annotations: Mapping[str, Any], keys, where: Callable[[str], str]
) -> list[str]:
    """Check ``values[key]`` for every ``key`` in ``keys`` (the ones the user set) against its annotation and
    :data:`FIELD_RULES`; returns one line per problem (``where(key)`` says where the key was written).

    ``values`` is updated in place where a single value was given for a list field (it becomes a list).
    """
    problems = []
    for key in keys:
        if key not in values or key not in annotations:
            continue
        annotation, value = annotations[key], values[key]
        if not _fits(value, annotation):
            item = _list_item_type(annotation)
            if item is None or not _fits(value, item):
                problems.append(f"{where(key)}{key} is {_show(value)}; expected {_describe(annotation)}")
                continue
            value = values[key] = [value]
        rule = FIELD_RULES.get(key)
        if rule is None or value is None:
            continue
        bad = [v for v in (value if isinstance(value, list) else [value]) if not _holds(rule, v)]
        if bad:
            shown = _show(value) if not isinstance(value, list) else f"{_show(value)} (item {_show(bad[0])})"
            problems.append(f"{where(key)}{key} is {shown}; expected {rule.expected}")
    return problems


def _holds(rule: Rule, value) -> bool:
    try:
        return bool(rule.holds(value))
    except TypeError:  # a rule on numbers met a text (a field typed int | str, for instance)
        return False


def _is_union(annotation) -> bool:
    origin = typing.get_origin(annotation)
    return origin is Union or origin is types.UnionType


def _fits(value, annotation) -> bool:
    """Does ``value`` (as YAML or argparse gave it) fit ``annotation``? Unknown annotations accept anything."""
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        return any(_fits(value, member) for member in typing.get_args(annotation))
    if annotation is type(None) or annotation is None:
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation in (list, tuple) or origin in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return isinstance(value, annotation) or value in {member.value for member in annotation}
    return True


def _list_item_type(annotation):
    """``X`` when ``annotation`` admits ``list[X]`` (a single X is then read as a one-item list), else None."""
    members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for member in members:
        if typing.get_origin(member) is list and typing.get_args(member):
            return typing.get_args(member)[0]
    return None


def _describe(annotation) -> str:
    """'an integer or null', 'a list of integers', ... for the message."""
    if _is_union(annotation):
        return " or ".join(dict.fromkeys(_describe(member) for member in typing.get_args(annotation)))
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(_show(v) for v in typing.get_args(annotation))
    if annotation in (list, tuple) or origin in (list, tuple):
        args = typing.get_args(annotation)
        return "a list" + (f" of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "")
    if annotation is dict or origin is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(str(member.value) for member in annotation)
    names = {type(None): "null", None: "null", bool: "true or false", int: "an integer", float: "a number", str: "a text"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _show(value) -> str:
    """A value as the user wrote it in YAML (null, true, [1, 2], 'text')."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)
