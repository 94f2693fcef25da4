"""Files lorasmith writes for the user (recipe.yaml, metrics.json, README.md, lorasmith.json, mined data):
complete or absent, and with the permissions the user's umask gives any new file.

``tempfile.mkstemp`` creates its file mode 0600 whatever the umask; a result renamed from it would stay
readable by its owner only. ``open_atomic`` sets the mode a plain ``open(path, "w")`` would
(0666 & ~umask) before the rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[TextIO]:
    """A UTF-8 text stream whose content replaces ``path`` in one rename when the block ends without an
    error (a reader never sees half a file; on an error ``path`` is untouched and the temp file removed).
    The parent folder is created; the file gets mode 0666 & ~umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through ``open_atomic``."""
    with open_atomic(path) as stream:
        stream.write(text)
