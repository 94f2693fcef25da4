"""Interruptions cost nothing, measured on ``tests/scripts/tiny_trainer.py`` (the entrypoints' lifecycle around a
transformers Trainer on a tiny LoRA Llama with dropout and shuffled data):

- ``kill -9`` after a checkpoint, then the same command: per-step losses equal the uninterrupted run's, and every
  rank trains on exactly the samples it would have (none twice, none skipped) — on 2 DDP processes and on
  DeepSpeed ZeRO-2 over gloo, both against one uninterrupted DDP run;
- SIGTERM to a plain ``python`` run: a checkpoint at the next step, exit code 0, and the re-run finishes the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import multiproc
import pytest
from multiproc import REPO, run_multiprocess

from lorasmith.run_folder import MARKER_NAME

pytestmark = pytest.mark.slow

SCRIPT = "tests/scripts/tiny_trainer.py"
MAX_STEPS, SAVE_STEPS, KILL_AT = 6, 2, 5


def tiny_args(model_dir, output_dir, *extra: str) -> list[str]:
    return [SCRIPT, "--model_name_or_path", str(model_dir), "--use_peft", "true", "--lora_dropout", "0.3",
            "--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS), "--logging_steps", "1",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--report_to", "none",
            "--disable_tqdm", "true", "--output_dir", str(output_dir), *extra]  # fmt: skip


def step_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def trained_samples(log_prefix: Path, rank: int, steps: int) -> list[list[int]]:
    """Sample ids per micro-batch that rank trained on (the loader prefetches one more batch: dropped)."""
    lines = Path(f"{log_prefix}.rank{rank}").read_text().splitlines()
    return [[int(i) for i in line.split()] for line in lines[:steps]]


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(output_dir, samples log prefix) of one uninterrupted 2-process DDP run: the reference for every launch
    config below (ZeRO-2 over gloo logs DDP's losses and trains on DDP's samples, bit for bit)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    run_multiprocess(tiny_args(tiny_llama_dir, folder / "run"), env={"TINY_SAMPLES_LOG": str(folder / "samples")})
    return folder / "run", folder / "samples"


@pytest.mark.parametrize("config", ["cpu_ddp", "zero2"])
def test_kill_9_then_rerun_repeats_the_uninterrupted_run_exactly(tiny_llama_dir, uninterrupted, tmp_path, config):
    if config == "zero2" and os.environ.get("LORASMITH_SKIP_DEEPSPEED") == "1":
        pytest.skip("LORASMITH_SKIP_DEEPSPEED=1")
    config_file = REPO / "accelerate_configs" / f"{config}.yaml"
    baseline, baseline_log = uninterrupted
    logs = {name: tmp_path / f"samples-{name}" for name in ("killed", "resumed")}
    interrupted = tmp_path / "interrupted"

    killed = run_multiprocess(
        tiny_args(tiny_llama_dir, interrupted), config_file=config_file, expect_success=False,
        env={"TINY_SAMPLES_LOG": str(logs["killed"]), "TINY_KILL_AT_STEP": str(KILL_AT)},
    )  # fmt: skip
    assert killed.returncode != 0
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = run_multiprocess(tiny_args(tiny_llama_dir, interrupted), config_file=config_file,
                               env={"TINY_SAMPLES_LOG": str(logs["resumed"])})  # fmt: skip

    assert f"resuming from {interrupted / 'checkpoint-4'}" in resumed.stdout
    assert step_losses(interrupted) == step_losses(baseline)
    assert len(step_losses(baseline)) == MAX_STEPS
    for rank in (0, 1):
        expected = trained_samples(baseline_log, rank, MAX_STEPS)
        after_resume = trained_samples(logs["resumed"], rank, MAX_STEPS - 4)
        assert trained_samples(logs["killed"], rank, 4) + after_resume == expected
    epoch = [i for rank in (0, 1) for batch in trained_samples(baseline_log, rank, MAX_STEPS) for i in batch]
    assert len(epoch) == len(set(epoch)) == MAX_STEPS * 2 * 2  # 6 steps x 2 ranks x 2 per device, all distinct


def test_sigterm_saves_a_checkpoint_exits_0_and_the_rerun_finishes(tiny_llama_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = tiny_args(tiny_llama_dir, output_dir, "--max_steps", "40", "--save_steps", "100")
    command = [sys.executable, *args]
    env = multiproc.test_env(TINY_STEP_SLEEP="0.2")
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        progress = output_dir / "progress"
        while not (progress.exists() and int(progress.read_text() or 0) >= 2) and run.poll() is None:
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=300)

    assert run.returncode == 0, stderr[-3000:]
    (checkpoint,) = output_dir.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 2 <= step < 40
    assert json.loads((checkpoint / MARKER_NAME).read_text())["step"] == step
    assert f"got SIGTERM; saving checkpoint-{step}" in stdout
    assert not (output_dir / "metrics.json").exists()  # stopped before the end-of-run outputs

    rerun = [sys.executable, *tiny_args(tiny_llama_dir, output_dir, "--max_steps", str(step + 2), "--save_steps", "100")]
    finished = subprocess.run(rerun, cwd=REPO, env=multiproc.test_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming from {checkpoint}" in finished.stdout
    assert json.loads((output_dir / "metrics.json").read_text())["steps"] == step + 2


KILL_EMBED = """
import os, signal, sys
from transformers import TrainerCallback
from lorasmith.process import run_main
from train.common import run
from train.embed import main

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ.get("KILL_AT_STEP", -1)):
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = run.lifecycle_callbacks
run.lifecycle_callbacks = lambda: [*callbacks(), KillAt()]
sys.exit(run_main(main, sys.argv[1:]))
"""


def test_kill_9_then_rerun_is_exact_with_the_gradient_cache(tiny_bert_dir, tmp_path):
    """train.embed with ``gradient_cache`` and dropout on (SimCSE views): the resumed run logs the same losses."""
    from test_embed_train import sentences

    (tmp_path / "sentences.txt").write_text("\n".join(sentences(48)) + "\n")
    output_dir = {name: tmp_path / name for name in ("baseline", "interrupted")}

    def train(name: str, kill_at: int = -1) -> subprocess.CompletedProcess:
        argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "simcse_unsup", "--train_data",
                str(tmp_path / "sentences.txt"), "--use_peft", "true", "--dropout", "0.1", "--gradient_cache", "true",
                "--mini_batch_size", "3", "--per_device_train_batch_size", "4", "--max_steps", str(MAX_STEPS),
                "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS), "--logging_steps", "1",
                "--eval_strategy", "no", "--load_best_model_at_end", "false", "--export_merged", "false",
                "--learning_rate", "1e-2", "--report_to", "none", "--output_dir", str(output_dir[name])]  # fmt: skip
        return subprocess.run([sys.executable, "-c", KILL_EMBED, *argv], cwd=REPO, capture_output=True, text=True,
                              env=multiproc.test_env(KILL_AT_STEP=str(kill_at)), timeout=600)  # fmt: skip

    assert train("baseline").returncode == 0
    assert train("interrupted", kill_at=KILL_AT).returncode == -signal.SIGKILL
    assert sorted(p.name for p in output_dir["interrupted"].glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = train("interrupted")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {output_dir['interrupted'] / 'checkpoint-4'}" in resumed.stdout
    assert len(step_losses(output_dir["baseline"])) == MAX_STEPS
    assert step_losses(output_dir["interrupted"]) == step_losses(output_dir["baseline"])
