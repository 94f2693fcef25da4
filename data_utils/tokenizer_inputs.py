"""Rows -> what an encoder tokenizer takes: ``(texts, text_pairs)`` and the tokenizer's own length limit.

Training (``train.seq_classify``) and prediction (``eval.classifiers.sequence``) build their inputs through
``text_inputs``, so a model is evaluated on exactly the texts it was trained on: one text column is encoded
alone, two as a pair (``[CLS] a [SEP] b [SEP]`` for BERT), more: the first column, then the others joined with
the tokenizer's separator token as the second segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_MAX_LENGTH = 512
# transformers sets model_max_length to int(1e30) (VERY_LARGE_INTEGER) when a tokenizer states no limit; real
# limits go up to ~1e7 (131072 for Llama 3 / Qwen2.5, 1010000 for Qwen2.5-1M), so anything below 1e12 is one.
_NO_STATED_LIMIT = 10**12


def text_inputs(
    columns: Mapping[str, Sequence[str]], text_columns: Sequence[str], separator: str
) -> tuple[list[str], list[str] | None]:
    """``(texts, text_pairs)`` for the tokenizer from column-wise texts (see the module docstring).

    ``columns[name]`` is a list of N texts for every name in ``text_columns``; ``text_pairs`` is None for one column.
    """
    first = list(columns[text_columns[0]])
    if len(text_columns) == 1:
        return first, None
    rest = [columns[name] for name in text_columns[1:]]
    joiner = f" {separator} " if separator else " "
    return first, [joiner.join(parts) for parts in zip(*rest, strict=True)]


def model_max_length(tokenizer, default: int | None = DEFAULT_MAX_LENGTH) -> int | None:
    """The tokenizer's ``model_max_length`` when it states a real limit, else ``default``.

    Padding goes to the longest text of a batch, so a long stated limit costs nothing on short texts; truncating
    a long-context model to 512 instead would silently drop text it can read.
    """
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _NO_STATED_LIMIT else default
