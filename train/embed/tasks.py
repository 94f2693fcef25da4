"""The embedding tasks of ``train.embed`` (the recipe's ``task:``): one :class:`EmbedTask` record per task.

A task is a training objective; its rows follow one ``data_utils`` schema (``EmbedTask.schema``, e.g.
``simcse_unsup`` reads ``sentences``). Everything that differs between tasks is a field of its record, and
every other module reads the record: the collator (``roles``, ``symmetric``), the trainer (``aligned``,
``positive_is_anchor``), the loss recipe (``scored``, ``aligned``, ``default_loss``), the config defaults
(``eval_task``) and the run plan (``describe_negatives``). Adding a task is one entry in ``EMBED_TASKS``.

A recipe's task name is validated once, by :func:`embed_task`; the rest of ``train.embed`` takes the
record and trusts it.

How the roles of one batch of ``B`` rows look per task (``batch.py`` turns them into tensors):

=============  ===================  ==================================  ==========================
task           anchors (B)          candidates                          positives of anchor i
=============  ===================  ==================================  ==========================
simcse_unsup   texts, dropout 1     same texts, dropout 2 (B rows)      (aligned: its partner)
pairs          anchor               positive (B rows)                   (aligned: its partner)
triplets       anchor               B positives, then B*K hard negs     (aligned: its partner)
scored_pairs   sentence1            sentence2 (B rows)                  (aligned: its partner)
tags           texts                the batch's distinct tags (M rows)  its tags
=============  ===================  ==================================  ==========================
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from lorasmith.errors import ConfigError


class Roles(NamedTuple):
    """The texts of one batch in their contrastive roles (raw texts, without prefixes).

    Attributes:
        anchors: ``B`` anchor texts (queries / texts / sentence1 / SimCSE view 1).
        candidates: ``M`` candidate texts; for aligned tasks the first ``B`` are the anchors' partners in order.
        positives: for tasks that are not aligned, ``B`` non-empty lists of each anchor's positive candidate
            texts (each one among ``candidates``); ``None`` for aligned tasks (the partner is the positive).
        scores: ``B`` gold similarities in ``[0, 1]`` (scored tasks), else ``None``.
    """

    anchors: list[str]
    candidates: list[str]
    positives: list[list[str]] | None = None
    scores: list[float] | None = None


def sentence_roles(rows: Sequence[dict]) -> Roles:
    """SimCSE: every text is its own partner (the two dropout views)."""
    texts = [row["text"] for row in rows]
    return Roles(texts, texts)


def pair_roles(rows: Sequence[dict]) -> Roles:
    return Roles([row["anchor"] for row in rows], [row["positive"] for row in rows])


def triplet_roles(rows: Sequence[dict]) -> Roles:
    """The ``B`` positives, then every row's hard negatives, row-major (``B * K``)."""
    negatives = [negative for row in rows for negative in row["negatives"]]
    return Roles([row["anchor"] for row in rows], [row["positive"] for row in rows] + negatives)


def scored_pair_roles(rows: Sequence[dict]) -> Roles:
    return Roles(
        [row["sentence1"] for row in rows],
        [row["sentence2"] for row in rows],
        scores=[float(row["score"]) for row in rows],
    )


def tag_roles(rows: Sequence[dict]) -> Roles:
    """The candidates are the batch's distinct tags, in order of first appearance."""
    tags = list(dict.fromkeys(tag for row in rows for tag in row["tags"]))
    return Roles([row["text"] for row in rows], tags, positives=[list(row["tags"]) for row in rows])


def in_batch_negatives(train_ds, global_anchors: int) -> str:
    return (
        f"{global_anchors - 1} at most ({global_anchors} anchors per global batch; duplicates of the positive "
        "masked, a repeated text counts once)"
    )


def triplet_negatives(train_ds, global_anchors: int) -> str:
    hard = len(train_ds[0]["negatives"])
    return (
        f"{global_anchors * (1 + hard) - 1} ({global_anchors} anchors x (1 positive + {hard} hard negatives), "
        "minus its positive)"
    )


