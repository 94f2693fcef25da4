"""The logic of ``slurm/launch.slurm``: from SLURM's environment to one ``accelerate launch`` command per node.

    python slurm/plan_launch.py --dry-run --hostnames "gpu07 gpu08" embed configs/embed/quickstart.yaml ddp --max_steps 100

prints the launch plan and every node's exact command; without ``--dry-run`` it prints only the command
template that ``launch.slurm`` hands to ``srun`` (one task per node; each task's shell expands
``$SLURM_PROCID`` to its node's rank — expanding it in the batch shell would give 0 on every node).

Inputs (the batch script passes them; tests fake them):
- nodes: ``$SLURM_JOB_NUM_NODES`` (or ``$SLURM_NNODES``);
- GPUs per node: ``$LORASMITH_GPUS_PER_NODE``, else ``$SLURM_GPUS_ON_NODE``, else ``$SLURM_GPUS_PER_NODE`` ("a100:4" -> 4),
  else the devices in ``$CUDA_VISIBLE_DEVICES``, else 1;
- hostnames: ``--hostnames`` (the batch script passes ``scontrol show hostnames $SLURM_JOB_NODELIST``); the first is
  the rendezvous head (c10d on ``$MASTER_PORT``, default 29500).

The world size is exported as ``LORASMITH_EXPECT_WORLD_SIZE`` (every entrypoint refuses a launch that came up with
another size) and, when the recipe sets ``global_batch_size``, the gradient accumulation the entrypoints will derive
for that world size is printed (an indivisible combination fails here, before any GPU time is spent).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINTS = ("embed", "sft_classify", "seq_classify")
RANK_VARIABLE = "$SLURM_PROCID"  # expanded by each srun task's shell, never by the batch shell
DEFAULT_PORT = 29500
# torchrun forwards these to the workers (SIGUSR1: SLURM's warning before the time limit) and waits this long
# for them to save a checkpoint and exit before it kills them.
SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SHUTDOWN_TIMEOUT_S = 600


@dataclass
class LaunchPlan:
    """Everything ``launch.slurm`` needs; ``template`` contains the literal ``$SLURM_PROCID``."""

    nodes: int
    gpus_per_node: int
    hostnames: list[str]
    port: int
    env: dict[str, str]
    template: str
    batch_note: str

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_command(self, node_rank: int) -> str:
        """The command node ``node_rank``'s task runs once its shell expanded ``$SLURM_PROCID``."""
        return self.template.replace(RANK_VARIABLE, str(node_rank))


