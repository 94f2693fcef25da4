"""Rows -> what a tokenizer takes: ``(texts, text_pairs)``, the tokenizer's own length limit, and long texts.

Training (``train.seq_classify``) and prediction (``lorasmith.classifiers.sequence``) build their inputs through
``text_inputs``, so a model is evaluated on exactly the texts it was trained on: one text column is encoded
alone, two as a pair (``[CLS] a [SEP] b [SEP]`` for BERT), more: the first column, then the others joined with
the tokenizer's separator token as the second segment.

Texts longer than the token budget (``LongTextOptions``, recorded in ``lorasmith.json`` so that prediction
handles them as training did):

- ``truncation: end`` (default): keep the first tokens (the tokenizer's own truncation);
- ``truncation: head_tail``: keep the first H and the last T tokens (Sun et al. 2019, "How to Fine-Tune BERT for
  Text Classification": 128 + 382 of BERT's 510 was the best single strategy on IMDb). Unset, H and T split
  the budget B in that ratio: H = round(B x 128 / 510), T = B - H (B = 510 gives exactly 128 + 382; B = 254,
  i.e. max_length 256 with [CLS]/[SEP], gives 64 + 190);
- ``long_documents: chunks`` (sequence classification): the whole text as overlapping windows of B tokens,
  each window encoded with the tokenizer's special tokens; a document's window logits are pooled (mean or max).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenizers import processors
from torch import nn

from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option

DEFAULT_MAX_LENGTH = 512
# A training recipe's max_length when it sets none, capped by the model's own limit (train.common.modeling).
DEFAULT_TRAINING_MAX_LENGTH = 256
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


def stated_positions(config) -> int | None:
    """The positions a model's config states (``max_position_embeddings``, GPT-2's ``n_positions``), or None."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def learned_positions(config, modules: dict) -> int | None:
    """How many positions the model's learned position table holds for text (``max_position_embeddings`` less the
    padding offset of RoBERTa-style tables), or None for a model without one (rotary, relative positions)."""
    limit = stated_positions(config)
    if limit is None:
        return None
    tables = [
        module
        for name, module in modules.items()
        if isinstance(module, nn.Embedding) and ("position" in name or name.endswith("wpe"))
        and module.num_embeddings == limit
    ]
    if not tables:
        return None
    padding = tables[0].padding_idx  # RoBERTa-style tables count positions after the padding index
    return limit - (padding + 1 if padding is not None else 0)


def appends_eos(tokenizer) -> bool:
    """True when ``tokenizer`` ends a text with its EOS token by itself (its post-processor adds it)."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id


def append_eos(tokenizer) -> None:
    """Make ``tokenizer`` end every text with its EOS token, exactly once, also under truncation (which then cuts
    the text, not the EOS): what a decoder's last-token pooling reads has seen the whole text. The fast tokenizer's
    post-processor becomes a template that adds the special tokens it added before (a BOS stays) and then the EOS,
    and ``save_pretrained`` writes that into ``tokenizer.json``: a saved copy (``adapter/``, ``merged/``, so
    sentence-transformers too) appends it as well. A tokenizer that appends it already is left as it is.

    Raises:
        ConfigError: the tokenizer has no EOS token, is not a fast tokenizer, or the result is not exactly the
            former tokens plus one EOS.
    """
    name, eos = type(tokenizer).__name__, tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"append_eos: this tokenizer ({name}) has no EOS token; set append_eos: false")
    if appends_eos(tokenizer):
        return
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ConfigError(f"append_eos needs a fast tokenizer; {name} is not one (set append_eos: false)")
    probe = "an eos probe"
    before, text = tokenizer(probe)["input_ids"], tokenizer(probe, add_special_tokens=False)["input_ids"]
    start = next((i for i in range(len(before) - len(text) + 1) if before[i : i + len(text)] == text), None)
    if start is None:
        raise ConfigError(f"append_eos: cannot tell {name}'s special tokens from the text's; set append_eos: false")
    prefix, suffix = before[:start], before[start + len(text) :]
    added = [*prefix, *suffix, tokenizer.eos_token_id]
    template = " ".join([*tokenizer.convert_ids_to_tokens(prefix), "$A", *tokenizer.convert_ids_to_tokens(suffix), eos])
    previous = backend.post_processor
    backend.post_processor = processors.TemplateProcessing(
        single=template,
        pair=f"{template} $B:1 {eos}:1",
        special_tokens=sorted(set(zip(tokenizer.convert_ids_to_tokens(added), added, strict=True))),
    )
    after = tokenizer(probe)["input_ids"]
    if after != [*before, tokenizer.eos_token_id]:
        backend.post_processor = previous
        raise ConfigError(
            f"append_eos: {name} does not append {eos!r} exactly once ({before} became {after}); set append_eos: false"
        )


def positions_from_mask(attention_mask):
    """``(N, T)`` attention mask -> ``(N, T)`` position ids counting from each text's first token (0 on padding), so
    a left-padded text gets the positions it has alone; a decoder's forward takes them (its default counts from the
    row's first slot)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def readable_length(tokenizer, model) -> int:
    """The ``max_length`` a model is used with when nothing says one: the tokenizer's stated limit (else
    :data:`DEFAULT_MAX_LENGTH`), never beyond the model's learned position table."""
    table = learned_positions(model.config, dict(model.named_modules()))
    stated = model_max_length(tokenizer)
    return min(stated, table) if table else stated


