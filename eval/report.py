"""How eval CLIs show results: an aligned text table for people, one JSON object for programs.

Contract of every eval CLI: the human-readable output comes first, the LAST stdout line is the whole
result as one JSON object (``json.loads(stdout.splitlines()[-1])``), and ``--output FILE`` writes the
same object, indented, to FILE.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def format_value(value, digits: int = 2) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence], digits: int = 2) -> str:
    """Columns padded to their widest cell; first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[format_value(v, digits) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def write_json(path: str | Path, value) -> Path:
    """Write ``value`` as indented UTF-8 JSON (NaN becomes null), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(value), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def emit(result: dict, text: str, output: str | Path | None = None) -> None:
    """Print ``text``, then ``result`` as one JSON line (the last stdout line); also write it to ``output``."""
    if output:
        write_json(output, result)
    print(text)
    print(json.dumps(_json_ready(result), ensure_ascii=False), flush=True)


def _json_ready(value):
    """NaN/inf -> None, recursively, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value