def gpus_per_node(environ: dict[str, str]) -> int:
    """GPUs each node contributes, from the variables listed in the module docstring."""
    for name in ("LORASMITH_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = environ.get(name, "").strip()
        if value:
            match = re.search(r"(\d+)\s*$", value.split(",")[0])  # "4", "a100:4", "gpu:a100:4"
            if match:
                return int(match.group(1))
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([d for d in visible.split(",") if d]) if visible else 1


def accelerate_config_path(name: str) -> str:
    """``zero2`` -> ``accelerate_configs/zero2.yaml``; an existing path stays as given."""
    if Path(name).suffix in (".yaml", ".yml", ".json"):
        return name
    return f"accelerate_configs/{name}.yaml"


def check_accelerate_config(path: str, nodes: int, world_size: int) -> None:
    """Refuse configs that cannot run this allocation (a missing file, one process for many GPUs, a lost endpoint)."""
    config_file = Path(path) if Path(path).is_absolute() else REPO / path
    if not config_file.is_file():
        raise SystemExit(f"error: accelerate config {path} not found (names: {', '.join(available_configs())})")
    config = yaml.safe_load(config_file.read_text()) or {}
    if world_size > 1 and config.get("distributed_type") == "NO":
        raise SystemExit(f"error: {path} runs one process but the allocation has {world_size} GPUs: use ddp, fsdp or zero*")
    if nodes > 1 and config.get("same_network"):
        raise SystemExit(
            f"error: {path} sets same_network: true, which makes accelerate drop the c10d rendezvous endpoint "
            "on multi-node launches; remove that line"
        )


def available_configs() -> list[str]:
    return sorted(p.stem for p in (REPO / "accelerate_configs").glob("*.yaml"))


def entrypoint_args(entrypoint: str) -> list[str]:
    """``embed`` -> ``-m train.embed``; a ``.py`` path runs as a script."""
    if entrypoint.endswith(".py"):
        return [entrypoint]
    if entrypoint not in ENTRYPOINTS:
        raise SystemExit(f"error: unknown entrypoint {entrypoint!r}; one of {', '.join(ENTRYPOINTS)} or a .py path")
    return ["-m", f"train.{entrypoint}"]


def recipe_values(recipe: str, overrides: list[str]) -> dict:
    """The recipe's keys with ``--key value`` / ``--key=value`` overrides applied (values parsed as YAML)."""
    values = {}
    if recipe and Path(recipe).is_file():
        loaded = yaml.safe_load(Path(recipe).read_text())
        values = loaded if isinstance(loaded, dict) else {}
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            if not value and i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
                value, i = overrides[i + 1], i + 1
            values[key] = yaml.safe_load(value) if value else True
        i += 1
    return values


def batch_note(values: dict, world_size: int) -> str:
    """How the global batch splits at this world size (the entrypoints derive the same at start-up)."""
    target, per_device = values.get("global_batch_size"), values.get("per_device_train_batch_size")
    if not target:
        return "global batch: per_device_train_batch_size x gradient_accumulation_steps x world size (no global_batch_size in the recipe)"
    if not per_device:
        return f"global batch {target}: gradient accumulation derived at start-up from the entrypoint's per-device batch"
    sys.path.insert(0, str(REPO))
    from train.common.batching import gradient_accumulation_for

    try:
        accumulation = gradient_accumulation_for(int(target), int(per_device), world_size)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return f"global batch {target} = {per_device} per device x {accumulation} accumulation x {world_size} processes"


def make_plan(
    entrypoint: str,
    recipe: str,
    accelerate_config: str,
    overrides: list[str],
    *,
    environ: dict[str, str],
    hostnames: list[str],
) -> LaunchPlan:
    """The launch for this allocation: c10d rendezvous on the first host, one launcher per node."""
    nodes = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or len(hostnames) or 1)
    if len(hostnames) < nodes:
        raise SystemExit(f"error: {nodes} nodes but only {len(hostnames)} hostnames ({' '.join(hostnames)})")
    per_node = gpus_per_node(environ)
    port = int(environ.get("MASTER_PORT") or DEFAULT_PORT)
    world_size = nodes * per_node
    env = {
        "LORASMITH_EXPECT_WORLD_SIZE": str(world_size),
        "NCCL_ASYNC_ERROR_HANDLING": "1",  # a rank that dies turns into an error on the others, not a hang
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # its name since torch 2.2
        "PET_SIGNALS_TO_HANDLE": SIGNALS_TO_HANDLE,
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S),
    }
    launch = [
        "accelerate", "launch",
        "--config_file", accelerate_config_path(accelerate_config),
        "--num_machines", str(nodes),
        "--num_processes", str(world_size),
        "--machine_rank", RANK_VARIABLE,
        "--main_process_ip", hostnames[0],
        "--main_process_port", str(port),
        "--rdzv_backend", "c10d",
        "--max_restarts", "0",
        *entrypoint_args(entrypoint),
        "--config", recipe,
        *overrides,
    ]
    check_accelerate_config(accelerate_config_path(accelerate_config), nodes, world_size)
    quoted = " ".join(arg if arg == RANK_VARIABLE else shlex.quote(arg) for arg in launch)
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    template = f"export {exports}; exec {quoted}"
    note = batch_note(recipe_values(recipe, overrides), world_size)
    return LaunchPlan(nodes, per_node, hostnames[:nodes], port, env, template, note)


def describe(plan: LaunchPlan) -> str:
    """The dry-run report: the topology, the batch split and each node's exact command."""
    lines = [
        f"nodes: {plan.nodes} x {plan.gpus_per_node} GPUs = world size {plan.world_size}",
        f"rendezvous: c10d at {plan.hostnames[0]}:{plan.port}",
        plan.batch_note,
        f"srun: srun --kill-on-bad-exit=1 --nodes={plan.nodes} --ntasks={plan.nodes} --ntasks-per-node=1 "
        f"bash -c {shlex.quote(plan.template)}",
    ]
    lines += [f"node {rank} ({host}): {plan.node_command(rank)}" for rank, host in enumerate(plan.hostnames)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="Print the plan and every node's command; run nothing.")
    parser.add_argument("--hostnames", default=None, help="Allocated hosts, head first (default: $LORASMITH_HOSTNAMES).")
    parser.add_argument("entrypoint", help=f"One of {', '.join(ENTRYPOINTS)}, or a .py script.")
    parser.add_argument("recipe", help="YAML recipe, e.g. configs/embed/quickstart.yaml.")
    parser.add_argument("accelerate_config", help="A name in accelerate_configs/ (ddp, zero2, ...) or a path.")
    args, overrides = parser.parse_known_args(argv)
    hostnames = (args.hostnames or os.environ.get("LORASMITH_HOSTNAMES", "")).split()
    if not hostnames:
        raise SystemExit("error: no hostnames: pass --hostnames \"$(scontrol show hostnames $SLURM_JOB_NODELIST)\"")
    plan = make_plan(
        args.entrypoint, args.recipe, args.accelerate_config, overrides, environ=dict(os.environ), hostnames=hostnames
    )
    print(describe(plan) if args.dry_run else plan.template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
