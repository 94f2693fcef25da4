"""``slurm/launch.slurm`` under a real SLURM: a one-node ``slurmctld`` + ``slurmd`` (and a private ``munged``) on
localhost, started here in a temporary folder and torn down at the end.

A 2-process CPU run (``cpu_ddp``) of ``train.embed`` on a tiny BERT is submitted with ``sbatch``, preempted after its
first checkpoint with ``scancel --signal=USR1 --batch`` (exactly what ``#SBATCH --signal=B:USR1@300`` delivers before
the time limit), and must checkpoint, requeue itself, resume from that checkpoint in its next run and finish with the
same per-step losses as an uninterrupted job.

Skipped where the daemons are not installed (Debian: ``apt-get install slurm-wlm munge``) or cannot start, the
reason carrying the daemons' last log lines; with ``LORASMITH_REQUIRE_SLURM=1`` (CI, which installs them) that
is a failure instead. What the daemons need in a container without
systemd or cgroups is in ``slurm_conf`` below (``proctrack/linuxproc``, ``task/none``, ``slurmd -N localhost``,
munge's socket in a world-executable folder, a short ``cred_expire`` so a requeued job restarts at once).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lorasmith.run_folder import MARKER_NAME

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo")
# 48 pairs / 8 per step = 6 steps an epoch, ~18 steps/s on 2 cores: USR1 right after checkpoint-10 lands seconds
# before the end
MAX_STEPS, SAVE_STEPS = 120, 10
JOB_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, munge_socket: Path) -> str:
    cpus = min(2, os.cpu_count() or 1)
    return f"""\