TRUNCATIONS = ("end", "head_tail")
LONG_DOCUMENTS = ("truncate", "chunks")
CHUNK_POOLINGS = ("mean", "max")
SUN_HEAD, SUN_TAIL = 128, 382  # Sun et al. 2019's head + tail of BERT's 510 text tokens


def check_truncation(truncation: str, head_tokens: int | None, tail_tokens: int | None) -> None:
    """ConfigError unless ``truncation`` is one of :data:`TRUNCATIONS` and the head / tail counts are token counts
    >= 0 that keep some text (the checks of every holder of these three settings: recipes and prompt specs)."""
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"truncation must be one of {', '.join(TRUNCATIONS)}; got {truncation!r}")
    for key, value in (("head_tokens", head_tokens), ("tail_tokens", tail_tokens)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{key} must be a number of tokens >= 0; got {value!r}")
    if head_tokens == 0 and tail_tokens == 0:
        raise ConfigError("head_tokens and tail_tokens are both 0: no text would be kept")


@dataclass
class LongTextOptions:
    """What happens to a text longer than its token budget (see the module docstring).

    The recipe keys of ``train.seq_classify`` and ``train.sft_classify`` (their configs inherit these fields);
    ``as_manifest()`` is what ``lorasmith.json`` records and ``LongTextOptions(**recorded)`` rebuilds at prediction.
    """

    _argument_group_name = "Long texts"

    truncation: str = option(
        "Texts longer than max_length: 'end' cuts the end; 'head_tail' keeps the first head_tokens and the "
        "last tail_tokens (Sun et al. 2019; prompts: only the text columns are cut, template and answer stay).",
        default="end",
        choices=list(TRUNCATIONS),
    )
    head_tokens: int | None = option(
        "head_tail: tokens kept from the start. Unset: round(B x 128 / 510) of the text budget B (128 of "
        "BERT's 510); with only tail_tokens set, B - tail_tokens. Prompts: head/tail split the kept tokens in "
        "this ratio.",
        default=None,
    )
    tail_tokens: int | None = option(
        "head_tail: tokens kept from the end. Unset: B - head_tokens (382 of BERT's 510).", default=None
    )
    long_documents: str = option(
        "'truncate' (per truncation) or 'chunks': every text as overlapping windows of "
        "max_length tokens, window logits pooled per text (chunk_pooling) for the loss and for prediction.",
        default="truncate",
        choices=list(LONG_DOCUMENTS),
    )
    chunk_overlap: int = option(
        "chunks: tokens two consecutive windows share (< the window's text tokens).", default=64
    )
    max_chunks: int = option(
        "chunks: most windows per text; a longer text keeps its first max_chunks - 1 windows and the "
        "window ending on its last token. Training memory: per_device_train_batch_size x max_chunks windows.",
        default=8,
    )
    chunk_pooling: str = option(
        "chunks: pool a text's window logits by their 'mean' or 'max'.",
        default="mean",
        choices=list(CHUNK_POOLINGS),
    )

    def __post_init__(self):
        self.check_long_text()

    def check_long_text(self) -> None:
        """ConfigError for an unknown strategy, a negative count, or head_tail together with chunks."""
        check_truncation(self.truncation, self.head_tokens, self.tail_tokens)
        for key, value, allowed in (
            ("long_documents", self.long_documents, LONG_DOCUMENTS),
            ("chunk_pooling", self.chunk_pooling, CHUNK_POOLINGS),
        ):
            if value not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        if self.chunk_overlap < 0 or self.max_chunks < 1:
            raise ConfigError(
                f"chunk_overlap must be >= 0 and max_chunks >= 1; got {self.chunk_overlap} and {self.max_chunks}"
            )
        if self.chunks and self.truncation != "end":
            raise ConfigError(
                "long_documents: chunks reads the whole text; truncation: head_tail cannot apply too (drop one)"
            )

    @property
    def chunks(self) -> bool:
        return self.long_documents == "chunks"

    @property
    def cuts_end(self) -> bool:
        """True for the default handling (the tokenizer's own truncation at the end)."""
        return self.truncation == "end" and not self.chunks

    def long_text_options(self) -> LongTextOptions:
        """A plain ``LongTextOptions`` copy (from a config class that inherits these fields)."""
        return LongTextOptions(**self.as_manifest())

    def as_manifest(self) -> dict:
        """The JSON-ready fields (``lorasmith.json``'s ``long_text``)."""
        return {name: getattr(self, name) for name in LongTextOptions.__dataclass_fields__}


def head_tail_counts(budget: int, head_tokens: int | None, tail_tokens: int | None) -> tuple[int, int]:
    """``(head, tail)`` token counts to keep of a text that may take ``budget`` tokens.

    Neither set: ``head = round(budget x 128 / 510)``, ``tail = budget - head``. One set: it (at most ``budget``) and
    the rest of the budget to the other end. Both set: exactly them when ``head + tail <= budget``, else the budget
    split in their ratio. Invariant: ``head + tail <= budget``.
    """
    budget = max(budget, 0)
    if head_tokens is None and tail_tokens is None:
        head = round(budget * SUN_HEAD / (SUN_HEAD + SUN_TAIL))
        return head, budget - head
    if tail_tokens is None:
        head = min(head_tokens, budget)
        return head, budget - head
    if head_tokens is None:
        tail = min(tail_tokens, budget)
        return budget - tail, tail
    if head_tokens + tail_tokens <= budget:
        return head_tokens, tail_tokens
    head = round(budget * head_tokens / (head_tokens + tail_tokens))
    return head, budget - head


def head_and_tail(ids: Sequence[int], head: int, tail: int) -> list[int]:
    """``ids`` unchanged when ``len(ids) <= head + tail``, else its first ``head`` and last ``tail`` items."""
    ids = list(ids)
    if len(ids) <= head + tail:
        return ids
    return ids[:head] + ids[len(ids) - tail :]


def document_windows(ids: Sequence[int], width: int, overlap: int, max_chunks: int) -> list[list[int]]:
    """Overlapping windows over ``ids``: starts 0, s, 2s, ... with stride ``s = width - overlap``, until a window
    reaches the last token (the last window may be shorter). An empty text gives one empty window.

    Longer than ``max_chunks`` windows: the first ``max_chunks - 1`` and the ``width``-token window ending on the
    last token. Invariants: every window holds <= ``width`` ids; without the cap, the windows cover ``ids`` and
    consecutive windows share exactly ``overlap`` ids.
    """
    if not 0 <= overlap < width:
        raise ConfigError(
            f"chunk_overlap must lie in [0, {width}) for windows of {width} text tokens; got {overlap}"
        )
    ids = list(ids)
    stride = width - overlap
    windows = [ids[0:width]]
    start = 0
    while start + width < len(ids):
        start += stride
        windows.append(ids[start : start + width])
    if len(windows) > max_chunks:
        windows = windows[: max_chunks - 1] + [ids[len(ids) - width :]]
    return windows


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """``(prefix, suffix)``: the special token ids the tokenizer puts before and after one text
    (``[CLS]`` / ``[SEP]`` for BERT, ``<s>`` / nothing for Llama, nothing for SmolLM2)."""
    probe = "hello"
    content = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(content) + 1):
        if full[start : start + len(content)] == content:
            return full[:start], full[start + len(content) :]
    raise ConfigError(f"cannot tell the tokenizer's special tokens apart from the text: {full} vs {content}")


