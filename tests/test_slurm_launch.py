"""``slurm/launch.slurm`` without SLURM: fake ``scontrol`` / ``srun`` / ``accelerate`` executables on PATH and the
variables SLURM sets for a 2-node x 4-GPU job. Checks both nodes' commands (``--dry-run``), that each srun task
expands ``$SLURM_PROCID`` itself (the known trap: expanded once in the batch shell it is 0 everywhere), and the
USR1 -> checkpoint -> ``scontrol requeue`` path."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm" / "launch.slurm"
RECIPE = "configs/embed/quickstart.yaml"

FAKE_SCONTROL = """#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu07\\ngpu08\\n'; else echo "scontrol $*" >> "$FAKE_LOG"; fi
"""
# srun: one background task per node with its own SLURM_PROCID; forwards USR1 to the tasks like the real srun.
FAKE_SRUN = """#!/bin/bash
while [[ "$1" != bash ]]; do echo "srun-option $1" >> "$FAKE_LOG"; shift; done
shift 2
pids=()
for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do SLURM_PROCID=$i SLURM_NODEID=$i bash -c "$1" & pids+=($!); done
trap 'kill -USR1 "${pids[@]}"' USR1
status=0
for pid in "${pids[@]}"; do
    while true; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
    [[ $rc == 0 ]] || status=$rc
done
exit $status
"""
# accelerate: records its machine rank and environment; with FAKE_TRAIN_SECONDS it "trains" until USR1.
FAKE_ACCELERATE = """#!/bin/bash
rank=$(echo "$@" | sed -E 's/.*--machine_rank ([^ ]+).*/\\1/')
echo "task machine_rank=$rank world=$LORASMITH_EXPECT_WORLD_SIZE signals=$PET_SIGNALS_TO_HANDLE" >> "$FAKE_LOG"
trap 'echo "rank $rank checkpointed on USR1" >> "$FAKE_LOG"; exit 0' USR1
for ((s = 0; s < ${FAKE_TRAIN_SECONDS:-0} * 10; s++)); do sleep 0.1; done
"""


@pytest.fixture
def slurm_env(tmp_path) -> dict[str, str]:
    """Environment of a 2-node x 4-GPU allocation with fake SLURM binaries first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN, "accelerate": FAKE_ACCELERATE}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        PYTHON=sys.executable,
        FAKE_LOG=str(tmp_path / "calls.log"),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_GPUS_ON_NODE="4",
        SLURM_SUBMIT_DIR=str(REPO),
    )
    return env


def dry_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def node_commands(stdout: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^node (\d+) \(\w+\): (.*)$", stdout, re.M)}


def test_dry_run_prints_each_nodes_command_for_2_nodes_x_4_gpus(slurm_env):
    result = dry_run(slurm_env, "embed", RECIPE, "zero2", "--max_steps", "100")
    assert result.returncode == 0, result.stderr
    assert "nodes: 2 x 4 GPUs = world size 8" in result.stdout
    assert "rendezvous: c10d at gpu07:29500" in result.stdout
    commands = node_commands(result.stdout)
    assert sorted(commands) == [0, 1]
    for rank, command in commands.items():
        assert f"--machine_rank {rank} " in command
        assert "--num_machines 2 --num_processes 8 " in command
        assert "--main_process_ip gpu07 --main_process_port 29500 --rdzv_backend c10d" in command
        assert "--config_file accelerate_configs/zero2.yaml" in command
        assert command.endswith(f"-m train.embed --config {RECIPE} --max_steps 100")
        for variable in ("LORASMITH_EXPECT_WORLD_SIZE=8", "NCCL_ASYNC_ERROR_HANDLING=1", "SIGUSR1"):
            assert variable in command
    srun_line = next(line for line in result.stdout.splitlines() if line.startswith("srun: "))
    assert "--kill-on-bad-exit=1 --nodes=2 --ntasks=2 --ntasks-per-node=1" in srun_line
    assert "--machine_rank $SLURM_PROCID" in srun_line  # left for each task's shell


def test_global_batch_is_split_for_the_allocation_and_indivisible_ones_fail_early(slurm_env):
    result = dry_run(
        slurm_env, "seq_classify", RECIPE, "ddp", "--global_batch_size", "256", "--per_device_train_batch_size", "8"
    )
    assert "global batch 256 = 8 per device x 4 accumulation x 8 processes" in result.stdout
    bad = dry_run(slurm_env, "seq_classify", RECIPE, "ddp", "--global_batch_size", "60", "--per_device_train_batch_size=8")
    assert bad.returncode != 0
    assert "global_batch_size 60 is not a multiple of per_device_train_batch_size 8 x world size 8" in bad.stderr


def test_configs_that_cannot_run_the_allocation_are_refused(slurm_env, tmp_path):
    single = dry_run(slurm_env, "embed", RECIPE, "single_gpu")
    assert single.returncode != 0 and "runs one process but the allocation has 8 GPUs" in single.stderr
    same_network = dry_run(slurm_env, "embed", RECIPE, "cpu_ddp")
    assert same_network.returncode != 0 and "same_network" in same_network.stderr


def test_every_srun_task_gets_its_own_machine_rank(slurm_env):
    result = subprocess.run(
        ["bash", str(SCRIPT), "sft_classify", RECIPE, "ddp"], cwd=REPO, env=slurm_env, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = Path(slurm_env["FAKE_LOG"]).read_text()
    ranks = sorted(re.findall(r"task machine_rank=(\S+) world=8 signals=\S*SIGUSR1", calls))
    assert ranks == ["0", "1"]
    assert "srun-option --kill-on-bad-exit=1" in calls
    assert "requeue" not in calls


def test_usr1_before_the_time_limit_checkpoints_every_rank_and_requeues(slurm_env):
    env = {**slurm_env, "FAKE_TRAIN_SECONDS": "60"}
    job = subprocess.Popen(["bash", str(SCRIPT), "embed", RECIPE, "ddp"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    log = Path(env["FAKE_LOG"])
    deadline = time.monotonic() + 30
    while log.read_text().count("task machine_rank") < 2 if log.exists() else True:
        assert time.monotonic() < deadline, "the fake tasks never started"
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` delivers to the batch shell
    output, _ = job.communicate(timeout=30)

    assert job.returncode == 0, output
    calls = log.read_text()
    assert sorted(re.findall(r"rank (\d) checkpointed on USR1", calls)) == ["0", "1"]
    assert "scontrol requeue 4242" in calls
    assert "requeueing job 4242" in output


def test_the_batch_script_asks_slurm_for_the_signal_and_requeue():
    header = SCRIPT.read_text()
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+", header, re.M)
    assert re.search(r"^#SBATCH --requeue", header, re.M)
    assert re.search(r"^#SBATCH --ntasks-per-node=1", header, re.M)


def test_gpus_per_node_understands_slurm_formats():
    sys.path.insert(0, str(REPO / "slurm"))
    from plan_launch import gpus_per_node

    assert gpus_per_node({"SLURM_GPUS_ON_NODE": "4"}) == 4
    assert gpus_per_node({"SLURM_GPUS_PER_NODE": "a100:2"}) == 2
    assert gpus_per_node({"CUDA_VISIBLE_DEVICES": "0,1,2"}) == 3
    assert gpus_per_node({"LORASMITH_GPUS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "4"}) == 8
