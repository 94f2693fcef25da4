"""Nothing lost, nothing silently wrong: re-running a finished run, output folders that are not
runs, exports cut short, Ctrl-C, and training that cannot learn.

The lifecycle cases run ``tests/scripts/tiny_trainer.py`` (the entrypoints' run sequence around a tiny LoRA
Llama) in this process; export and entrypoint cases use the tiny models of ``conftest.py``.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import multiproc
import pytest
import torch
from multiproc import REPO

from lorasmith import run_folder
from lorasmith.errors import ConfigError, DataError, OutputError
from lorasmith.process import run_main
from train.common import learnable, resume, run

TINY = REPO / "tests" / "scripts" / "tiny_trainer.py"


def tiny_module():
    spec = importlib.util.spec_from_file_location("tiny_trainer_for_safety", TINY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_args(model_dir, output_dir, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--use_peft", "true", "--max_steps", "4", "--save_steps", "2",
            "--logging_steps", "1", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
            "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(output_dir), *extra]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: (bytes, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Make any model load in the tiny trainer an error: what must happen before it is checked by the test."""
    module = tiny_module()

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(module, "load_model", refuse)
    return module


# --- 1. re-running a finished run --------------------------------------------------------------------------


def test_rerunning_a_finished_run_changes_nothing_and_exits_0(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_main(tiny_module().main, tiny_args(tiny_llama_dir, out)) == 0
    record = json.loads((out / run_folder.RUN_RECORD_NAME).read_text())
    assert (record["complete"], record["global_step"], record["continued_from"]) == (True, 4, [])
    before = snapshot(out)
    capsys.readouterr()

    module = tiny_module()
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert run_main(module.main, tiny_args(tiny_llama_dir, out)) == 0

    assert "already holds this recipe's finished run (step 4" in capsys.readouterr().out
    assert snapshot(out) == before  # bytes and mtimes


def test_raising_max_steps_continues_from_the_last_checkpoint_and_records_both(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(tiny_module().main, tiny_args(tiny_llama_dir, out)) == 0
    capsys.readouterr()
    assert run_main(tiny_module().main, tiny_args(tiny_llama_dir, out, "--max_steps", "6")) == 0

    printed = capsys.readouterr().out
    assert "finished at step 4, epoch" in printed and f"resuming from {out / 'checkpoint-4'}" in printed
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    record = json.loads((out / run_folder.RUN_RECORD_NAME).read_text())
    assert record["complete"] and record["global_step"] == 6
    assert [entry["global_step"] for entry in record["continued_from"]] == [4]


def test_a_finished_run_without_checkpoints_cannot_be_continued(tiny_llama_dir, tmp_path, no_model_loads):
    out = tmp_path / "run"
    assert run_main(tiny_module().main, tiny_args(tiny_llama_dir, out, "--save_strategy", "no")) == 0
    with pytest.raises(ConfigError, match="kept no checkpoint to continue from"):
        no_model_loads.main(tiny_args(tiny_llama_dir, out, "--save_strategy", "no", "--max_steps", "6"))


def test_embedding_run_trained_further_keeps_honest_metrics_and_says_so(tiny_bert_dir, tmp_path):
    from train.embed import main

    rows = [{"anchor": f"the cat likes the map {i}.", "positive": f"a dog reads a good book {i}."} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "pairs", "--train_data", str(data),
            "--eval_data", str(data), "--output_dir", str(out), "--use_peft", "true", "--max_steps", "2",
            "--save_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "5e-3",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
            "--lora_target_modules", "query", "value", "--max_length", "32", "--logging_steps", "1"]  # fmt: skip
    assert run_main(main, argv) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert run_main(main, [*argv, "--max_steps", "4"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    assert (train["global_step"], train["resumed_from_step"], train["train_loss_steps"]) == (4, 2, 2)
    assert train["train_loss"] > 0
    assert metrics["before"] == first["before"]  # the untrained model's numbers are kept
    assert "Continued training: this run first finished at step 2" in (out / "README.md").read_text()


# --- 2. output folders that are not lorasmith runs ------------------------------------------------------------


def test_a_folder_that_is_not_a_run_is_refused_before_any_model_loads(tiny_llama_dir, tmp_path, no_model_loads):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    (out / "metrics.json").write_text('{"mine": 1}\n')
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"holds no lorasmith run but has README.md, metrics.json.*overwrite_output_dir"):
        no_model_loads.main(tiny_args(tiny_llama_dir, out))
    assert snapshot(out) == before


def test_overwrite_output_dir_moves_the_users_files_aside_and_trains(tiny_llama_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    (out / "notes.txt").write_text("kept where it is\n")
    assert run_main(tiny_module().main, tiny_args(tiny_llama_dir, out, "--overwrite_output_dir", "true")) == 0
    (moved,) = (out / run_folder.PREVIOUS_RUNS_DIR).iterdir()
    assert (moved / "README.md").read_text() == "# my project\n"
    assert (out / "notes.txt").read_text() == "kept where it is\n"
    assert json.loads((out / run_folder.RUN_RECORD_NAME).read_text())["complete"]


def test_other_files_that_a_run_does_not_write_are_allowed(tmp_path):
    (tmp_path / "cell.yaml").write_text("lora_r: 8\n")  # a sweep cell's recipe and log, before the run starts
    (tmp_path / "sweep.log").write_text("")
    args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None, max_steps=4)
    assert resume.check_output_dir(args, SimpleNamespace(overwrite_output_dir=False), {"lora_r": 8}) is False


@pytest.mark.parametrize("make", ["file", "under_a_file"])
def test_output_dir_that_cannot_be_a_folder_is_refused(tmp_path, make):
    (tmp_path / "taken").write_text("a file")
    target = tmp_path / "taken" if make == "file" else tmp_path / "taken" / "out"
    args = SimpleNamespace(output_dir=str(target), resume_from_checkpoint=None, max_steps=4)
    with pytest.raises(ConfigError, match="is a file"):
        resume.check_output_dir(args, SimpleNamespace(overwrite_output_dir=False), {})


def embed_argv(model_dir, out, data) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--task", "pairs", "--train_data", str(data),
            "--output_dir", str(out), "--use_peft", "true", "--max_steps", "2", "--report_to", "none"]  # fmt: skip


def labeled_argv(model_dir, out, data) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_data", str(data), "--output_dir", str(out),
            "--use_peft", "true", "--max_steps", "2", "--report_to", "none"]  # fmt: skip


@pytest.mark.parametrize(
    ("entrypoint", "builder"),
    [("embed", "build_embedding_model"), ("seq_classify", "build_classifier"), ("sft_classify", "load_model")],
)
def test_every_entrypoint_refuses_a_non_run_folder_before_its_model(
    entrypoint, builder, tiny_bert_dir, tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    module = importlib.import_module(f"train.{entrypoint}.__main__")
    monkeypatch.setattr(module, builder, lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# mine\n")
    before = snapshot(out)
    if entrypoint == "embed":
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps({"anchor": f"q {i}", "positive": f"p {i}"}) + "\n" for i in range(8)))
        argv = embed_argv(tiny_bert_dir, out, data)
    else:
        data = tmp_path / "rows.csv"
        data.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(8)))
        argv = labeled_argv(tiny_llama_dir if entrypoint == "sft_classify" else tiny_bert_dir, out, data)
        if entrypoint == "sft_classify":
            config = tmp_path / "sft.yaml"
            config.write_text('labels: {a: "yes", b: "no"}\ntemplate: "Text: {text}"\n')
            argv = ["--config", str(config), *argv]
    assert run_main(module.main, argv) == 2
    assert "holds no lorasmith run but has README.md" in capsys.readouterr().err
    assert snapshot(out) == before


