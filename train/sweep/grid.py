"""Grid expansion: ``[(keys, values), ...]`` -> one dict of recipe values per cell.

Invariants: the order is the cartesian product in file order (the first axis varies slowest), so cell
indices are stable for an unchanged sweep file; paired keys (``train_data,eval_data``) take their values
together; two cells with identical values are an error (they would share a folder).
"""

from __future__ import annotations

import itertools
import json

from lorasmith.errors import ConfigError


def expand_grid(axes: list) -> list[dict]:
    """Every combination of the grid's axes, as {recipe key: value} in axis order."""
    cells, seen = [], set()
    for combination in itertools.product(*(values for _, values in axes)):
        values: dict = {}
        for (keys, _), value in zip(axes, combination, strict=True):
            values.update({keys[0]: value} if len(keys) == 1 else dict(zip(keys, value, strict=True)))
        identity = json.dumps(values, sort_keys=True, default=str)
        if identity in seen:
            raise ConfigError(f"the grid lists the same cell twice: {identity}")
        seen.add(identity)
        cells.append(values)
    return cells
