"""data_utils.load vs datasets.load_dataset on large files: seconds and peak memory, one table.

    python bench/data_load.py                 # 1M one-line sentences (.txt), 300k triplets (.csv)
    python bench/data_load.py --rows 10000    # a seconds-long smoke run (both files 10k rows)

Each measurement runs in a fresh Python process (imports done before the clock starts; peak RSS from
``resource.getrusage``, imports included, as a user's process would see it). Rows:
- ``datasets``: ``load_dataset("text" | "csv")`` into an empty cache folder (parse + write Arrow).
- ``data_utils cold``: ``data_utils.load(task=...)`` with an empty cache (parse, validate, write Arrow).
- ``data_utils cached``: the same call again, as every other process of a launch makes it (memory-mapped).
Targets: cold time and peak memory <= 1.5 x datasets'.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_MEASURE = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
kind, path, cache = sys.argv[1:4]
import datasets
import data_utils
start = time.perf_counter()
if kind == "datasets":
    builder = "text" if path.endswith(".txt") else "csv"
    dataset = datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache)
else:
    os.environ["LORASMITH_DATA_CACHE"] = cache
    task = "sentences" if path.endswith(".txt") else "triplets"
    dataset = data_utils.load(path, task=task)
seconds = time.perf_counter() - start
print(json.dumps({{"rows": dataset.num_rows, "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

WORDS = (
    "the a cat dog model data train query answer river city music paper light small large quick "
    "slow green blue north south learn read write find open close bright dark early late"
).split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."


def write_files(folder: Path, sentences: int, triplets: int) -> dict[str, Path]:
    """One sentence per line (.txt) and an anchor,positive,negative .csv, seeded."""
    rng = random.Random(0)
    text = folder / "sentences.txt"
    with text.open("w", encoding="utf-8") as handle:
        for _ in range(sentences):
            handle.write(sentence(rng) + "\n")
    table = folder / "triplets.csv"
    with table.open("w", encoding="utf-8") as handle:
        handle.write("anchor,positive,negative\n")
        for _ in range(triplets):
            handle.write(f"{sentence(rng)},{sentence(rng)},{sentence(rng)}\n")
    return {"sentences": text, "triplets": table}


def measure(kind: str, path: Path, cache: Path) -> dict:
    script = _MEASURE.format(root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script, kind, str(path), str(cache)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} on {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of both files (default 1M sentences, 300k triplets)")
    args = parser.parse_args()
    sentences, triplets = (args.rows, args.rows) if args.rows else (1_000_000, 300_000)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        files = write_files(folder, sentences, triplets)
        lines = [
            f"{'file':<10} {'loader':<18} {'rows':>9} {'seconds':>8} {'peak MB':>8} {'time x':>7} {'mem x':>6}"
        ]
        for name, path in files.items():
            base = measure("datasets", path, folder / f"hf-{name}")
            ours = folder / f"ours-{name}"
            results = [
                ("datasets", base),
                ("data_utils cold", measure("data_utils", path, ours)),
                ("data_utils cached", measure("data_utils", path, ours)),
            ]
            for loader, result in results:
                lines.append(
                    f"{name:<10} {loader:<18} {result['rows']:>9} {result['seconds']:>8.2f} "
                    f"{result['peak_mb']:>8.0f} {result['seconds'] / base['seconds']:>7.2f} "
                    f"{result['peak_mb'] / base['peak_mb']:>6.2f}"
                )
        print("\n".join(lines))


if __name__ == "__main__":
    main()
