"""Every entrypoint under every CPU launch, on tiny models: 2-process DDP (world size asserted), DeepSpeed ZeRO-2
over gloo, and an interruption (SIGTERM to ``accelerate launch``) that costs nothing: the re-run of the same command
resumes and its per-step losses equal an uninterrupted run's (the ZeRO-2 run, which logs DDP's losses bit for bit).
GPU-only launches (FSDP, QLoRA over NCCL) are in ``test_launch_gpu.py`` and skip without CUDA."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import multiproc
import pytest
import yaml
from multiproc import CPU_DDP_CONFIG, REPO, free_port, run_multiprocess

from data_utils import sample_path
from lorasmith.run_folder import MARKER_NAME

pytestmark = pytest.mark.slow

ZERO2_CONFIG = REPO / "accelerate_configs" / "zero2.yaml"
SKIP_DEEPSPEED = os.environ.get("LORASMITH_SKIP_DEEPSPEED") == "1"
MAX_STEPS = 24
SAVE_STEPS = 2
COMMON = {
    "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "max_length": 32, "max_steps": MAX_STEPS,
    "per_device_train_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "save_strategy": "steps",
    "save_steps": SAVE_STEPS, "save_total_limit": 2, "eval_strategy": "no", "load_best_model_at_end": False,
    "report_to": "none", "disable_tqdm": True, "seed": 0, "warmup_steps": 0, "export_merged": False,
}  # fmt: skip


def embed_recipe(tiny_bert_dir, tiny_llama_dir) -> dict:
    return {"model_name_or_path": str(tiny_bert_dir), "task": "pairs", "train_data": str(sample_path("pairs.jsonl")),
            "lora_target_modules": ["query", "value"]}  # fmt: skip


def seq_classify_recipe(tiny_bert_dir, tiny_llama_dir) -> dict:
    return {"model_name_or_path": str(tiny_bert_dir), "train_data": str(sample_path("labeled_sentiment.csv")),
            "lora_target_modules": ["query", "value"]}  # fmt: skip


def sft_classify_recipe(tiny_bert_dir, tiny_llama_dir) -> dict:
    return {"model_name_or_path": str(tiny_llama_dir), "train_data": str(sample_path("labeled_sentiment.csv")),
            "labels": {"negative": "bad", "positive": "good"}, "template": "Review: {text}\nSentiment?",
            "lora_target_modules": ["q_proj", "v_proj"], "gradient_checkpointing": False, "max_length": 96}  # fmt: skip


RECIPES = {"embed": embed_recipe, "sft_classify": sft_classify_recipe, "seq_classify": seq_classify_recipe}


@pytest.fixture(scope="module", params=list(RECIPES))
def entrypoint(request, tiny_bert_dir, tiny_llama_dir, tmp_path_factory):
    """(module name, recipe path) for one entrypoint on a tiny model; output_dir is set per run."""
    recipe = {**COMMON, **RECIPES[request.param](tiny_bert_dir, tiny_llama_dir)}
    path = tmp_path_factory.mktemp(f"recipe-{request.param}") / f"{request.param}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return request.param, path


@pytest.fixture(scope="module")
def uninterrupted(entrypoint, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(output_dir, result) of one uninterrupted 2-process run of the recipe: under DeepSpeed ZeRO-2 over gloo, or
    plain DDP with LORASMITH_SKIP_DEEPSPEED=1.

    ZeRO-2 logs plain DDP's per-step losses bit for bit on all three entrypoints (measured on these recipes), so
    this one run is both the ZeRO-2 check and the reference that an interrupted DDP run must reproduce.
    """
    output_dir = tmp_path_factory.mktemp(f"uninterrupted-{entrypoint[0]}") / "run"
    config_file = CPU_DDP_CONFIG if SKIP_DEEPSPEED else ZERO2_CONFIG
    return output_dir, run_multiprocess(launch_args(entrypoint, output_dir), config_file=config_file)


