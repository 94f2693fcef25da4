"""Evaluation work split across the processes of a launch (``accelerate launch`` / torchrun), or not at all.

Rank, device and main-process questions go to accelerate's ``PartialState`` directly; this module holds only
what it lacks: running a per-item computation on contiguous shards and gathering the results in input order.
"""

from __future__ import annotations

from collections.abc import Callable

from accelerate import PartialState
from accelerate.utils import gather_object


def split_and_gather(items: list, compute: Callable[[list], list]) -> list:
    """``compute(items)``, with the items split into contiguous shards across processes and gathered in order.

    ``compute(shard)`` must return one result per item of ``shard``. Every process must call this with the same
    ``items`` and gets the same list back, equal to the one-process ``compute(items)`` when ``compute`` treats
    items independently. Shards are padded to equal length with copies of the last item (so every process runs
    the same number of forward passes, which FSDP / ZeRO-3 need); each process's padding is dropped before its
    results are joined.
    """
    state = PartialState()
    if state.num_processes == 1 or not items:
        return compute(items)
    with state.split_between_processes(items, apply_padding=True) as shard:
        results = compute(shard)
    # split_between_processes gives process p  base + (p < extra)  items, then pads every shard to `width`
    base, extra = divmod(len(items), state.num_processes)
    width = base + (1 if extra else 0)
    gathered = gather_object(results)  # process by process, `width` results each
    return [
        result
        for process in range(state.num_processes)
        for result in gathered[process * width : process * width + base + (process < extra)]
    ]