# --- 3. exports cut short ----------------------------------------------------------------------------------


def full_disk_after_config(monkeypatch):
    """Model saves write config.json, then fail as a full disk does."""
    from transformers import PreTrainedModel

    def save_pretrained(self, folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def lora_trainer(model_dir, output_dir):
    from transformers import AutoModel, Trainer, TrainingArguments

    from train.common.args import ModelArguments
    from train.common.modeling import apply_tuning, load_model, load_tokenizer

    args = ModelArguments(model_name_or_path=str(model_dir), use_peft=True, lora_r=4)
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")
    trainer = Trainer(model=model, args=TrainingArguments(str(output_dir), use_cpu=True, report_to=[]),
                      processing_class=load_tokenizer(args))  # fmt: skip
    return trainer, args


def test_a_full_disk_mid_export_publishes_nothing_and_keeps_the_previous_export(tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoModel

    from train.common.export import export_trained_model

    trainer, args = lora_trainer(tiny_bert_dir, tmp_path)
    with monkeypatch.context() as patch:
        full_disk_after_config(patch)
        with pytest.raises(OutputError, match=r"the disk is full\. Nothing was published"):
            export_trained_model(trainer, args, AutoModel, export_merged=True)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "adapter").exists()

    assert export_trained_model(trainer, args, AutoModel, export_merged=True) == {"adapter": "adapter", "merged": "merged"}
    assert not list(tmp_path.glob("*.partial"))  # the crashed attempt's leftovers are gone
    complete = snapshot(tmp_path / "merged")
    AutoModel.from_pretrained(tmp_path / "merged")

    with monkeypatch.context() as patch:
        full_disk_after_config(patch)
        with pytest.raises(OutputError):
            export_trained_model(trainer, args, AutoModel, export_merged=True)
    assert snapshot(tmp_path / "merged") == complete  # the previous complete export is untouched


def test_a_run_whose_export_failed_is_not_complete_and_the_rerun_exports(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from peft import PeftModel

    save = PeftModel.save_pretrained

    def fail(self, folder, *args, **kwargs):  # checkpoints save; the export hits a full disk
        if not str(folder).endswith(".partial"):
            return save(self, folder, *args, **kwargs)
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    module = tiny_module()
    finish = run.finish

    def finish_with_export(trainer, recipe, saved, write, *args):
        from transformers import AutoModelForCausalLM

        from train.common.args import ModelArguments
        from train.common.export import export_trained_model

        model_args = ModelArguments(model_name_or_path=str(tiny_llama_dir), use_peft=True)
        saved = export_trained_model(trainer, model_args, AutoModelForCausalLM, export_merged=False)
        finish(trainer, recipe, saved, write, *args)

    monkeypatch.setattr(module.run, "finish", finish_with_export)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(PeftModel, "save_pretrained", fail)
        assert run_main(module.main, tiny_args(tiny_llama_dir, out)) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert not (out / "adapter").exists() and not (out / run_folder.RUN_RECORD_NAME).exists()

    assert run_main(module.main, tiny_args(tiny_llama_dir, out)) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4  # nothing trained past max_steps
    assert (out / "adapter" / "adapter_config.json").stat().st_size > 2
    assert json.loads((out / run_folder.RUN_RECORD_NAME).read_text())["complete"]


def test_run_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        run_folder.write_metrics(tmp_path, {"train": {"loss": 1.0}})
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


# --- 4. Ctrl-C -----------------------------------------------------------------------------------------------


def start_tiny(model_dir, out, sleep: str):
    args = [sys.executable, str(TINY), *tiny_args(model_dir, out, "--max_steps", "40", "--save_steps", "100")]
    env = multiproc.test_env(TINY_STEP_SLEEP=sleep)
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = out / "progress"
    while not (progress.exists() and int(progress.read_text() or 0) >= 2) and process.poll() is None:
        time.sleep(0.05)
    return process


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_one_line(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    process = start_tiny(tiny_llama_dir, out, "0.2")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130, stderr[-3000:]
    (checkpoint,) = out.glob("checkpoint-*")
    assert (checkpoint / run_folder.MARKER_NAME).is_file()
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted (Ctrl-C): saved {checkpoint.name} in {out}; run the same command again to resume from it"
    )


def test_ctrl_c_twice_quits_at_once_with_one_line(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    process = start_tiny(tiny_llama_dir, out, "3")
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted (Ctrl-C): pressed twice: stopped without saving")
    assert not (out / run_folder.RUN_RECORD_NAME).exists()


# --- 5. training that cannot learn -------------------------------------------------------------------------


def contrastive(schema: str):
    return SimpleNamespace(schema=schema)


def test_contrastive_data_that_cannot_teach_is_refused_with_the_number():
    from datasets import Dataset

    with pytest.raises(DataError, match=r"1 training row\(s\): contrastive training needs at least 2"):
        learnable.check_contrastive_rows(Dataset.from_dict({"anchor": ["q"], "positive": ["p"]}), contrastive("pairs"), "f")
    same = Dataset.from_dict({"anchor": ["a", "b", "c"], "positive": ["p", "p", "p"]})
    with pytest.raises(DataError, match="column 'positive': all 3 rows have the same positive text"):
        learnable.check_contrastive_rows(same, contrastive("pairs"), "f")
    flat = Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [0.5, 0.5]})
    with pytest.raises(DataError, match="all 2 scores are 0.5: there is nothing to rank"):
        learnable.check_contrastive_rows(flat, contrastive("scored_pairs"), "f")
    hard = Dataset.from_dict({"anchor": ["a", "b"], "positive": ["p", "p"], "negatives": [["x"], ["y"]]})
    learnable.check_contrastive_rows(hard, contrastive("triplets"), "f")  # hard negatives still teach


def test_a_single_label_class_is_refused_and_named():
    with pytest.raises(DataError, match="every training row has the label 'pos': a classifier needs at least 2"):
        learnable.check_label_classes([1, 1, 1], ["neg", "pos"], "train.csv")
    with pytest.raises(DataError, match=r"the same label set \['a'\]"):
        learnable.check_label_classes([[1, 0], [1, 0]], ["a", "b"], "train.csv", multi_label=True)
    learnable.check_label_classes([0, 1, 1], ["neg", "pos"], "train.csv")


def steps_args(**overrides):
    values = dict(max_steps=-1, num_train_epochs=1.0, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                  dataloader_drop_last=False)  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


def test_zero_optimizer_steps_is_refused_before_the_model():
    with pytest.raises(ConfigError, match="0 optimizer steps: 10 training rows.*num_train_epochs is 0"):
        learnable.check_optimizer_steps(10, steps_args(num_train_epochs=0), 1)
    with pytest.raises(ConfigError, match="give 0 batch"):
        learnable.check_optimizer_steps(6, steps_args(dataloader_drop_last=True), 2)
    assert learnable.check_optimizer_steps(10, steps_args(), 2) == 2
    assert learnable.check_optimizer_steps(0, steps_args(max_steps=5), 1) == 5


def test_max_train_samples_0_is_an_error_not_every_row():
    with pytest.raises(ConfigError, match="is 0: that selects no rows. Leave it unset"):
        run.first_rows([1, 2, 3], 0)
    assert run.first_rows([1, 2, 3], None) == [1, 2, 3]


def test_embed_with_one_pair_exits_2_before_the_model(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    import train.embed.__main__ as embed

    monkeypatch.setattr(embed, "build_embedding_model", lambda *a, **k: pytest.fail("a model was loaded"))
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"anchor": "q", "positive": "p"}) + "\n")
    assert run_main(embed.main, embed_argv(tiny_bert_dir, tmp_path / "out", data)) == 2
    assert "1 training row(s)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def zero_lora_trainer(tiny_llama_dir, output_dir, losses):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(r=2, task_type="CAUSAL_LM"))
    state = SimpleNamespace(global_step=len(losses), epoch=1.0, log_history=[{"loss": x} for x in losses])
    return SimpleNamespace(
        state=state, model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        args=SimpleNamespace(output_dir=str(output_dir), max_steps=len(losses), num_train_epochs=1.0),
    )  # fmt: skip


