"""train.embed on 2 processes x batch B logs the same per-step losses as 1 process x batch 2B (dropout 0, same
seed and data order): the negatives are gathered across processes with the big batch's gradient. The PCA rotation
fitted after training (texts embedded on both processes, gathered) is the one process's, also when it is refined for
the Matryoshka widths (``matryoshka_rotation.refine``, on neighbour rankings or on the training loss: refined on each
process, the main process's broadcast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multiproc import run_multiprocess
from safetensors.torch import load_file
from test_embed_train import sentences, write_jsonl

from lorasmith.process import run_main
from train.embed import main

STEPS = 4


def logged_steps(output_dir: Path) -> list[dict]:
    state = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [log for log in state["log_history"] if "loss" in log]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "loss", "extra"),
    [
        ("pairs", "infonce", ["--matryoshka_dims", "32", "8", "--matryoshka_rotation", "{refine: {steps: 10}}"]),
        ("scored_pairs", "{cosent: 1, ibn: {weight: 1, threshold: 0.5}, angle: 1}", ["--matryoshka_rotation", "after"]),
        ("tags", "infonce", ["--matryoshka_dims", "32", "8",
                             "--matryoshka_rotation", "{refine: {steps: 10, objective: training_loss}}"]),
    ],
)
def test_two_processes_log_the_losses_of_one_process_with_the_double_batch(
    tiny_bert_dir, tmp_path, task, loss, extra
):
    texts = sentences(4 * STEPS * 2)  # exactly STEPS global batches of 8: no short last batch
    if task == "tags":  # shared tags across texts and processes: masked, never negatives
        rows = [{"text": t, "tags": [t.split()[1], t.split()[-1].rstrip(".")]} for t in texts]
    elif task == "pairs":
        rows = [
            {"anchor": a, "positive": b} for a, b in zip(texts, sentences(len(texts), offset=3), strict=True)
        ]
    else:
        others = sentences(len(texts), offset=3)
        rows = [
            {"sentence1": a, "sentence2": b, "score": (i % 5) / 4}
            for i, (a, b) in enumerate(zip(texts, others, strict=True))
        ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    common = [
        "--model_name_or_path", str(tiny_bert_dir), "--task", task, "--train_data", data, "--loss", loss,
        "--use_peft", "true", "--lora_target_modules", "query", "value", "--lora_dropout", "0", "--dropout", "0",
        "--max_steps", str(STEPS), "--logging_steps", "1", "--learning_rate", "1e-2", "--warmup_steps", "0",
        "--save_strategy", "steps", "--save_steps", str(STEPS), "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--export_merged", "false", "--report_to", "none", "--seed", "7",
        *extra,
    ]  # fmt: skip
    assert (
        run_main(main, [*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"])
        == 0
    )
    run_multiprocess(
        [
            "-m",
            "train.embed",
            *common,
            "--output_dir",
            str(tmp_path / "two"),
            "--per_device_train_batch_size",
            "4",
        ]
    )

    one, two = logged_steps(tmp_path / "one"), logged_steps(tmp_path / "two")
    assert len(one) == len(two) == STEPS
    for step_one, step_two in zip(one, two, strict=True):
        assert step_two["global_batch_size"] == step_one["global_batch_size"] == 8
        assert step_two["loss"] == pytest.approx(step_one["loss"], abs=1e-4)
        for key in step_one:
            if key.startswith("loss/") or key.endswith(
                ("top1_accuracy", "negatives_per_anchor", "false_negatives")
            ):
                assert step_two[key] == pytest.approx(step_one[key], abs=1e-4), key
    assert len({round(step["loss"], 4) for step in one}) > 1  # the model trains: the losses move
    rotations = [load_file(str(tmp_path / run / "rotation.safetensors"))["rotation"] for run in ("one", "two")]
    assert (rotations[0][:, :3] - rotations[1][:, :3]).abs().max() < 1e-3  # leading axes: distinct eigenvalues


@pytest.mark.slow
def test_two_processes_with_the_gradient_cache_log_the_losses_of_one_plain_process(tiny_bert_dir, tmp_path):
    """2 processes x 8 with ``gradient_cache: true, mini_batch_size: 2`` (packed) == 1 process x 16 in one forward
    per role."""
    texts = sentences(16 * STEPS)
    rows = [{"anchor": a, "positive": b} for a, b in zip(texts, sentences(len(texts), offset=3), strict=True)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    common = [
        "--model_name_or_path", str(tiny_bert_dir), "--task", "pairs", "--train_data", data, "--loss", "infonce",
        "--use_peft", "true", "--lora_target_modules", "query", "value", "--lora_dropout", "0", "--dropout", "0",
        "--max_steps", str(STEPS), "--logging_steps", "1", "--learning_rate", "1e-2", "--warmup_steps", "0",
        "--save_strategy", "steps", "--save_steps", str(STEPS), "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--export_merged", "false", "--report_to", "none", "--seed", "7",
    ]  # fmt: skip
    one = [*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "16", "--mini_batch_size", "0"]
    assert run_main(main, one) == 0
    run_multiprocess(["-m", "train.embed", *common, "--output_dir", str(tmp_path / "two"),
                      "--per_device_train_batch_size", "8", "--gradient_cache", "true", "--mini_batch_size", "2"])  # fmt: skip

    plain, cached = logged_steps(tmp_path / "one"), logged_steps(tmp_path / "two")
    assert len(plain) == len(cached) == STEPS
    for step_plain, step_cached in zip(plain, cached, strict=True):
        assert step_cached["global_batch_size"] == step_plain["global_batch_size"] == 16
        assert step_cached["loss"] == pytest.approx(step_plain["loss"], abs=1e-4)
        # packed forwards (the default) of <= 2 x 32 slots with the cache, gathered: the same losses; padding
        # counted over the packed rows (a packed row ends with less than one text of room)
        assert 0 <= step_cached["padding_share"] < 0.2
    assert len({round(step["loss"], 4) for step in plain}) > 1