def scored_pair_negatives(train_ds, global_anchors: int) -> str:
    return (
        f"{global_anchors - 1} for in-batch losses; CoSENT/AnglE rank all {global_anchors} pairs against "
        "each other"
    )


def tag_negatives(train_ds, global_anchors: int) -> str:
    distinct = len({tag for tags in train_ds["tags"] for tag in tags})
    return (
        f"the distinct tags of {global_anchors} texts minus the text's own (at most {distinct - 1}; "
        "duplicates masked)"
    )


@dataclass(frozen=True, kw_only=True)
class EmbedTask:
    """Everything that differs between two embedding tasks.

    Attributes:
        name: the recipe's ``task:`` value.
        schema: the ``data_utils`` schema of the training rows.
        roles: rows of a batch -> their :class:`Roles`.
        aligned: each anchor has exactly one partner candidate (``pair_index``); False for multi-positive tags.
        positive_is_anchor: the positive's content id is the anchor's own (unsupervised SimCSE: two views of
            one text), not the partner's.
        scored: rows carry gold similarity scores (losses that rank or regress scores can be used).
        symmetric: both sides are the same kind of text: no query / document prefixes (as ``eval.sts``).
        eval_task: the default schema of ``eval_data`` (a key of ``EVAL_METRICS``).
        default_loss: the loss when the recipe names none.
        describe_negatives: ``(train dataset, global anchors per step) -> text`` for the run plan: how many
            in-batch negatives each anchor sees per micro-step (gradient accumulation adds none).
    """

    name: str
    schema: str
    roles: Callable[[Sequence[dict]], Roles]
    eval_task: str
    aligned: bool = True
    positive_is_anchor: bool = False
    scored: bool = False
    symmetric: bool = False
    default_loss: str = "infonce"
    describe_negatives: Callable[[object, int], str] = in_batch_negatives


EMBED_TASKS: dict[str, EmbedTask] = {
    task.name: task
    for task in (
        EmbedTask(
            name="simcse_unsup",
            schema="sentences",
            roles=sentence_roles,
            eval_task="scored_pairs",
            positive_is_anchor=True,
            symmetric=True,
        ),
        EmbedTask(name="pairs", schema="pairs", roles=pair_roles, eval_task="pairs"),
        EmbedTask(
            name="triplets",
            schema="triplets",
            roles=triplet_roles,
            eval_task="pairs",
            describe_negatives=triplet_negatives,
        ),
        EmbedTask(
            name="tags",
            schema="tags",
            roles=tag_roles,
            eval_task="tags",
            aligned=False,
            describe_negatives=tag_negatives,
        ),
        EmbedTask(
            name="scored_pairs",
            schema="scored_pairs",
            roles=scored_pair_roles,
            eval_task="scored_pairs",
            scored=True,
            symmetric=True,
            default_loss="cosent",
            describe_negatives=scored_pair_negatives,
        ),
    )
}

# Schemas an eval set may follow -> the metric that picks the best checkpoint (higher is better): STS Spearman
# for scored pairs, NDCG@10 for retrieving each anchor's positive (pairs) or each text's tags (tags).
EVAL_METRICS = {"scored_pairs": "spearman", "pairs": "ndcg@10", "tags": "ndcg@10"}


def closest_hint(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name nearest to ``name``, or ``''``."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def embed_task(name: str) -> EmbedTask:
    """The record of the recipe's ``task:``.

    Raises:
        ConfigError: unknown task, with the closest known name and the list of tasks.
    """
    if name not in EMBED_TASKS:
        raise ConfigError(
            f"unknown contrastive task '{name}'{closest_hint(str(name), EMBED_TASKS)}. "
            f"Known tasks: {', '.join(EMBED_TASKS)}"
        )
    return EMBED_TASKS[name]