def test_a_run_that_learned_nothing_exits_3_keeps_its_files_and_is_not_complete(tiny_llama_dir, tmp_path, capsys):
    trainer = zero_lora_trainer(tiny_llama_dir, tmp_path, [0.0, 0.0, 0.0])

    def main():
        run.finish(trainer, {"lora_r": 2}, {"adapter": "adapter"}, run_folder.write_metrics, tmp_path, {"train": {}})

    assert run_main(main) == 3
    captured = capsys.readouterr()
    assert "learned nothing: every logged loss was exactly 0 (3 logged over 3 steps)" in captured.err
    assert "saved to" not in captured.out
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / run_folder.RUN_RECORD_NAME).exists()


def test_nothing_learned_needs_zero_loss_and_zero_adapter(tiny_llama_dir, tmp_path):
    assert learnable.nothing_learned(zero_lora_trainer(tiny_llama_dir, tmp_path, [0.3, 0.0])) is None
    trained = zero_lora_trainer(tiny_llama_dir, tmp_path, [0.0, 0.0])
    with torch.no_grad():
        next(p for n, p in trained.model.named_parameters() if "lora_B" in n).add_(0.1)
    assert learnable.nothing_learned(trained) is None
    assert learnable.nothing_learned(zero_lora_trainer(tiny_llama_dir, tmp_path, [])) == "it took 0 optimizer steps"
