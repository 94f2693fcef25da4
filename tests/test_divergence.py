"""A run whose loss becomes inf / NaN stops at that step with exit 4 and a message naming the step and the loss;
the checkpoints written before it stay intact and nothing is exported (no adapter/, no merged/, no completion)."""

from __future__ import annotations

import hashlib
import re
from importlib import import_module
from pathlib import Path

import pytest
from multiproc import run_multiprocess
from test_embed_train import FAST, data_files
from test_run_lock import seq_classify_argv, sft_classify_argv

from lorasmith.process import run_main
from lorasmith.run_folder import MARKER_NAME, RUN_RECORD_NAME

pytestmark = pytest.mark.slow

DIVERGE = ["--learning_rate", "1e6", "--max_steps", "30", "--save_strategy", "steps", "--save_steps", "1",
           "--save_total_limit", "100", "--warmup_steps", "1", "--logging_steps", "1",
           "--load_best_model_at_end", "false", "--disable_tqdm", "true"]  # fmt: skip


def embed_argv(model_dir, data, out):
    return ["--model_name_or_path", str(model_dir), "--task", "pairs", "--train_data", data["pairs"],
            "--output_dir", str(out), "--use_peft", "true", *FAST, "--eval_strategy", "no"]  # fmt: skip


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("entrypoint", "model", "argv"),
    [("embed", "tiny_bert_dir", embed_argv), ("seq_classify", "tiny_bert_dir", seq_classify_argv),
     ("sft_classify", "tiny_llama_dir", sft_classify_argv)],  # fmt: skip
)
def test_a_diverging_run_stops_at_the_first_non_finite_loss(entrypoint, model, argv, request, tmp_path, capsys):
    out = tmp_path / "out"
    args = [*argv(request.getfixturevalue(model), data_files(tmp_path), out), *DIVERGE]
    assert run_main(import_module(f"train.{entrypoint}").main, args) == 4
    error = capsys.readouterr().err
    found = re.search(r"training diverged at step (\d+) \(epoch [\d.]+\): (the loss was|a trainable weight reached)", error)
    assert found, error
    step = int(found.group(1))
    assert step >= 2 and "learning_rate (the recipe's: 1e+06)" in error
    checkpoints = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*"))
    assert [s for s, _ in checkpoints] == list(range(1, step))  # every step before it, not the diverged one
    last = checkpoints[-1][1]
    assert (last / MARKER_NAME).is_file() and f"checkpoint-{step - 1}" in error
    assert not (out / "adapter").exists() and not (out / "merged").exists() and not (out / RUN_RECORD_NAME).exists()
    before = checksums(last)
    assert run_main(import_module(f"train.{entrypoint}").main, args) == 4  # resumes from it and diverges again
    assert checksums(last) == before  # untouched by the re-run


def test_a_nan_loss_on_one_of_two_processes_stops_both_at_that_step(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    args = ["tests/scripts/nan_loss_on_one_rank.py", *embed_argv(tiny_bert_dir, data_files(tmp_path), out),
            "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "1e-3"]  # fmt: skip
    result = run_multiprocess(args, env={"NAN_FROM_STEP": "3", "NAN_RANK": "1"}, expect_success=False, timeout=300)
    assert result.returncode != 0
    assert "training diverged at step 3 (epoch" in result.stderr and "the loss was inf or NaN" in result.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all((out / name / MARKER_NAME).is_file() for name in ("checkpoint-1", "checkpoint-2"))
    assert not (out / "merged").exists() and not (out / "adapter").exists()