@dataclass(frozen=True)
class LongTextEncoding:
    """Token ids of a batch of single-column texts under ``LongTextOptions``.

    sequences[i]: the id lists the model reads for text i (one for head_tail; its windows for chunks), each with the
    tokenizer's special tokens and at most ``max_length`` ids. cut[i]: head_tail removed text i's middle / chunks
    split text i into more than one window. capped[i]: text i needed more than ``max_chunks`` windows.
    """

    sequences: list[list[list[int]]]
    cut: list[bool]
    capped: list[bool]

    @property
    def windows(self) -> int:
        return sum(map(len, self.sequences))


def text_budget(tokenizer, max_length: int) -> int:
    """Text tokens that fit in ``max_length`` with the tokenizer's special tokens; ConfigError when none does."""
    prefix, suffix = special_tokens_around(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ConfigError(
            f"max_length {max_length} leaves no room for text besides {len(prefix) + len(suffix)} special tokens"
        )
    return budget


def check_long_text(
    options: LongTextOptions, tokenizer, max_length: int, text_columns: Sequence[str]
) -> None:
    """ConfigError before any model loads: head_tail / chunks need one text column, explicit head + tail tokens
    must fit the budget, and the chunk overlap must be smaller than a window."""
    if options.cuts_end:
        return
    if len(text_columns) != 1:
        raise ConfigError(
            f"truncation: {options.truncation} / long_documents: {options.long_documents} read one text column; "
            f"this data has {list(text_columns)} (use truncation: end for pair inputs)"
        )
    budget = text_budget(tokenizer, max_length)
    if options.head_tokens is not None and options.tail_tokens is not None:
        if options.head_tokens + options.tail_tokens > budget:
            raise ConfigError(
                f"head_tokens {options.head_tokens} + tail_tokens {options.tail_tokens} exceed the {budget} text "
                f"tokens of max_length {max_length}"
            )
    if options.chunks and options.chunk_overlap >= budget:
        raise ConfigError(
            f"chunk_overlap {options.chunk_overlap} must be < the {budget} text tokens of a window"
        )


def encode_long_texts(
    tokenizer, texts: Sequence[str], max_length: int, options: LongTextOptions
) -> LongTextEncoding:
    """Encode single-column ``texts`` by head_tail or chunks (``options.cuts_end`` uses the tokenizer instead).

    Every text is tokenized once without special tokens and cut (or windowed) at the id level, then wrapped in the
    tokenizer's special tokens, so head_tail keeps exactly the first H and last T text tokens.
    """
    prefix, suffix = special_tokens_around(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    head, tail = head_tail_counts(budget, options.head_tokens, options.tail_tokens)
    stride = budget - options.chunk_overlap
    sequences, cut, capped = [], [], []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        if options.chunks:
            pieces = document_windows(ids, budget, options.chunk_overlap, options.max_chunks)
        else:
            pieces = [head_and_tail(ids, head, tail)]
        sequences.append([prefix + piece + suffix for piece in pieces])
        cut.append(len(ids) > (budget if options.chunks else head + tail))
        capped.append(options.chunks and len(ids) > budget + stride * (options.max_chunks - 1))
    return LongTextEncoding(sequences, cut, capped)