ClusterName=lorasmith-test
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
# munge on a private socket; cred_expire also delays a requeued job's restart (default 120 s)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
# no cgroups or systemd needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=30
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=500 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env.update(
            SLURM_CONF=str(root / "slurm.conf"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}",  # the job runs this venv's accelerate
            PYTHON=sys.executable,
            HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        )  # fmt: skip

    def start(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen([name, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(args, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def job(self, job_id: str) -> dict[str, str]:
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted((self.root / "log").glob("*")) if p.is_file())  # fmt: skip

    def stop(self) -> None:
        if shutil.which("scancel"):
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        for proc in reversed(self.procs):  # slurmd, slurmctld, munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def unavailable(reason: str):
    """Skip, or fail where the machine promises SLURM (``LORASMITH_REQUIRE_SLURM=1``: CI installs it)."""
    if os.environ.get("LORASMITH_REQUIRE_SLURM") == "1":
        pytest.fail(f"LORASMITH_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    missing = [name for name in PROGRAMS if not shutil.which(name)]
    if missing:
        unavailable(f"no SLURM here ({', '.join(missing)} not installed; Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        unavailable("a private slurmd must run as root (SlurmUser=root)")
    root = Path(tempfile.mkdtemp(prefix="lorasmith-slurm-"))
    root.chmod(0o755)  # munged wants every folder above its socket executable by all
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir()
    (root / "run").chmod(0o755)
    (root / "key").mkdir(mode=0o700)
    key = root / "key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "run" / "munge.sock"
    (root / "slurm.conf").write_text(slurm_conf(root, munge_socket))

    cluster = Cluster(root)
    try:
        cluster.start(
            "munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
            f"--log-file={root}/log/munged.log", f"--pid-file={root}/run/munged.pid", f"--seed-file={root}/key/seed",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not munge_socket.exists():
            if time.monotonic() > deadline or cluster.procs[0].poll() is not None:
                unavailable(f"munged did not start:\n{cluster.logs()}")
            time.sleep(0.2)
        cluster.start("slurmctld", "-D", "-i")  # -i: ignore state from an earlier run
        cluster.start("slurmd", "-D", "-N", "localhost")  # the node's name is localhost whatever the hostname
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], env=cluster.env,
                                   capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
            if state == "idle":
                break
            dead = [p.args[0] for p in cluster.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                unavailable(f"SLURM did not come up (node {state or '?'}, exited: {dead}):\n{cluster.logs()}")
            time.sleep(0.5)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def write_recipe(folder: Path, model_dir: Path) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""\
task: pairs
train_data: {REPO}/data_utils/samples/pairs.jsonl
model_name_or_path: {model_dir}
max_length: 32
use_peft: true
lora_r: 4
lora_alpha: 8
lora_dropout: 0.0
lora_target_modules: [query, value]
max_steps: {MAX_STEPS}
per_device_train_batch_size: 4
learning_rate: 5.0e-3
warmup_steps: 0
logging_steps: 1
save_strategy: steps
save_steps: {SAVE_STEPS}
save_total_limit: 2
eval_strategy: "no"
report_to: none
seed: 0
disable_tqdm: true
""")
    return recipe


def submit(cluster: Cluster, recipe: Path, output_dir: Path, log: Path) -> str:
    """sbatch the launcher for 2 CPU processes on the node; returns the job id."""
    env = {**cluster.env, "LORASMITH_GPUS_PER_NODE": "2", "MASTER_PORT": str(free_port())}
    result = subprocess.run(
        ["sbatch", "--parsable", "--gres=none", f"--output={log}", "slurm/launch.slurm",
         "embed", str(recipe), "cpu_ddp", "--output_dir", str(output_dir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def wait_for(what: str, condition, cluster: Cluster, log: Path, timeout: float = JOB_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-4000:] if log.exists() else "(no job log)"
            raise AssertionError(f"timed out waiting for {what}\n--- job log\n{text}\n{cluster.logs()}")
        time.sleep(0.1)
    return value


def finished(cluster: Cluster, job_id: str) -> dict[str, str] | None:
    job = cluster.job(job_id)
    return job if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") else None


def step_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_usr1_preemption_requeues_and_the_job_resumes_with_the_same_losses(cluster, tiny_bert_dir, tmp_path):
    recipe = write_recipe(tmp_path, tiny_bert_dir)
    baseline_dir, preempted_dir = tmp_path / "baseline", tmp_path / "preempted"
    baseline_log, preempted_log = tmp_path / "baseline.out", tmp_path / "preempted.out"

    baseline = submit(cluster, recipe, baseline_dir, baseline_log)
    job = wait_for("the uninterrupted job", lambda: finished(cluster, baseline), cluster, baseline_log)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), baseline_log.read_text()

    preempted = submit(cluster, recipe, preempted_dir, preempted_log)
    wait_for("a first complete checkpoint", lambda: list(preempted_dir.glob(f"checkpoint-*/{MARKER_NAME}")),
             cluster, preempted_log)  # fmt: skip
    cluster.run("scancel", "--signal=USR1", "--batch", preempted)  # what --signal=B:USR1@300 sends
    job = wait_for("the requeued job to finish", lambda: finished(cluster, preempted), cluster, preempted_log)
    log = preempted_log.read_text()
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), log

    assert f"lorasmith: job {preempted} restart 0" in log and f"lorasmith: job {preempted} restart 1" in log
    assert f"requeueing job {preempted}" in log
    saved = re.findall(r"lorasmith: got SIGUSR1; saving checkpoint-(\d+)", log)
    assert len(saved) == 1 and 0 < int(saved[0]) < MAX_STEPS, log  # stopped mid-run at a step boundary
    resumed = re.findall(rf"lorasmith: resuming from {re.escape(str(preempted_dir))}/checkpoint-(\d+)", log)
    assert resumed == saved, log  # the requeued run continued from the checkpoint the signal saved
    assert len(step_losses(baseline_dir)) == MAX_STEPS
    assert step_losses(preempted_dir) == step_losses(baseline_dir)


def test_the_default_log_folder_exists():
    """SLURM creates no folder for ``--output``: a missing one fails the job before the script runs, with no log."""
    header = (REPO / "slurm" / "launch.slurm").read_text()
    output = re.search(r"^#SBATCH --output=(\S+)", header, re.M).group(1)
    assert (REPO / output).parent.is_dir(), output
