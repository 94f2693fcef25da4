"""Read any supported data source into a validated ``datasets.Dataset`` for one of the ``SCHEMAS``.

    from data_utils import load, sample_path
    ds = load(sample_path("pairs.jsonl"), task="pairs")    # columns: anchor, positive

See ``data_utils.loader.load`` for sources and options, ``data_utils.schemas`` for the columns of
each task, and ``python -m data_utils.check`` to validate a file from the shell.
"""

import lorasmith  # noqa: F401  (first: lorasmith.console silences library noise before peft is imported)
from data_utils.labels import label_names_from_dataset
from data_utils.loader import load
from data_utils.samples import sample_path
from data_utils.schemas import SCHEMAS
from lorasmith.errors import ConfigError, DataError, LorasmithError

__all__ = [
    "SCHEMAS",
    "ConfigError",
    "DataError",
    "LorasmithError",
    "label_names_from_dataset",
    "load",
    "sample_path",
]
