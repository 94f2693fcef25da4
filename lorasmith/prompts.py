"""Prompts for classifying with a causal LM: template, system message, verbalizers, rendering, length guard.

A ``PromptSpec`` turns a data row ``{column: text}`` into a prompt, and each label into the answer the model
must give (its *verbalizer*). Training (``train.sft_classify``) and label scoring (``lorasmith.classifiers.prompt``)
both encode through ``encode_choices`` here, so the token sequences the model is trained on are exactly the
ones it is scored on.

Two renderings (``PromptSpec.format``):

- ``"chat"``: the tokenizer's chat template. Prompt = ``[system?, user]`` messages rendered with the generation
  prompt; completion = the assistant turn (answer plus the template's end-of-turn tokens). This is TRL's
  *conversational prompt-completion* format.
- ``"plain"``: prompt = ``"{system_message}\\n\\n{user text}\\n"``; completion = ``answer + eos_token``. This is
  TRL's plain *prompt-completion* format (TRL appends the EOS token the same way). The prompt ends on a newline
  so that the answer's first token never merges with the prompt.

Encoding follows ``trl.SFTTrainer``: prompt alone and prompt + completion are tokenized separately and the
completion starts where the two token sequences diverge (usually right after the prompt).

Length guard (``fit_row``): when ``prompt + the longest answer`` exceeds ``max_length`` tokens, the input
columns are shortened (tokens are removed from the longest column first); the system message, the template and
the answer are never cut. ``truncation`` says which tokens of a shortened column stay: ``end`` its first ones,
``head_tail`` its first and last ones (``lorasmith.tokenizer_inputs.head_tail_counts`` splits the kept tokens,
by default 128 : 382 as in Sun et al. 2019). The spec is saved in ``lorasmith.json``, so label scoring at
prediction shortens rows exactly as training did.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from lorasmith.errors import ConfigError
from lorasmith.tokenizer_inputs import check_truncation, head_and_tail, head_tail_counts

FORMATS = ("auto", "chat", "plain")


@dataclass(frozen=True)
class PromptSpec:
    """How rows become prompts and labels become answers.

    Attributes:
        template: user message with ``{column}`` placeholders, e.g. ``"Requirement: {requirement}\\nData: {sample_data}"``.
        verbalizers: label name -> answer text, in label id order (``list(verbalizers)`` are the label names).
        system_message: optional system turn (role, task, condition); in the plain format it heads the prompt.
        format: ``"chat"`` or ``"plain"`` (see the module docstring); ``resolve_format`` picks one for a tokenizer.
        max_length: token budget of prompt + answer; None disables the length guard.
        truncation: ``"end"`` or ``"head_tail"``: which tokens of a shortened text column stay (module docstring).
        head_tokens, tail_tokens: head_tail's split of a column's kept tokens (``head_tail_counts``).
    """

    template: str
    verbalizers: dict[str, str]
    system_message: str | None = None
    format: str = "chat"
    max_length: int | None = None
    truncation: str = "end"
    head_tokens: int | None = None
    tail_tokens: int | None = None
    text_columns: list[str] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "text_columns", template_columns(self.template))
        check_verbalizer_texts(self.verbalizers)
        if self.format not in ("chat", "plain"):
            raise ConfigError(f"prompt format must be 'chat' or 'plain' here, got {self.format!r}")
        check_truncation(self.truncation, self.head_tokens, self.tail_tokens)

    @property
    def label_names(self) -> list[str]:
        return list(self.verbalizers)

    def to_dict(self) -> dict:
        """JSON-ready form (the manifest's ``prompt`` entry)."""
        values = asdict(self)
        values.pop("text_columns")
        return values

    @classmethod
    def from_dict(cls, values: Mapping) -> PromptSpec:
        known = {
            "template",
            "verbalizers",
            "system_message",
            "format",
            "max_length",
            "truncation",
            "head_tokens",
            "tail_tokens",
        }
        return cls(**{k: v for k, v in values.items() if k in known})


def template_columns(template: str) -> list[str]:
    """The ``{column}`` placeholders of ``template`` in order of first appearance (``{{`` is a literal brace).

    Raises ConfigError for positional (``{}``, ``{0}``), attribute/index (``{a.b}``) or formatted (``{a:>5}``)
    placeholders, and for a template without any placeholder.
    """
    columns: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"template {template!r} is not a valid format string: {error}") from None
    for _, name, format_spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or format_spec or conversion:
            raise ConfigError(
                f"template placeholder {{{name}{'!' + conversion if conversion else ''}{':' + format_spec if format_spec else ''}}} "
                "is not a column name: write {column} (use {{ and }} for literal braces)"
            )
        if name not in columns:
            columns.append(name)
    if not columns:
        raise ConfigError(
            f"template {template!r} has no {{column}} placeholder: the model would never see the input"
        )
    return columns


