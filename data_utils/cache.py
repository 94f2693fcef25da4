"""Validated datasets cached as Arrow files, so a data file is parsed and validated once per machine.

``load`` keys a file (or glob) source by: each file's resolved path, size and modification time (ns),
the task, the column map, every option, the data_utils code and the datasets/pyarrow versions. A key
names one Arrow IPC stream file under ``cache_dir()``; it is written (temp name + rename) only after
validation passed, so an invalid file is re-read, and reports its error, every time. A cache hit is
memory-mapped (``Dataset.from_file``): it costs neither parsing nor RAM.

In a distributed run (``torch.distributed`` initialised), ``first_on_each_machine`` lets the local main
process of each machine parse and fill the cache while the others wait at a barrier, then read it.

``LORASMITH_DATA_CACHE``: the cache folder (default ``<datasets cache>/lorasmith``), or ``off`` to
parse every time. Entries are never evicted: delete the folder to reclaim the space.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import datasets
import pyarrow as pa
from datasets import Dataset

from lorasmith.errors import LorasmithError

CACHE_ENV = "LORASMITH_DATA_CACHE"
_OFF = ("0", "off", "false", "no", "none")


def cache_dir() -> Path | None:
    """Where validated datasets are cached; ``None`` when ``$LORASMITH_DATA_CACHE`` turns caching off."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    return Path(value).expanduser() if value else Path(datasets.config.HF_DATASETS_CACHE) / "lorasmith"


def cache_key(source, task: str | None, columns: dict, options: dict) -> str | None:
    """The key of a file or glob ``source`` read with these arguments; ``None`` for any other source
    (folders and hub datasets are Arrow already, in-memory datasets have no file to key on)."""
    if isinstance(source, (Dataset, datasets.DatasetDict)):
        return None
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        files = [path]
    elif not path.exists() and glob.has_magic(text):
        files = sorted(Path(match) for match in glob.glob(os.path.expanduser(text), recursive=True))
        files = [file for file in files if file.is_file()]
    else:
        return None
    if not files:
        return None
    stats = [(str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns) for file in files]
    identity = [stats, task, columns, sorted(options.items()), _code_digest(), datasets.__version__, pa.__version__]
    return hashlib.sha256(json.dumps(identity, default=repr).encode()).hexdigest()


@cache
def _code_digest() -> str:
    """Digest of data_utils' source: a change to how files are read or validated invalidates the cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached(key: str | None, build: Callable[[], Dataset]) -> Dataset:
    """The dataset cached under ``key``, else ``build()`` stored there and returned memory-mapped.

    A cache folder that cannot be written leaves the result in memory (the data is still valid)."""
    folder = cache_dir()
    if key is None or folder is None:
        return build()
    path = folder / f"{key}.arrow"
    if path.is_file():
        return Dataset.from_file(str(path))
    dataset = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        os.close(handle)
        try:
            table = dataset.data.table  # its schema metadata carries the features (ClassLabel names ...)
            with pa.OSFile(temp, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)
    except OSError:
        return dataset
    return Dataset.from_file(str(path))


def first_on_each_machine(build: Callable[[], Dataset]) -> Dataset:
    """``build()`` on the local main process first, then on the others (which then hit the cache).

    Collective in a distributed run: every process must call it. A user error on the main process is
    raised there after the barrier; the others then build themselves and raise the same error."""
    distributed = sys.modules.get("torch.distributed")  # never imported here: only a running launch has it
    if distributed is None or not (distributed.is_available() and distributed.is_initialized()):
        return build()
    from accelerate import PartialState

    state = PartialState()
    if not state.is_local_main_process:
        state.wait_for_everyone()
        return build()
    try:
        dataset = build()
    except LorasmithError:
        state.wait_for_everyone()
        raise
    state.wait_for_everyone()
    return dataset
