"""train.embed end to end on tiny models: every task trains, the output folder is complete and consistent.

Runs ``train.embed.main`` in this process (no launcher) on data files written to ``tmp_path``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OBJECTS, SUBJECTS, VERBS

from lorasmith.process import run_main
from train.embed import main

FAST = [
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--learning_rate", "5e-3",
    "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
    "--lora_target_modules", "query", "value", "--max_length", "32", "--seed", "0", "--warmup_steps", "0",
]  # fmt: skip


def sentences(n: int, offset: int = 0) -> list[str]:
    return [
        f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[(i // 3) % len(VERBS)]} {OBJECTS[(i + offset) % len(OBJECTS)]}."
        for i in range(offset, offset + n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def data_files(folder: Path) -> dict[str, str]:
    texts = sentences(12)
    others = sentences(12, offset=5)
    scored = [
        {"sentence1": a, "sentence2": b, "score": (i % 6) / 5}
        for i, (a, b) in enumerate(zip(texts, others, strict=True))
    ]
    tags = [{"text": t, "tags": [t.split()[1], t.split()[-1].rstrip(".")]} for t in texts]
    (folder / "sentences.txt").write_text("\n".join(texts) + "\n")
    return {
        "sentences": str(folder / "sentences.txt"),
        "pairs": write_jsonl(
            folder / "pairs.jsonl", [{"anchor": a, "positive": b} for a, b in zip(texts, others, strict=True)]
        ),
        "triplets": write_jsonl(
            folder / "triplets.jsonl",
            [
                {"anchor": a, "positive": b, "negative": c}
                for a, b, c in zip(texts, others, reversed(texts), strict=True)
            ],
        ),
        "scored_pairs": write_jsonl(folder / "sts.jsonl", scored),
        "tags": write_jsonl(folder / "tags.jsonl", tags),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return data_files(tmp_path_factory.mktemp("embed-data"))


def train(model_dir, output_dir, task: str, train_data: str, *extra: str) -> Path:
    argv = ["--model_name_or_path", str(model_dir), "--task", task, "--train_data", train_data,
            "--output_dir", str(output_dir), "--use_peft", "true", *FAST, *extra]  # fmt: skip
    assert run_main(main, argv) == 0
    return Path(output_dir)


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def pairs_run(tiny_bert_dir, data, tmp_path_factory) -> Path:
    """LoRA with activation checkpointing on pairs, evaluated and saved at each step, merged export."""
    return train(
        tiny_bert_dir, tmp_path_factory.mktemp("pairs-run"), "pairs", data["pairs"],
        "--eval_data", data["pairs"], "--gradient_checkpointing", "true", "--max_steps", "3",
        "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
        "--load_best_model_at_end", "true", "--save_total_limit", "2",
    )  # fmt: skip


def test_lora_b_trains_with_activation_checkpointing(pairs_run):
    from safetensors.torch import load_file

    weights = load_file(pairs_run / "adapter" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)


def test_output_folder_is_complete(pairs_run):
    for name in ("metrics.json", "README.md", "lorasmith.json", "recipe.yaml", "adapter/adapter_config.json",
                 "merged/config.json", "merged/modules.json", "merged/1_Pooling/config.json"):  # fmt: skip
        assert (pairs_run / name).exists(), name
    manifest = json.loads((pairs_run / "lorasmith.json").read_text())
    assert manifest["kind"] == "embedding" and manifest["embedding"]["pooling"] == "mean"
    assert {"before", "after", "train"} <= set(metrics(pairs_run))
    assert "ndcg@10" in metrics(pairs_run)["after"]
    card = (pairs_run / "README.md").read_text()
    assert "ndcg@10" in card and "task: pairs" in card


def test_training_logs_carry_the_telemetry_and_the_best_checkpoint_is_tracked(pairs_run):
    state = json.loads(sorted(pairs_run.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    train_logs = [log for log in state["log_history"] if "loss" in log]
    assert len(train_logs) >= 2
    first = train_logs[0]
    assert first["global_batch_size"] == 4 and first["infonce/negatives_per_anchor"] == 3
    assert 0 <= first["infonce/top1_accuracy"] <= 1 and first["pairs_per_second"] > 0
    assert 0 < first["real_tokens"] <= first["padded_tokens"]
    assert state["best_metric"] is not None and "eval_ndcg@10" in state["log_history"][1]


def test_merged_model_matches_the_adapter_and_sentence_transformers(pairs_run):
    from sentence_transformers import SentenceTransformer

    from lorasmith.encoder import Embedder

    texts = sentences(5, offset=3)
    merged = Embedder.load(pairs_run / "merged", device="cpu", show_progress=False).encode(texts)
    manifest = json.loads((pairs_run / "lorasmith.json").read_text())
    (pairs_run / "lorasmith.json").write_text(
        json.dumps({**manifest, "merged": None})
    )  # force base + adapter
    try:
        adapter = Embedder.load(pairs_run, device="cpu", show_progress=False).encode(texts)
    finally:
        (pairs_run / "lorasmith.json").write_text(json.dumps(manifest))
    assert (merged - adapter).abs().max() < 1e-4
    st = torch.from_numpy(SentenceTransformer(str(pairs_run / "merged"), device="cpu").encode(texts))
    assert (merged - st).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("task", "eval_task", "extra"),
    [
        ("simcse_unsup", "scored_pairs", []),
        ("triplets", "pairs", ["--loss", "{infonce: {symmetric: true}}"]),
        (
            "scored_pairs",
            "scored_pairs",
            ["--loss", "{cosent: {weight: 1, temperature: 0.05}, ibn: 0, angle: 1}"],
        ),
        ("tags", "tags", ["--query_prefix", "query: "]),
    ],
)
def test_each_task_trains_and_evaluates(tiny_bert_dir, data, tmp_path, task, eval_task, extra):
    train_data = data["sentences" if task == "simcse_unsup" else task]
    eval_data = data["pairs" if eval_task == "pairs" else eval_task]
    out = train(
        tiny_bert_dir,
        tmp_path,
        task,
        train_data,
        "--eval_data",
        eval_data,
        "--export_merged",
        "false",
        *extra,
    )
    result = metrics(out)
    key = "spearman" if eval_task == "scored_pairs" else "ndcg@10"
    assert key in result["before"] and key in result["after"]
    assert result["train"]["train_loss"] > 0
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / "merged").exists()


def test_decoder_with_last_token_pooling_and_full_finetuning(tiny_llama_dir, data, tmp_path):
    out = train(
        tiny_llama_dir, tmp_path, "pairs", data["pairs"], "--pooling", "last", "--use_peft", "false",
        "--full_finetune", "true", "--lora_target_modules", "q_proj", "v_proj",
    )  # fmt: skip
    assert not (out / "adapter").exists()
    from transformers import AutoModel

    merged = AutoModel.from_pretrained(out / "merged")
    original = AutoModel.from_pretrained(tiny_llama_dir)
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, original.state_dict()[n])]
    assert changed  # full fine-tuning moved the base weights
    assert json.loads((out / "lorasmith.json").read_text())["embedding"]["pooling"] == "last"


def test_continue_training_from_an_adapter(tiny_bert_dir, data, tmp_path, pairs_run):
    out = train(
        tiny_bert_dir, tmp_path, "pairs", data["pairs"], "--eval_data", data["pairs"],
        "--adapter_path", str(pairs_run / "adapter"), "--export_merged", "false",
    )  # fmt: skip
    # The continued run starts where the first ended (same eval numbers), then trains the loaded adapter further.
    assert metrics(out)["before"]["ndcg@10"] == pytest.approx(metrics(pairs_run)["after"]["ndcg@10"])
    from safetensors.torch import load_file

    first = load_file(pairs_run / "adapter" / "adapter_model.safetensors")
    second = load_file(out / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_bad_data_exits_2_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    import train.embed.__main__ as embed

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(embed, "build_embedding_model", fail)
    monkeypatch.setattr(embed, "load_tokenizer", fail)
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"anchor": "a question", "positive": "an answer"}, {"anchor": "  ", "positive": "x"}],
    )
    argv = [
        "--model_name_or_path",
        "/nonexistent",
        "--task",
        "pairs",
        "--train_data",
        bad,
        "--output_dir",
        str(tmp_path),
    ]
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "anchor" in err and "row 2" in err and "Traceback" not in err