def launch_args(entrypoint, output_dir: Path) -> list[str]:
    name, recipe = entrypoint
    return ["-m", f"train.{name}", "--config", str(recipe), "--output_dir", str(output_dir)]


def step_losses(output_dir: Path, step: int = MAX_STEPS) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def interrupt_after_first_checkpoint(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``accelerate launch`` (2 processes) and SIGTERM the launcher once checkpoint-2 is complete."""
    output_dir = Path(args[args.index("--output_dir") + 1])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_DDP_CONFIG),
               "--main_process_port", str(free_port()), *args]  # fmt: skip
    env = multiproc.test_env(LORASMITH_EXPECT_WORLD_SIZE="2")
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as launcher:
        while not (output_dir / f"checkpoint-{SAVE_STEPS}" / MARKER_NAME).exists() and launcher.poll() is None:
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=300)
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)


def test_sigterm_checkpoints_on_every_rank_and_the_rerun_resumes_exactly(entrypoint, uninterrupted, tmp_path):
    interrupted = tmp_path / "interrupted"
    stopped = interrupt_after_first_checkpoint(launch_args(entrypoint, interrupted))
    assert "lorasmith: got SIGTERM" in stopped.stdout, stopped.stderr[-3000:]
    assert "world size" in stopped.stdout and ": 2 (ddp, cpu)" in stopped.stdout
    (stop_step, stop_folder), *_ = sorted(
        ((int(p.name.split("-")[1]), p) for p in interrupted.glob("checkpoint-*")), reverse=True
    )
    assert SAVE_STEPS < stop_step < MAX_STEPS, "the signal landed after training ended: make steps slower"
    assert json.loads((stop_folder / MARKER_NAME).read_text())["world_size"] == 2
    assert not (interrupted / "adapter").exists()  # no final export after a signal

    resumed = run_multiprocess(launch_args(entrypoint, interrupted))
    assert f"resuming from {stop_folder}" in resumed.stdout
    assert (interrupted / "adapter").is_dir()
    baseline, _ = uninterrupted
    assert step_losses(interrupted) == step_losses(baseline)


@pytest.mark.skipif(SKIP_DEEPSPEED, reason="LORASMITH_SKIP_DEEPSPEED=1")
def test_deepspeed_zero2_on_cpu(uninterrupted):
    output_dir, result = uninterrupted
    assert ": 2 (deepspeed-zero2, cpu)" in result.stdout
    assert (output_dir / "adapter").is_dir()
    losses = step_losses(output_dir)
    assert len(losses) == MAX_STEPS and all(loss == loss for loss in losses)  # trained, no NaN


def test_dry_run_prints_the_launch_plan(entrypoint, capsys):
    from importlib import import_module

    from lorasmith.process import run_main

    name, recipe = entrypoint
    main = import_module(f"train.{name}").main
    assert run_main(main, ["--config", str(recipe), "--dry_run", "true", "--global_batch_size", "8"]) == 0
    plan = capsys.readouterr().out
    rows = ["world size", "per-device batch", "gradient accumulation", "global batch", "precision", "quantization",
            "trainable parameters"]  # fmt: skip
    if name == "embed":
        rows.append("negatives per anchor")
    missing = [row for row in rows if row not in plan]
    assert not missing, f"plan lacks {missing}:\n{plan}"
    assert re.search(r"global batch\s+: 8\n", plan) and re.search(r"gradient accumulation\s+: 2\n", plan)  # 4 x 2 x 1


def test_bf16_on_this_cpu_is_refused_before_any_model_loads(entrypoint, capsys):
    from importlib import import_module

    from lorasmith.process import run_main
    from train.common.launch import cpu_supports_bf16

    if cpu_supports_bf16():
        pytest.skip("this CPU has native bf16")
    name, recipe = entrypoint
    assert run_main(import_module(f"train.{name}").main, ["--config", str(recipe), "--bf16", "true"]) == 2
    assert "bf16 requested on a CPU without bf16 support" in capsys.readouterr().err
