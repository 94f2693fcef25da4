"""Instructions: what is put before a query, and before a document, when it is embedded (the e5-mistral /
Qwen3-Embedding way), for the run and per dataset in a multi-dataset run.

``query_prefix`` / ``document_prefix`` take a plain prefix (``"query: "``) or a template whose text comes last
(``"Instruct: Given a question, retrieve passages that answer it\\nQuery: {text}"``); a dataset of a multi-dataset
run may set its own (``train_data: {nq: {data: nq.jsonl, query_prefix: ...}}``), the others take the recipe's.
Documents stay bare unless ``document_prefix`` says otherwise. A symmetric task (STS, SimCSE) embeds both sides the
same way: its one instruction is ``query_prefix``, put on both sides (``document_prefix`` is refused there).

A run records what it used (``lorasmith.json``: the recipe task's prefixes, and per dataset under ``instructions``)
and exports it as sentence-transformers prompts: ``query`` / ``document`` (the recipe's) and one per dataset named
after it, so ``SentenceTransformer(merged).encode(texts, prompt_name="query")`` embeds as training did; eval and
train.mine apply the recorded prefixes (``lorasmith.encoder.Embedder``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lorasmith.errors import ConfigError
from train.embed.tasks import EmbedTask

TEXT = "{text}"


def prefix_of(value: str | None, key: str) -> str:
    """The prefix a ``query_prefix`` / ``document_prefix`` value puts before each text ('' for None): the value
    itself, or a template's part before ``{text}``.

    Raises:
        ConfigError: a template with anything after ``{text}`` (a prompt is a prefix), or a non-string value.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string (a prefix, or a template ending with {TEXT}); got {value!r}")
    head, found, tail = value.partition(TEXT)
    if found and (tail or TEXT in head):
        raise ConfigError(
            f"{key}: {TEXT} must come last, once (an instruction is a prefix, as sentence-transformers prompts are); "
            f"got {value!r}"
        )
    return head


@dataclass(frozen=True)
class Instructions:
    """The prefixes of one dataset: ``query`` before anchors / queries, ``document`` before positives, negatives,
    tags (equal for a symmetric task)."""

    query: str = ""
    document: str = ""

    @classmethod
    def resolve(cls, query: str | None, document: str | None, task: EmbedTask, where: str = "") -> Instructions:
        """The prefixes a dataset of ``task`` uses (``where``: how the message names the dataset)."""
        query, document = prefix_of(query, f"{where}query_prefix"), prefix_of(document, f"{where}document_prefix")
        if task.symmetric and document:
            raise ConfigError(
                f"{where}document_prefix does not apply to task {task.name}: both sides are the same kind of text, "
                "embedded alike; its one instruction is query_prefix, put on both sides"
            )
        return cls(query, query) if task.symmetric else cls(query, document)

    def as_manifest(self) -> dict[str, str]:
        return {"query_prefix": self.query, "document_prefix": self.document}


def sentence_transformers_prompts(main: Instructions, per_dataset: dict[str, Instructions]) -> dict[str, str]:
    """``{"query": ..., "document": ..., <dataset>: its query prefix, ...}`` without the empty ones."""
    prompts = {"query": main.query, "document": main.document}
    prompts.update({name: instructions.query for name, instructions in per_dataset.items()})
    return {name: prompt for name, prompt in prompts.items() if prompt}