def default_template(text_columns: Sequence[str]) -> str:
    """``"{text}"`` for one column; ``"col1: {col1}\\ncol2: {col2}"`` for several."""
    if len(text_columns) == 1:
        return "{" + text_columns[0] + "}"
    return "\n".join(f"{name}: {{{name}}}" for name in text_columns)


def build_verbalizers(label_names: Sequence[str], answers: Mapping | None = None) -> dict[str, str]:
    """label name -> answer text, in ``label_names`` order. Without ``answers`` a label answers its own name.

    ``answers`` is the recipe's ``labels`` map (keys may be ints in YAML: ``{0: negative, 1: positive}``);
    ConfigError when it misses a label or names one that is not in the data's label set.
    """
    if answers is None:
        return {name: name for name in label_names}
    answers = {str(key): str(value) for key, value in answers.items()}
    missing = [name for name in label_names if name not in answers]
    extra = [name for name in answers if name not in label_names]
    if missing or extra:
        raise ConfigError(
            f"labels map {answers} does not match the label set {list(label_names)}"
            + (f": no answer for {missing}" if missing else "")
            + (f": unknown {extra}" if extra else "")
        )
    return {name: answers[name] for name in label_names}


def check_verbalizer_texts(verbalizers: Mapping[str, str]) -> None:
    """ConfigError unless there are >= 2 labels with non-empty, pairwise different answers."""
    if len(verbalizers) < 2:
        raise ConfigError(f"classification needs at least 2 labels, got {list(verbalizers)}")
    empty = [name for name, answer in verbalizers.items() if not str(answer).strip()]
    if empty:
        raise ConfigError(f"labels {empty} have an empty answer text")
    by_answer: dict[str, list[str]] = {}
    for name, answer in verbalizers.items():
        by_answer.setdefault(answer.strip(), []).append(name)
    clashes = {answer: names for answer, names in by_answer.items() if len(names) > 1}
    if clashes:
        raise ConfigError(f"labels share an answer text, the model could not tell them apart: {clashes}")


def resolve_format(requested: str, tokenizer) -> str:
    """``"chat"`` when requested or when ``"auto"`` and the tokenizer has a chat template, else ``"plain"``."""
    if requested not in FORMATS:
        raise ConfigError(f"prompt_format must be one of {', '.join(FORMATS)}; got {requested!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise ConfigError(
            "prompt_format 'chat' needs a tokenizer with a chat template; use 'plain' or 'auto'"
        )
    if requested == "plain" and not tokenizer.eos_token:
        raise ConfigError("prompt_format 'plain' needs a tokenizer with an EOS token to end the answer")
    if requested == "auto":
        return "chat" if has_template else "plain"
    return requested


def user_text(spec: PromptSpec, row: Mapping[str, str]) -> str:
    """The template filled with the row's columns."""
    return spec.template.format_map({name: row[name] for name in spec.text_columns})


def prompt_messages(spec: PromptSpec, row: Mapping[str, str]) -> list[dict[str, str]]:
    """Chat format: ``[system?, user]`` messages of one row."""
    messages = [{"role": "system", "content": spec.system_message}] if spec.system_message else []
    return [*messages, {"role": "user", "content": user_text(spec, row)}]


