"""One run per output folder: a second run into a busy folder exits 2 naming the holder, before any model loads;
a holder killed with SIGKILL frees the folder; under ``accelerate launch`` every rank stops together."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import multiproc
import pytest
import yaml
from multiproc import REPO, run_multiprocess
from test_embed_train import FAST, data_files
from transformers import PreTrainedModel

from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from lorasmith.run_folder import LOCK_NAME
from lorasmith.run_lock import lock_run_folder, release_all

HOLD = "import sys, time; from lorasmith.run_lock import lock_run_folder; lock_run_folder(sys.argv[1]); print('locked', flush=True); time.sleep(600)"  # noqa: E501


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of ``tmp_path / 'out'`` until the test kills it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], cwd=REPO, env=multiproc.test_env(),
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait(timeout=30)
    process.stdout.close()


def test_a_busy_folder_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path, holder):
    out = tmp_path / "out"
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    with pytest.raises(ConfigError, match=rf"in use by another run \(pid {holder.pid} on host {socket.gethostname()}"):
        lock_run_folder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    try:
        lock_run_folder(out)  # the kernel dropped the dead holder's lock: nothing stale
        lock_run_folder(out)  # and a process that holds it may ask again
        assert json.loads((out / LOCK_NAME).read_text())["pid"] != holder.pid
    finally:
        release_all()
    subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(out)], cwd=REPO,
                   env=multiproc.test_env(), check=True, timeout=120)  # fmt: skip  released: another process takes it


def never_loaded(*args, **kwargs):
    raise AssertionError("a model was loaded although the output folder is busy")


def embed_argv(model_dir, data, out):
    return ["--model_name_or_path", str(model_dir), "--task", "pairs", "--train_data", data["pairs"],
            "--output_dir", str(out), "--use_peft", "true", *FAST]  # fmt: skip


def seq_classify_argv(model_dir, data, out):
    from data_utils import sample_path

    return ["--model_name_or_path", str(model_dir), "--train_data", str(sample_path("labeled_sentiment.csv")),
            "--output_dir", str(out), "--use_peft", "true", "--max_steps", "2", "--report_to", "none"]  # fmt: skip


def sft_classify_argv(model_dir, data, out):
    from data_utils import sample_path

    return ["--model_name_or_path", str(model_dir), "--train_data", str(sample_path("labeled_sentiment.csv")),
            "--labels", "negative,positive", "--output_dir", str(out), "--use_peft", "true",
            "--max_steps", "2", "--report_to", "none", "--max_length", "64"]  # fmt: skip


@pytest.mark.parametrize(
    ("entrypoint", "model", "argv"),
    [("embed", "tiny_bert_dir", embed_argv), ("seq_classify", "tiny_bert_dir", seq_classify_argv),
     ("sft_classify", "tiny_llama_dir", sft_classify_argv)],  # fmt: skip
)
def test_every_trainer_refuses_a_busy_output_dir_before_any_model_loads(
    entrypoint, model, argv, request, tmp_path, holder, monkeypatch, capsys
):
    from importlib import import_module

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(never_loaded))
    main = import_module(f"train.{entrypoint}").main
    args = argv(request.getfixturevalue(model), data_files(tmp_path), tmp_path / "out")
    assert run_main(main, args) == 2
    assert f"in use by another run (pid {holder.pid}" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_into_a_busy_folder_both_stop_with_the_message(tiny_bert_dir, tmp_path, holder):
    args = ["-m", "train.embed", *embed_argv(tiny_bert_dir, data_files(tmp_path), tmp_path / "out")]
    result = run_multiprocess(args, expect_success=False, timeout=300)
    assert result.returncode != 0
    assert f"in use by another run (pid {holder.pid}" in result.stderr
    assert not (tmp_path / "out" / "recipe.yaml").exists()


def test_a_sweep_into_a_busy_folder_is_refused(tiny_bert_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "pairs", "train_data": "x.jsonl", "model_name_or_path": str(tiny_bert_dir)}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"entrypoint": "embed", "recipe": str(recipe), "output_dir": str(tmp_path / "out"),
                                     "grid": {"learning_rate": [1e-3, 2e-3]}}))  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], cwd=REPO, env=multiproc.test_env(),
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout.readline().strip() == "locked"
        result = subprocess.run([sys.executable, "-m", "train.sweep", "--config", str(sweep)], cwd=REPO,
                                env=multiproc.test_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()
    assert result.returncode == 2, result.stderr
    assert f"in use by another run (pid {process.pid}" in result.stderr
    assert not (Path(tmp_path) / "out" / "cells").exists()
