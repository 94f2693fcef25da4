"""Matryoshka embeddings: the objective is the weighted sum of every loss at every width, bad widths fail at start,
eval truncates and re-normalises, evaluation during training reports the main metric per width, and the exported
sentence-transformers folder loads truncated. (Exactness under gather: tests/test_contrastive_distributed.py.)"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_embed_train import FAST, data_files, sentences

from eval.cli import EmbeddingOptions, ModelOption, load_embedder
from lorasmith.encoder import Embedder
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from lorasmith.recipe_parser import make_cli_parser, parse_cli
from train.embed import main
from train.embed.batch import EmbeddedBatch, text_ids
from train.embed.evaluation import embedding_metrics
from train.embed.loss_spec import build_objective
from train.embed.matryoshka import matryoshka_dims
from train.embed.tasks import embed_task


def scored_batch(width: int = 8, rows: int = 6) -> EmbeddedBatch:
    generator = torch.Generator().manual_seed(3)
    anchor = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    candidates = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    scores = torch.rand(rows, generator=generator, dtype=torch.float64)
    return EmbeddedBatch.aligned(
        anchor,
        candidates,
        text_ids([f"a{i}" for i in range(rows)]),
        text_ids([f"b{i}" for i in range(rows)]),
        scores=scores,
    )


def cut(batch: EmbeddedBatch, dim: int) -> EmbeddedBatch:
    return EmbeddedBatch.aligned(
        batch.anchor[:, :dim],
        batch.candidates[:, :dim],
        batch.anchor_ids,
        batch.candidate_ids,
        scores=batch.scores,
    )


@pytest.mark.parametrize(
    ("task", "loss"),
    [("pairs", {"infonce": {"symmetric": True}}), ("scored_pairs", {"cosent": 1, "ibn": 0.5, "angle": 2})],
)
def test_loss_is_the_weighted_sum_of_every_loss_at_every_width(task, loss):
    batch = scored_batch() if task == "scored_pairs" else cut(scored_batch(), 8)
    if task == "pairs":
        batch.scores = None
    widths, weights = [8, 5, 2], [1.0, 0.5, 0.25]
    objective = build_objective(embed_task(task), loss, matryoshka=matryoshka_dims(widths, weights))
    output = objective(batch, across_processes=False)

    plain = build_objective(embed_task(task), loss)
    expected, components = 0.0, {}
    for width, weight in zip(widths, weights, strict=True):
        truncated = cut(batch, width)
        if task == "pairs":
            truncated.scores = None
        by_hand = plain(truncated, across_processes=False)
        expected += weight * float(by_hand.loss)
        suffix = "" if width == 8 else f"@{width}"
        components.update({f"{name}{suffix}": value for name, value in by_hand.components.items()})
    assert float(output.loss) == pytest.approx(expected, rel=1e-12)
    assert output.value == pytest.approx(expected, rel=1e-12)
    assert output.components == pytest.approx(components, rel=1e-12)
    if task == "pairs":
        assert {"infonce/top1_accuracy", "infonce@5/top1_accuracy", "infonce@2/top1_accuracy"} <= set(
            output.telemetry
        )


def test_width_of_weight_zero_is_not_computed():
    objective = build_objective(embed_task("pairs"), "infonce", matryoshka=matryoshka_dims([8, 4], [1, 0]))
    batch = cut(scored_batch(), 8)
    batch.scores = None
    assert set(objective(batch, across_processes=False).components) == {"infonce"}


@pytest.mark.parametrize(
    ("dims", "weights", "message"),
    [
        ([64, 128], None, "strictly descending"),
        ([128, 128], None, "strictly descending"),
        ([128, 0], None, "positive integers"),
        ([128, 64.5], None, "positive integers"),
        ([128, 64], [1.0], "2 matryoshka_dims"),
        ([128, 64], [1.0, -1], ">= 0"),
        ([128, 64], [0, 0], "all 0"),
        (None, [1.0], "needs matryoshka_dims"),
    ],
)
def test_bad_widths_are_config_errors(dims, weights, message):
    with pytest.raises(ConfigError, match=message):
        matryoshka_dims(dims, weights)


def test_a_width_above_the_hidden_size_fails_naming_it():
    with pytest.raises(ConfigError, match="wider than the model's embeddings \\(32\\)"):
        matryoshka_dims([64, 16]).check_width(32)


def test_recipe_checks_the_widths_before_any_model_is_loaded(tmp_path, capsys):
    argv = ["--model_name_or_path", "missing-model", "--task", "pairs", "--train_data", "x.jsonl",
            "--matryoshka_dims", "16", "32", "--output_dir", str(tmp_path)]  # fmt: skip
    assert run_main(main, argv) == 2
    assert "strictly descending" in capsys.readouterr().err


def test_embedder_truncates_then_normalises(tiny_bert_dir):
    texts = sentences(6)
    raw = Embedder.load(tiny_bert_dir, normalize=False, device="cpu", show_progress=False).encode(texts)
    truncated = Embedder.load(tiny_bert_dir, device="cpu", show_progress=False, truncate_dim=8)
    embeddings = truncated.encode(texts)
    assert embeddings.shape == (6, 8) and truncated.dimension == 8
    assert torch.allclose(embeddings, F.normalize(raw[:, :8], dim=-1), atol=1e-6)
    with pytest.raises(ConfigError, match="embedding width 32"):
        Embedder.load(tiny_bert_dir, device="cpu", show_progress=False, truncate_dim=33)


def test_eval_cli_flag_truncate_dim(tiny_bert_dir):
    parser = make_cli_parser([EmbeddingOptions, ModelOption], module="test", description="")
    options, chosen = parse_cli(
        parser, ["--model", str(tiny_bert_dir), "--truncate-dim", "4", "--device", "cpu"]
    )
    assert load_embedder(options, chosen.model).encode(["the cat reads the map."]).shape == (1, 4)
    with pytest.raises(ConfigError, match="--truncate_dim expects a positive integer"):
        parse_cli(parser, ["--model", "m", "--truncate-dim", "0"])


def test_evaluation_reports_the_main_metric_at_each_width(tiny_bert_dir, tmp_path):
    from datasets import Dataset

    texts, others = sentences(10), sentences(10, offset=4)
    sts = Dataset.from_dict({"sentence1": texts, "sentence2": others, "score": [i / 9 for i in range(10)]})
    embedder = Embedder.load(tiny_bert_dir, device="cpu", show_progress=False)
    metrics = embedding_metrics(embedder, "scored_pairs", sts, dims=[32, 16, 8])
    assert set(metrics) >= {"spearman", "spearman@16", "spearman@8"} and "spearman@32" not in metrics
    at_8 = embedding_metrics(
        Embedder.load(tiny_bert_dir, device="cpu", show_progress=False, truncate_dim=8), "scored_pairs", sts
    )
    assert metrics["spearman@8"] == pytest.approx(at_8["spearman"], abs=1e-6)
    assert metrics["spearman"] == pytest.approx(embedding_metrics(embedder, "scored_pairs", sts)["spearman"])


def test_training_run_records_widths_and_its_sentence_transformers_folder_loads_truncated(
    tiny_bert_dir, tmp_path
):
    from sentence_transformers import SentenceTransformer

    data = data_files(tmp_path)
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "scored_pairs", "--train_data", data["scored_pairs"],
            "--eval_data", data["scored_pairs"], "--output_dir", str(out), "--use_peft", "true", *FAST,
            "--matryoshka_dims", "32", "16", "8", "--matryoshka_weights", "1", "1", "0.5",
            "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
            "--load_best_model_at_end", "true"]  # fmt: skip
    assert run_main(main, argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"spearman", "spearman@16", "spearman@8"} <= set(metrics["after"])
    assert json.loads((out / "lorasmith.json").read_text())["embedding"]["matryoshka_dims"] == [32, 16, 8]
    assert "truncate_dim=8" in (out / "README.md").read_text()

    texts = sentences(5, offset=2)
    ours = Embedder.load(out, device="cpu", show_progress=False, truncate_dim=8).encode(texts)
    st = SentenceTransformer(str(out / "merged"), device="cpu", truncate_dim=8)
    theirs = torch.from_numpy(st.encode(texts, normalize_embeddings=True))
    assert theirs.shape == (5, 8)
    assert (ours - theirs).abs().max() < 1e-4
    assert torch.allclose(ours.norm(dim=-1), torch.ones(5), atol=1e-5)
