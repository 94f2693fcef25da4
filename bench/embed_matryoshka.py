"""Matryoshka: STS-B test Spearman and SciFact test NDCG@10 at 384 / 256 / 128 / 64 dimensions, each trained with
and without ``matryoshka_dims: [384, 256, 128, 64]`` (target: the 64-d model loses < 2 points vs its full width).

    python bench/embed_matryoshka.py --output-dir DIR [--data-root ../shared/data] [--epochs 1] [--only stsb|scifact] [--reuse]
        [--flags "--use_peft false --full_finetune true --learning_rate 2e-5"] [--mined [N]] [--weights 1 1 1 2]
        [--refine STEPS [--refine-objective training_loss]]

STS-B: ``configs/embed/sts_cosent.yaml`` (MiniLM + LoRA, CoSENT) on the release's ``sts-train.csv``, no evaluation
during training, scored on ``sts-test.csv``. SciFact: the pairs run of ``bench/embed_scifact.py`` (in-batch
negatives, train queries minus its held-out share), or with ``--mined [N]`` its mined run (triplets from
``train.mine``, N hard negatives per pair, default 1). Every truncated score is the first d dimensions re-normalised
(``Embedder(truncate_dim=d)``, as ``eval.* --truncate-dim d``). Prints one table: rows = dataset x training, columns =
width, plus the loss of 64-d vs full. ``--flags`` adds train.embed flags to every run of both datasets (e.g. full
fine-tuning, ``--matryoshka_rotation after``); ``--weights`` sets the Matryoshka weights of the runs with it,
``--refine`` gives them a Matryoshka rotation fitted after training and refined for that many steps
(``matryoshka_rotation: {fit: after, refine: {steps: N}}``, overriding a rotation of ``--flags``) and
``--refine-objective`` its objective (the runs' folders are named after both, so ``--reuse`` never mixes refined and
unrefined runs). Exits 0 with a note when a data folder is absent.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import embed_scifact  # noqa: E402

from eval.report import format_table  # noqa: E402
from eval.retrieval import run_retrieval  # noqa: E402
from eval.sts import evaluate_sts  # noqa: E402
from lorasmith.encoder import Embedder, truncate  # noqa: E402

DIMS = (384, 256, 128, 64)
MATRYOSHKA = ["--matryoshka_dims", *map(str, DIMS)]


def stsb_rows(
    data: Path, out: Path, epochs: float, reuse: bool, flags: list[str], matryoshka: list[str]
) -> list[list]:
    rows = []
    for label, extra in (("without", []), ("with", matryoshka)):
        run = out / f"stsb_{label}{run_suffix(extra)}"
        if not (reuse and embed_scifact.finished_run(run)):
            command = [sys.executable, "-m", "train.embed", "--config", "configs/embed/sts_cosent.yaml",
                       "--train_data", str(data / "sts-train.csv"), "--eval_data", "", "--output_dir", str(run),
                       "--overwrite_output_dir", "true", "--num_train_epochs", str(epochs), "--report_to", "none",
                       "--disable_tqdm", "true", "--seed", "42", *flags, *extra]  # fmt: skip
            subprocess.run(command, cwd=REPO, env=embed_scifact.ENV, check=True)
        scores = [
            evaluate_sts(
                Embedder.load(str(run), show_progress=False, truncate_dim=d), str(data / "sts-test.csv")
            )["spearman"]
            for d in DIMS
        ]
        rows.append([f"STS-B Spearman, {label} matryoshka_dims", *scores, scores[-1] - scores[0]])
    return rows


def rotation_flags(steps: int, objective: str | None) -> list[str]:
    """``--matryoshka_rotation`` refining the rotation fitted after training for ``steps`` (none when 0)."""
    if not steps:
        return []
    refine = f"steps: {steps}" + (f", objective: {objective}" if objective else "")
    return ["--matryoshka_rotation", f"{{fit: after, refine: {{{refine}}}}}"]


def run_suffix(extra: list[str]) -> str:
    """``_refine600`` for a run refined 600 steps (``_refine600_training_loss`` on the training loss), else empty:
    its folder name."""
    if "--matryoshka_rotation" not in extra:
        return ""
    refine = yaml.safe_load(extra[extra.index("--matryoshka_rotation") + 1])["refine"]
    return f"_refine{refine['steps']}" + (f"_{refine['objective']}" if "objective" in refine else "")


class TruncatedView:
    """``embedder`` (full width) seen as ``Embedder(truncate_dim=dim)``: each text list is encoded once and every
    width is its first ``dim`` columns re-normalised (equal, since normalising is scale-free), so the 5,183 SciFact
    documents are embedded once per model, not once per width."""

    def __init__(self, embedder: Embedder):
        self.embedder, self.cache, self.dim = embedder, {}, None
        self.query_prefix, self.document_prefix = embedder.query_prefix, embedder.document_prefix
        self.normalize, self.device = embedder.normalize, embedder.device

    def encode(self, texts, batch_size: int = 64, prefix: str = ""):
        key = (tuple(texts), prefix)
        if key not in self.cache:
            self.cache[key] = self.embedder.encode(texts, batch_size=batch_size, prefix=prefix)
        return truncate(self.cache[key], self.dim, self.normalize)


def scifact_rows(
    data: Path, out: Path, epochs: float, reuse: bool, flags: list[str], matryoshka: list[str], mined: int = 0
) -> list[list]:
    files = embed_scifact.prepare(data, out / "scifact_data")
    if mined:
        mined_file = out / "scifact_data" / f"mined{mined}.jsonl"
        task, train_file = "triplets", embed_scifact.mine(files, mined_file, num_negatives=mined, reuse=reuse)
    else:
        task, train_file = "pairs", files["pairs"]
    kind = f"triplets{mined}" if mined else task
    rows = []
    for label, extra in (("without", []), ("with", matryoshka)):
        folder = out / f"scifact_{kind}_{label}{run_suffix(extra)}"
        run = embed_scifact.train(folder, task, train_file, epochs, *flags, *extra, reuse=reuse)
        view = TruncatedView(Embedder.load(str(run), show_progress=False))
        scores = []
        for dim in DIMS:
            view.dim = dim
            scores.append(run_retrieval(view, files["test"], ks=(10, 100), batch_size=64)["ndcg@10"])
        rows.append([f"SciFact ({kind}) NDCG@10, {label} matryoshka_dims", *scores, scores[-1] - scores[0]])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--flags", default="", help="train.embed flags added to every run (one quoted string)")
    parser.add_argument("--only", choices=("stsb", "scifact"), help="run one of the two datasets")
    parser.add_argument(
        "--mined",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="SciFact trains on triplets with N mined hard negatives per pair (default 1) instead of pairs; with "
        "N > 1 add --flags '--gradient_cache true' (3 negatives at batch 32 x 256 tokens need it on 24 GiB)",
    )
    parser.add_argument(
        "--weights",
        nargs=len(DIMS),
        metavar="W",
        help="matryoshka_weights of the runs with matryoshka_dims, one per width (default all 1)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="refine steps of a Matryoshka rotation fitted after training, for the runs with matryoshka_dims, e.g. 600",
    )
    parser.add_argument(
        "--refine-objective",
        choices=("neighbours", "training_loss"),
        help="objective of the refined rotation (default: train.embed's, neighbours)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the mined file and the trained runs already finished in --output-dir",
    )
    args = parser.parse_args()
    matryoshka = MATRYOSHKA + (["--matryoshka_weights", *args.weights] if args.weights else [])
    matryoshka += rotation_flags(args.refine, args.refine_objective)
    rows = []
    stsb, scifact = args.data_root / "stsb" / "raw", args.data_root / "scifact"
    scifact_build = functools.partial(scifact_rows, mined=args.mined)
    for name, folder, build in (("stsb", stsb, stsb_rows), ("scifact", scifact, scifact_build)):
        if args.only not in (None, name):
            continue
        if not folder.is_dir():
            print(f"note: {folder} not found; {name} skipped")
            continue
        rows += build(folder, args.output_dir, args.epochs, args.reuse, shlex.split(args.flags), matryoshka)
    if rows:
        print(format_table(["training / metric", *(f"{d}-d" for d in DIMS), "64-d minus 384-d"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
