"""train.sweep on the tiny BERT: grids, resume after a kill, failures, SLURM arrays, log-only cells, Optuna search.

Each sweep runs as ``python -m train.sweep`` in a subprocess (each cell is itself a subprocess of train.embed),
on scored pairs written to ``tmp_path``; cells train 2 steps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import OBJECTS, SUBJECTS, VERBS

from lorasmith.errors import ConfigError
from train.sweep.grid import expand_grid
from train.sweep.naming import cell_name
from train.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


def sentences(n: int, offset: int = 0) -> list[str]:
    return [
        f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[(i // 3) % len(VERBS)]} {OBJECTS[(i + offset) % len(OBJECTS)]}."
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sweep-data") / "sts.jsonl"
    rows = [{"sentence1": a, "sentence2": b, "score": (i % 6) / 5}
            for i, (a, b) in enumerate(zip(sentences(12), sentences(12, offset=5), strict=True))]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def base_recipe(tiny_bert_dir, sts_file, tmp_path_factory) -> str:
    recipe = {
        "task": "scored_pairs", "train_data": sts_file, "eval_data": sts_file, "model_name_or_path": str(tiny_bert_dir),
        "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["query", "value"], "max_length": 32,
        "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 5e-3, "warmup_steps": 0, "seed": 0,
        "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "logging_steps": 1,
        "report_to": "none", "disable_tqdm": True, "export_merged": False,
    }  # fmt: skip
    path = tmp_path_factory.mktemp("sweep-recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def write_sweep(folder: Path, recipe: str, **fields) -> Path:
    spec = {"entrypoint": "embed", "recipe": recipe, "output_dir": str(folder / "sweep"), **fields}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train.sweep", "--config", str(path), *extra]


def run_sweep(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(path, *extra), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )


def read_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }  # fmt: skip


# --- units: no training -----------------------------------------------------------------------------------


def test_cell_names_are_stable_safe_and_hashed_when_lossy():
    assert cell_name({"learning_rate": 0.001, "lora_r": 8}) == "lr=0.001_lora_r=8"
    loss = {"cosent": {"weight": 1, "temperature": 0.05}, "angle": {"weight": 1}}
    name = cell_name({"loss": loss})
    assert name.startswith("loss=cosent+angle-") and len(name) == len("loss=cosent+angle-") + 8
    assert cell_name({"loss": loss}) == name  # stable
    assert (
        cell_name({"loss": {**loss, "angle": {"weight": 1, "temperature": 2.0}}}) != name
    )  # same label, other values
    assert cell_name({"lr": "0.001"}) != cell_name({"lr": 0.001})
    long = cell_name({"train_data": "/data/" + "x" * 300 + ".csv"})
    assert len(long) <= 96 and all(c.isalnum() or c in "._+=-" for c in long)


def test_paired_grid_keys_move_together_and_duplicates_are_refused(tmp_path, base_recipe):
    grid = {"loss": ["cosent", "angle"], "train_data,eval_data": [["a", "b"], ["c", "d"]]}
    spec = load_sweep(write_sweep(tmp_path, base_recipe, grid=grid))
    cells = expand_grid(spec.grid)
    assert len(cells) == 4 and cells[1] == {"loss": "cosent", "train_data": "c", "eval_data": "d"}
    with pytest.raises(ConfigError, match="same cell twice"):
        expand_grid(load_sweep(write_sweep(tmp_path, base_recipe, grid={"lora_r": [4, 4]})).grid)
    with pytest.raises(ConfigError, match="one per key"):
        load_sweep(write_sweep(tmp_path, base_recipe, grid={"train_data,eval_data": [["a"]]}))
    with pytest.raises(ConfigError, match="did you mean 'grid'"):
        load_sweep(write_sweep(tmp_path, base_recipe, gird={"lora_r": [4]}))


def test_slurm_dry_run_prints_a_job_array_of_every_cell_and_the_task_runs_its_cell(tmp_path, base_recipe):
    sweep = write_sweep(tmp_path, base_recipe, grid={"lora_r": [2, 4, 8]}, accelerate_config="ddp",
                        slurm={"sbatch_args": ["--gres=gpu:1"], "max_parallel": 2})  # fmt: skip
    result = run_sweep(sweep, "--slurm", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    array = next(line for line in lines if line.startswith("sbatch --parsable --array="))
    assert "--array=0-2%2" in array and "--gres=gpu:1" in array
    assert array.split()[-4:-2] == ["slurm/launch.slurm", "embed"] and array.endswith(".cells ddp")
    tasks = [line for line in lines if line.strip().startswith("task ")]
    assert len(tasks) == 3
    for task, r in zip(tasks, (2, 4, 8), strict=True):
        assert f"cells/lora_r={r}/cell.yaml ddp" in task and "bash slurm/launch.slurm embed" in task
    assert any("--dependency=afterany:" in line and "--collect" in line for line in lines)
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing

    # What array task 1 runs: launch.slurm picks line 2 of the .cells file (fake scontrol, launcher dry run).
    recipes = []
    for r in (2, 4):
        folder = tmp_path / f"cell{r}"
        folder.mkdir()
        (folder / "cell.yaml").write_text(yaml.safe_dump({"lora_r": r}))
        recipes.append(str(folder / "cell.yaml"))
    cells_file = tmp_path / "array.cells"
    cells_file.write_text("".join(f"{r}\n" for r in recipes))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho gpu07\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}", "PYTHON": sys.executable, "SLURM_ARRAY_TASK_ID": "1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_NODELIST": "gpu07", "LORASMITH_REPO": str(REPO)}  # fmt: skip
    task = subprocess.run(["bash", "slurm/launch.slurm", "--dry-run", "embed", str(cells_file), "ddp"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert task.returncode == 0, task.stderr
    assert f"--config {recipes[1]}" in task.stdout and recipes[0] not in task.stdout


# --- end to end on the tiny BERT ------------------------------------------------------------------------


def test_a_three_cell_grid_writes_three_rows_the_matrix_and_plots(tmp_path, base_recipe):
    sweep = write_sweep(tmp_path, base_recipe, grid={"lora_r": [2, 4, 8]})
    result = run_sweep(sweep)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[sweep] cell 2/3 lora_r=4 | done 1/3, failed 0 | ETA" in result.stdout
    out = tmp_path / "sweep"
    rows = read_rows(out)
    assert [(r["lora_r"], r["status"]) for r in rows] == [("2", "done"), ("4", "done"), ("8", "done")]
    assert all(float(r["train.train_loss"]) > 0 and r["after.spearman"] for r in rows)
    matrix, labels = np.load(out / "matrix.npy"), json.loads((out / "matrix_labels.json").read_text())
    assert matrix.shape == (3, len(labels["columns"])) and "after.spearman" in labels["columns"]
    assert labels["rows"] == ["lora_r=2", "lora_r=4", "lora_r=8"] and not np.isnan(matrix).any()
    assert (out / "heatmap.png").stat().st_size > 1000 and len(
        json.loads((out / "results.json").read_text())["rows"]
    ) == 3
    for r in (2, 4, 8):
        cell = out / "cells" / f"lora_r={r}"
        assert (cell / "sweep_done.json").is_file() and (cell / "adapter" / "adapter_config.json").is_file()
        assert (
            yaml.safe_load((cell / "recipe.yaml").read_text())["lora_r"] == r
        )  # the entrypoint's own recipe


def test_a_failing_cell_is_recorded_and_the_next_one_is_trained_and_scored_by_the_suite(
    tmp_path, base_recipe, sts_file
):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "sts", "kind": "sts", "data": sts_file}]}))
    grid = {"lora_target_modules": [["no_such_layer"], ["query"]]}
    result = run_sweep(write_sweep(tmp_path, base_recipe, grid=grid, suite=str(suite)))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = read_rows(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["failed", "done"]  # the sweep went on after the failure
    assert "no_such_layer" in rows[0]["error"] and rows[0]["train.train_loss"] == ""
    assert -100 <= float(rows[1]["suite.sts.spearman"]) <= 100  # eval.sts reports Spearman x 100
    matrix, labels = (
        np.load(tmp_path / "sweep" / "matrix.npy"),
        json.loads((tmp_path / "sweep" / "matrix_labels.json").read_text()),
    )
    assert labels["columns"] == ["sts (spearman)"] and matrix.shape == (2, 1)
    assert np.isnan(matrix[0, 0]) and matrix[1, 0] == pytest.approx(
        float(rows[1]["suite.sts.spearman"]), abs=5e-5
    )  # the suite's results.csv keeps 4 decimals
    assert "1 of 2 cells not done" in result.stdout


@pytest.mark.slow
def test_a_sweep_killed_during_cell_2_resumes_it_without_touching_cell_1(tmp_path, base_recipe):
    sweep = write_sweep(tmp_path, base_recipe, grid={"max_steps": [2, 120, 3]},
                        overrides={"save_strategy": "steps", "save_steps": 4, "save_total_limit": 3})  # fmt: skip
    out = tmp_path / "sweep" / "cells"
    process = subprocess.Popen(sweep_command(sweep), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((out / "max_steps=120").glob("checkpoint-*/lorasmith_checkpoint.json")):
        assert process.poll() is None and time.monotonic() < deadline, "cell 2 never saved a checkpoint"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its running cell, no chance to clean up
    process.wait()
    cell1 = snapshot(out / "max_steps=2")
    assert not (out / "max_steps=120" / "sweep_done.json").exists() and not (out / "max_steps=3").exists()

    result = run_sweep(sweep)
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(out / "max_steps=2") == cell1  # byte-identical, same mtimes: not retrained
    assert "lorasmith: resuming from" in (out / "max_steps=120" / "sweep.log").read_text()
    assert [r["status"] for r in read_rows(tmp_path / "sweep")] == ["done"] * 3


def test_log_only_cells_train_and_evaluate_but_leave_no_model_files(tmp_path, base_recipe):
    sweep = write_sweep(tmp_path, base_recipe, grid={"lora_r": [4]}, train_mode=False,
                        overrides={"save_strategy": "steps", "save_steps": 1})  # fmt: skip
    result = run_sweep(sweep)
    assert result.returncode == 0, result.stdout + result.stderr
    cell = tmp_path / "sweep" / "cells" / "lora_r=4"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] > 0 and "spearman" in metrics["after"]
    assert (
        not (cell / "adapter").exists()
        and not (cell / "merged").exists()
        and not list(cell.glob("checkpoint-*"))
    )
    assert not list(cell.rglob("*.safetensors")) and not list(cell.rglob("*.bin"))
    assert read_rows(tmp_path / "sweep")[0]["status"] == "done"


@pytest.mark.slow
def test_an_optuna_search_of_3_trials_writes_3_rows_and_a_rerun_does_not_redo_them(tmp_path, base_recipe):
    search = {"sampler": "random", "n_trials": 3, "metric": "train.train_loss", "direction": "minimize", "seed": 1,
              "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                        "lora_r": {"type": "categorical", "choices": [2, 4, 8]}}}  # fmt: skip
    sweep = write_sweep(tmp_path, base_recipe, search=search, save_model=False)
    result = run_sweep(sweep)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "sweep"
    rows = read_rows(out)
    assert len(rows) == 3 and [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["status"] == "done" and float(r["objective"]) == float(r["train.train_loss"]) for r in rows)
    assert "best: trial" in result.stdout
    before = snapshot(out / "cells")

    again = run_sweep(sweep)
    assert again.returncode == 0, again.stdout + again.stderr
    assert snapshot(out / "cells") == before and "| ETA" not in again.stdout  # no cell started
    assert len(read_rows(out)) == 3

    more = run_sweep(sweep, "--search.n_trials", "4")  # the study continues: one more trial only
    assert more.returncode == 0, more.stdout + more.stderr
    assert len(read_rows(out)) == 4 and more.stdout.count("| ETA") == 1
