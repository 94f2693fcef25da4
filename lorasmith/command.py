"""The ``lorasmith`` command: ``lorasmith embed|sft-classify|seq-classify|mine|sweep|check-data|eval <name> ...``.

Each subcommand runs its module exactly as ``python -m <module>`` would (``runpy``, as ``__main__``), with the rest
of the command line, so it is the same program under ``accelerate launch -m lorasmith embed ...``, SLURM or a
plain shell; ``--help`` names it ``lorasmith <subcommand>``. Before that, the folder holding the entrypoint packages
(``lorasmith.project_files.app_root``) goes to the front of ``sys.path`` for this process only.
"""

from __future__ import annotations

import runpy
import sys
from importlib import metadata

from lorasmith import project_files

COMMANDS = {
    "embed": ("train.embed", "contrastive fine-tuning of embedding models"),
    "sft-classify": ("train.sft_classify", "prompt classification with TRL's SFTTrainer (LoRA / QLoRA)"),
    "seq-classify": ("train.seq_classify", "LoRA sequence-classification heads"),
    "mine": ("train.mine", "mine hard negatives into a triplets file"),
    "sweep": ("train.sweep", "grids and Optuna searches of runs, evaluated and tabulated"),
    "check-data": ("data_utils.check", "read and validate a data file before a long job"),
}
EVALUATIONS = {
    "retrieval": ("eval.retrieval", "recall / precision / NDCG / MRR @k"),
    "sts": ("eval.sts", "STS Spearman / Pearson"),
    "classify": ("eval.classify", "accuracy, P / R / F1, calibration of a trained classifier"),
    "probe": ("eval.probe", "SentEval-style linear probe of embeddings"),
    "matrix": ("eval.matrix", "models x datasets results matrix from a suite file"),
}


def usage() -> str:
    rows = [f"  {name:<14} {what}" for name, (_, what) in COMMANDS.items()]
    rows += [f"  eval {name:<9} {what}" for name, (_, what) in EVALUATIONS.items()]
    return "\n".join([
        "usage: lorasmith <command> [options]   (lorasmith <command> --help: its options)",
        "",
        "commands:",
        *rows,
        "  recipes        list the packaged recipes (--config NAME) and the accelerate configs",
        "",
        "Each command is the same program as python -m <module> in a checkout, e.g. lorasmith embed = python -m "
        "train.embed;\nunder accelerate: accelerate launch [--config_file ...] -m lorasmith embed --config quickstart",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by ``argv[0]`` (default ``sys.argv[1:]``); its exit code is the process's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"lorasmith {metadata.version('lorasmith')}")
        return 0
    if argv[0] == "recipes":
        print(project_files.describe_recipes())
        return 0
    name, rest = argv[0].replace("_", "-"), argv[1:]
    table = COMMANDS
    if name == "eval":
        if not rest or rest[0] not in EVALUATIONS:
            print(f"lorasmith eval needs one of: {', '.join(EVALUATIONS)}\n\n{usage()}", file=sys.stderr)
            return 2
        name, rest, table = f"eval {rest[0]}", rest[1:], {f"eval {rest[0]}": EVALUATIONS[rest[0]]}
    if name not in table:
        print(f"lorasmith: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    root = str(project_files.app_root())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    sys.argv = [f"lorasmith {name}", *rest]
    runpy.run_module(table[name][0], run_name="__main__", alter_sys=False)
    return 0
