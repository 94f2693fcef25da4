"""Several training datasets in one run, each batch drawn from ONE of them.

A recipe's ``train_data`` may name several sources::

    train_data: [nli.jsonl, qa.jsonl]              # a list: every source has the recipe's task and columns
    train_data:                                    # a map name -> source, or name -> its own task / columns
      nli: nli.jsonl
      tags: {data: so_tags.csv, task: tags, columns: {text: title}}
    dataset_sampling: proportional                 # or round_robin

Every optimizer micro-step takes one global batch (``per_device_train_batch_size`` rows on each of ``W``
processes) from a single dataset, so in-batch negatives are always of one kind. Which dataset step ``s`` of
epoch ``e`` draws, and which rows, is a pure function of ``(seed, e, s)`` and never of the rank: every process
draws the same dataset (the gathered batch is one dataset's), and a run resumed from a checkpoint (Trainer skips
the batches already trained) sees exactly the batches the uninterrupted run saw.

Per epoch, each dataset's rows are shuffled (seeded by ``(seed, epoch, dataset)``) and cut into global batches
of ``B x W`` rows; a last, shorter global batch is kept when it has at least ``W`` rows (and
``dataloader_drop_last`` is off), split as evenly as possible over the processes, otherwise dropped (at most
``W - 1`` rows of a dataset per epoch). The global batches are then ordered:

- ``proportional``: all global batches of all datasets in one seeded random order, so a dataset is drawn in
  proportion to its size and every row is used once per epoch;
- ``round_robin``: one global batch of each dataset in turn (recipe order); a dataset that has run out is
  skipped, so the bigger datasets fill the end of the epoch.

Trainer plumbing: :class:`SingleDatasetBatches` is the training DataLoader's batch sampler and yields the ``W``
per-process batches of each global batch in rank order; ``accelerate`` hands batch ``i`` to process
``i % W`` (``BatchSamplerShard``; the sampler has no ``batch_size`` attribute, so batches of uneven size pass
as they are). :class:`SamplerEpoch` gives it the epoch at each epoch start (Trainer's own ``set_epoch`` does not
reach a batch sampler after a mid-epoch resume). Rows reach the collator as ``(dataset index, row)``;
:class:`MixCollator` collates them with that dataset's task collator and adds ``dataset``, which the trainer uses
for the batch's task and for the per-dataset loss in the logs (``loss/<name>``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import TrainerCallback

from lorasmith.errors import ConfigError
from train.embed.collator import ContrastiveCollator, LengthSortedChunker
from train.embed.loss_spec import LOSSES
from train.embed.tasks import EmbedTask, closest_hint

SAMPLING = ("proportional", "round_robin")
SOURCE_KEYS = ("data", "task", "columns", "query_prefix", "document_prefix")


@dataclass(frozen=True)
class TrainSource:
    """One training dataset of a recipe: its name (logs, plan), what ``data_utils.load`` reads, its task name and
    column map (the recipe's unless the map entry sets its own), and its own query / document prefixes (None: the
    recipe's; ``instructions.py``)."""

    name: str
    data: str
    task: str
    columns: dict | str | None
    query_prefix: str | None = None
    document_prefix: str | None = None


def train_sources(train_data, task: str, columns: dict | str | None) -> list[TrainSource] | None:
    """The recipe's ``train_data`` as named sources; ``None`` when it is one plain source (the single-dataset run).

    ``train_data`` may be a string (a source, or YAML text of a list / map from the command line), a list of
    sources (named after their file names) or a map name -> source / ``{data:, task:, columns:}``.

    Raises:
        ConfigError: an empty list or map, an entry that is not a source or a mapping, a mapping without ``data``
            or with unknown keys, or a name that is also a loss name (the logs' ``loss/<name>`` would clash).
    """
    if isinstance(train_data, str) and train_data.strip().startswith(("[", "{")):
        train_data = yaml.safe_load(train_data)
    if isinstance(train_data, str):
        return None
    if isinstance(train_data, Mapping):
        sources = [_map_entry(str(name), entry, task, columns) for name, entry in train_data.items()]
    elif isinstance(train_data, Sequence) and all(isinstance(entry, str) for entry in train_data):
        sources = [
            TrainSource(name, entry, task, columns)
            for name, entry in zip(_names(train_data), train_data, strict=True)
        ]
    else:
        raise ConfigError(
            f"train_data must be a source, a list of sources or a map name -> source; got {train_data!r}"
        )
    if not sources:
        raise ConfigError("train_data is an empty list / map; name at least one source")
    clashes = [source.name for source in sources if source.name in LOSSES]
    if clashes:
        raise ConfigError(f"train_data names {clashes} are loss names (logged as loss/<name>); rename them")
    return sources


def _map_entry(name: str, entry, task: str, columns) -> TrainSource:
    if isinstance(entry, str):
        return TrainSource(name, entry, task, columns)
    if not isinstance(entry, Mapping) or "data" not in entry:
        raise ConfigError(
            f"train_data '{name}': expected a source or a mapping {{data: FILE, task: ..., columns: ..., query_prefix: "
            f"...}}, got {entry!r}"
        )
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(
            f"train_data '{name}': unknown key(s) {', '.join(map(str, unknown))}{closest_hint(str(unknown[0]), SOURCE_KEYS)}. "
            f"Keys: {', '.join(SOURCE_KEYS)}"
        )
    return TrainSource(
        name, str(entry["data"]), entry.get("task", task), entry.get("columns", columns),
        entry.get("query_prefix"), entry.get("document_prefix"),
    )


def _names(sources: Sequence[str]) -> list[str]:
    """A name per listed source: its file name without extensions, made unique with ``_<position>``."""
    stems = [Path(source.rstrip("/")).name.split(".")[0] or f"data{i}" for i, source in enumerate(sources)]
    return [stem if stems.count(stem) == 1 else f"{stem}_{i}" for i, stem in enumerate(stems)]


class DatasetMix(Dataset):
    """Named datasets as one index space: index ``offsets[k] + i`` is row ``i`` of dataset ``k``.

    Items are ``(k, row)``. ``__getitems__`` reads a batch of indices (all of one dataset, as
    :class:`SingleDatasetBatches` yields them) in one read.
    """

    def __init__(self, names: Sequence[str], datasets: Sequence, tasks: Sequence[EmbedTask]):
        self.names, self.datasets, self.tasks = list(names), list(datasets), list(tasks)
        self.sizes = [len(dataset) for dataset in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset k, row i)`` of a global index."""
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return k, index - self.offsets[k]

    def __getitem__(self, index: int) -> tuple[int, dict]:
        k, i = self.locate(index)
        return k, self.datasets[k][i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[int, dict]]:
        k, _ = self.locate(indices[0])
        rows = [index - self.offsets[k] for index in indices]
        if min(rows) < 0 or max(rows) >= self.sizes[k]:
            raise ValueError(f"a batch mixes datasets: indices {list(indices)[:8]} ...")
        return [(k, row) for row in self.datasets[k].__getitems__(rows)]


class SingleDatasetBatches(Sampler):
    """Batch sampler over a :class:`DatasetMix`: per global step, ``world_size`` batches of one dataset (module
    docstring). Set ``epoch`` before iterating (:class:`SamplerEpoch` does)."""

    def __init__(
        self,
        sizes: Sequence[int],
        per_device_batch_size: int,
        world_size: int,
        *,
        sampling: str = "proportional",
        seed: int = 0,
        drop_last: bool = False,
    ):
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}; got {sampling!r}")
        self.sizes, self.per_device, self.world_size = list(sizes), per_device_batch_size, world_size
        self.sampling, self.seed, self.drop_last = sampling, seed, drop_last
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.epoch = 0

    def global_batches(self, k: int) -> int:
        """Global batches dataset ``k`` gives per epoch."""
        size = self.per_device * self.world_size
        full, rest = divmod(self.sizes[k], size)
        return full + int(rest >= self.world_size and not self.drop_last)

    def schedule(self, epoch: int) -> list[int]:
        """The dataset drawn at each global step of ``epoch`` (the same list on every process)."""
        counts = [self.global_batches(k) for k in range(len(self.sizes))]
        if self.sampling == "round_robin":
            order, left = [], list(counts)
            while any(left):
                for k in range(len(left)):
                    if left[k]:
                        order.append(k)
                        left[k] -= 1
            return order
        order = np.repeat(np.arange(len(counts)), counts)
        return np.random.default_rng([self.seed, epoch, 1]).permutation(order).tolist()

    def steps(self, epoch: int) -> list[tuple[int, list[list[int]]]]:
        """``(dataset k, [batch of rank 0, ..., batch of rank W-1])`` per global step of ``epoch``, global indices."""
        size = self.per_device * self.world_size
        chunks = {}
        for k in range(len(self.sizes)):
            rows = (
                np.random.default_rng([self.seed, epoch, 0, k]).permutation(self.sizes[k]) + self.offsets[k]
            )
            chunks[k] = iter(
                [rows[start : start + size] for start in range(0, self.global_batches(k) * size, size)]
            )
        return [
            (k, [part.tolist() for part in np.array_split(next(chunks[k]), self.world_size)])
            for k in self.schedule(epoch)
        ]

    def __iter__(self):
        for _, batches in self.steps(self.epoch):
            yield from batches

    def __len__(self) -> int:
        return sum(self.global_batches(k) for k in range(len(self.sizes))) * self.world_size

    def shares(self) -> list[float]:
        """Share of the global steps of an epoch each dataset gets."""
        counts = [self.global_batches(k) for k in range(len(self.sizes))]
        return [count / max(sum(counts), 1) for count in counts]


class SamplerEpoch(TrainerCallback):
    """Sets ``sampler.epoch`` at every epoch start (resumed ones included) from Trainer's progress.

    ``state.epoch`` is ``epochs done + share of this epoch done`` (e.g. 1.5 after a resume in the middle of the
    second epoch, exactly 1.0 at its start), so its floor is the epoch about to run.
    """

    def __init__(self, sampler: SingleDatasetBatches):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.epoch = math.floor((state.epoch or 0) + 1e-9)


@dataclass
class MixCollator:
    """``[(k, row), ...]`` (one dataset ``k``) -> that dataset's collated batch plus ``dataset``: ``()`` int64 ``k``.

    ``main`` is the collator of the recipe's task: its ``max_length`` and prefixes are the run's (evaluation,
    export), as in a single-dataset run; ``names`` name ``collators`` (the export records each one's prefixes). Batches of every dataset are cut by one chunker, the run's
    (:meth:`chunker`, :meth:`chunks`): the cut depends only on ``mini_batch_size`` and the tokenizer, which every
    dataset's collator shares with ``main``.
    """

    collators: Sequence[ContrastiveCollator]
    main: ContrastiveCollator
    names: Sequence[str] = ()

    def chunker(self) -> LengthSortedChunker | None:
        return self.main.chunker()

    def chunks(self, batch: dict, chunker: LengthSortedChunker | None = None) -> list[dict]:
        return self.main.chunks(batch, chunker)

    @property
    def max_length(self) -> int:
        return self.main.max_length

    @property
    def query_prefix(self) -> str:
        return self.main.query_prefix

    @property
    def document_prefix(self) -> str:
        return self.main.document_prefix

    def __call__(self, items: Sequence[tuple[int, dict]]) -> dict:
        k = items[0][0]
        if any(other != k for other, _ in items):
            raise ValueError(f"a batch mixes datasets {sorted({other for other, _ in items})}")
        batch = self.collators[k]([row for _, row in items])
        batch["dataset"] = torch.tensor(k)
        return batch


def mix_dataloader(mix: DatasetMix, sampler: SingleDatasetBatches, collator: MixCollator, args) -> DataLoader:
    """The training DataLoader of a multi-dataset run (before ``accelerator.prepare``); worker settings from
    ``args`` (TrainingArguments)."""
    return DataLoader(
        mix,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
    )


class DatasetLosses:
    """Per-dataset mean of the global loss over a logging window: ``loss/<name>`` for each dataset drawn."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.sums, self.counts = [0.0] * len(names), [0] * len(names)

    def add(self, k: int, value: float) -> None:
        self.sums[k] += value
        self.counts[k] += 1

    def pop(self) -> dict[str, float]:
        """The window's means, then a new window."""
        means = {f"loss/{self.names[k]}": self.sums[k] / n for k, n in enumerate(self.counts) if n}
        self.sums, self.counts = [0.0] * len(self.names), [0] * len(self.names)
        return means