def render(spec: PromptSpec, row: Mapping[str, str], label: str, eos_token: str | None = None) -> dict:
    """One TRL prompt-completion example: conversational (chat) or plain strings (plain, EOS appended)."""
    answer = spec.verbalizers[label]
    if spec.format == "chat":
        return {
            "prompt": prompt_messages(spec, row),
            "completion": [{"role": "assistant", "content": answer}],
        }
    head = f"{spec.system_message}\n\n" if spec.system_message else ""
    return {"prompt": f"{head}{user_text(spec, row)}\n", "completion": answer + (eos_token or "")}


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + answer; ``input_ids[completion_start:]`` is the answer (the supervised part)."""

    input_ids: list[int]
    completion_start: int

    @property
    def completion_ids(self) -> list[int]:
        return self.input_ids[self.completion_start :]


def encode_prompt(tokenizer, spec: PromptSpec, row: Mapping[str, str]) -> list[int]:
    """Token ids of the prompt alone (chat: with the generation prompt), as TRL tokenizes it."""
    example = render(spec, row, spec.label_names[0], tokenizer.eos_token)
    if spec.format == "chat":
        return _chat_ids(tokenizer, example["prompt"], add_generation_prompt=True)
    return tokenizer(text=example["prompt"])["input_ids"]


def encode_choices(
    tokenizer, spec: PromptSpec, row: Mapping[str, str], labels: Sequence[str] | None = None
) -> dict[str, Encoded]:
    """label -> prompt + that label's answer, encoded as ``trl.SFTTrainer`` encodes a prompt-completion example.

    ``labels`` restricts the encoding to some labels (default: every label, in id order).
    """
    prompt_ids = encode_prompt(tokenizer, spec, row)
    choices = {}
    for label in spec.label_names if labels is None else labels:
        example = render(spec, row, label, tokenizer.eos_token)
        if spec.format == "chat":
            full_ids = _chat_ids(tokenizer, example["prompt"] + example["completion"])
        else:
            full_ids = tokenizer(text=example["prompt"] + example["completion"])["input_ids"]
        choices[label] = Encoded(full_ids, common_prefix_length(prompt_ids, full_ids))
    return choices


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )["input_ids"]


def common_prefix_length(ids: Sequence[int], other_ids: Sequence[int]) -> int:
    """Number of leading tokens the two sequences share (where TRL starts the completion)."""
    length = 0
    for a, b in zip(ids, other_ids, strict=False):
        if a != b:
            break
        length += 1
    return length


def check_choices(choices: Mapping[str, Encoded]) -> None:
    """Verbalizers tokenized in a real prompt must be usable for scoring.

    ConfigError when an answer encodes to no token, two answers encode to the same tokens, or the answers
    start at different positions (the prompt merges with some answers: their likelihoods would not be
    comparable — end the template so that the answer starts a new token, e.g. with a newline).
    """
    empty = [label for label, encoded in choices.items() if not encoded.completion_ids]
    if empty:
        raise ConfigError(f"the answers of {empty} encode to no token after the prompt")
    seen: dict[tuple[int, ...], str] = {}
    for label, encoded in choices.items():
        key = tuple(encoded.completion_ids)
        if key in seen:
            raise ConfigError(
                f"labels {seen[key]!r} and {label!r} encode to the same answer tokens {list(key)}"
            )
        seen[key] = label
    starts = {label: encoded.completion_start for label, encoded in choices.items()}
    if len(set(starts.values())) > 1:
        raise ConfigError(
            f"the answers start at different token positions {starts}: the prompt's last token merges with some "
            "answers. End the template with a newline or a space-free separator so every answer starts a new token."
        )


def answer_tokens(tokenizer, spec: PromptSpec) -> int:
    """Tokens the longest answer takes after the prompt (measured with empty input columns).

    Training and scoring reserve this many tokens for the answer when fitting a row, so both see the same
    shortened prompt.
    """
    choices = encode_choices(tokenizer, spec, {name: "" for name in spec.text_columns})
    return max(len(encoded.completion_ids) for encoded in choices.values())


def fit_row(tokenizer, spec: PromptSpec, row: Mapping[str, str], answer_tokens: int) -> dict | None:
    """The row with its text columns shortened so that ``prompt + answer_tokens <= spec.max_length``.

    Tokens are removed from the longest column first (so a short requirement survives next to a long data
    column); a shortened column keeps its first tokens (``truncation: end``) or its first and last ones
    (``head_tail``). Returns the row unchanged when it fits, None when even empty columns do not fit.
    """
    row = dict(row)
    if spec.max_length is None:
        return row
    limit = spec.max_length - answer_tokens
    for _ in range(8):  # decode -> re-encode can differ by a token or two; a few rounds settle it
        excess = len(encode_prompt(tokenizer, spec, row)) - limit
        if excess <= 0:
            return row
        pieces = {
            name: tokenizer(row[name], add_special_tokens=False)["input_ids"] for name in spec.text_columns
        }
        if not any(pieces.values()):
            return None
        kept = shortened_lengths({name: len(ids) for name, ids in pieces.items()}, excess)
        row.update(
            {
                name: tokenizer.decode(kept_tokens(spec, pieces[name], kept[name]))
                for name in spec.text_columns
            }
        )
    return None


def kept_tokens(spec: PromptSpec, ids: list[int], count: int) -> list[int]:
    """The ``count`` tokens of a text column's ``ids`` that a shortened row keeps: the first ones (``end``) or the
    first and last ones (``head_tail``). ``ids`` unchanged when ``count >= len(ids)``."""
    if count >= len(ids):
        return ids
    if spec.truncation == "head_tail":
        return head_and_tail(ids, *head_tail_counts(count, spec.head_tokens, spec.tail_tokens))
    return ids[:count]


def shortened_lengths(lengths: Mapping[str, int], excess: int) -> dict[str, int]:
    """Token counts per column after removing at least ``excess`` tokens, longest columns first.

    All columns longer than a common cap are cut to it; the cap is the largest that removes enough.
    """
    target = max(sum(lengths.values()) - excess, 0)
    low, high = 0, max(lengths.values())
    while low < high:
        cap = (low + high + 1) // 2
        if sum(min(n, cap) for n in lengths.values()) <= target:
            low = cap
        else:
            high = cap - 1
    return {name: min(n, low) for name, n in lengths.items()}
