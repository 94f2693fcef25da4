"""Class labels: infer the label names of a column, encode raw labels to ids, read names back.

The label map travels inside the dataset: ``load(..., task="labeled")`` stores ``label`` as a
``datasets.ClassLabel`` (or ``Sequence(ClassLabel)`` for multi-label), so
``ds.features["label"].names[i]`` is the name of id ``i`` and ``label_names_from_dataset(ds)``
returns the list. Pass the training set's names as ``label_names=`` when loading an evaluation
split, so both splits share ids even when a class is missing from one of them.

Raw label values are canonicalised by ``label_key``: integer-valued numbers and their strings
become ``int`` (so ``1``, ``1.0``, ``"1"`` and ``"1.0"`` are the same class), other strings are
stripped, missing or empty values become ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from datasets import ClassLabel, Dataset

from data_utils.options import as_str_list
from data_utils.readers import column_values
from lorasmith.errors import ConfigError, DataError

LabelKey = int | str
_INTEGER = re.compile(r"[+-]?\d+")


def label_key(value) -> LabelKey | None:
    """Canonical form of one raw label value (see module docstring); ``None`` when missing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else text


def split_multi_label(value, delimiter: str) -> list[LabelKey] | None:
    """Keys of one multi-label value (a list, or a ``delimiter``-separated string), deduplicated in
    order; ``None`` when the value itself is missing. An empty list means "no class applies"."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(delimiter)
    keys = (label_key(item) for item in items)
    return list(dict.fromkeys(key for key in keys if key is not None))


def infer_label_names(keys: Iterable[LabelKey]) -> list[str]:
    """Sorted distinct label keys as names: integers numerically (``[2, 10] -> ["2", "10"]``),
    then strings alphabetically."""
    distinct = set(keys)
    integers = sorted(key for key in distinct if isinstance(key, int))
    strings = sorted(key for key in distinct if isinstance(key, str))
    return [str(key) for key in integers] + strings


def normalize_label_names(label_names) -> list[str]:
    """Names from a list (or ``"a,b,c"``), or from a dict ``{id: name}`` with ids 0..K-1."""
    if isinstance(label_names, Mapping):
        try:
            by_id = {int(key): str(name) for key, name in label_names.items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"label_names as a dict must map integer ids to names, got {label_names!r}"
            ) from None
        if sorted(by_id) != list(range(len(by_id))):
            raise ConfigError(f"label_names ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        names = [by_id[i] for i in range(len(by_id))]
    else:
        names = as_str_list("label_names", label_names)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"label_names lists {', '.join(duplicated)} more than once")
    return names


class LabelEncoder:
    """Maps label keys to ids of a fixed name list.

    A key matches a name by its string form; an integer key that is not a name is accepted as an
    id into the list, unless some name is itself an integer (then ids would be ambiguous).
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._ids = {name: i for i, name in enumerate(self.names)}
        self._ints_are_ids = not any(_INTEGER.fullmatch(name) for name in self.names)

    def encode(self, key: LabelKey) -> int | None:
        """The id of ``key``, or ``None`` when it is not a known label."""
        found = self._ids.get(str(key))
        if found is None and isinstance(key, int) and self._ints_are_ids and 0 <= key < len(self.names):
            found = key
        return found


def label_names_from_dataset(dataset: Dataset, column: str = "label") -> list[str]:
    """Label names of ``dataset[column]``: the ``ClassLabel`` names (single- or multi-label), or,
    for a plain column, the names ``infer_label_names`` gives its values."""
    if column not in dataset.column_names:
        raise DataError(f"no label column '{column}'", available=dataset.column_names)
    feature = dataset.features[column]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    values = column_values(dataset, column)
    if values and isinstance(values[0], list):
        values = [item for row in values for item in row]
    return infer_label_names(key for key in map(label_key, values) if key is not None)
