"""Small sample data files shipped with lorasmith (formats documented in README.md here)."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent


def sample_names() -> list[str]:
    """File names of every shipped sample (README and Python files excluded)."""
    return sorted(
        path.name
        for path in SAMPLES_DIR.iterdir()
        if path.is_file() and path.suffix not in (".py", ".md", ".pyc")
    )


def sample_path(name: str) -> Path:
    """Path of the shipped sample file ``name`` (e.g. ``"pairs.jsonl"``); ``FileNotFoundError`` listing
    the samples when there is none by that name."""
    path = SAMPLES_DIR / name
    if path.parent != SAMPLES_DIR or not path.is_file():
        raise FileNotFoundError(f"no sample named {name!r}; samples: {', '.join(sample_names())}")
    return path
