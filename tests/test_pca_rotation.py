"""The Matryoshka rotation (``matryoshka_rotation: {fit: after}``): the fitted matrix is orthogonal and ordered by variance, it is fitted on
the training texts in their roles and prefixes, a finished run keeps every full-width cosine and metric while its
truncated embeddings are the first principal components, and every way of loading the run (lorasmith manifest with
merged/ or adapter only, the merged/ folder, sentence-transformers) applies the same rotation. Folders with modules
lorasmith cannot reproduce are refused instead of silently embedding differently. ``refine: {steps: N}`` keeps
the rotation orthogonal while it brings the truncated neighbour rankings closer to the full-width ones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from test_embed_train import FAST, data_files, sentences

from eval.sts import load_sts_data
from lorasmith.encoder import Embedder
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from train.embed import main
from train.embed.collator import ContrastiveCollator
from train.embed.evaluation import embedding_metrics
from train.embed.rotation import pca_rotation, refine_rotation, rotation_texts
from train.embed.sampling import DatasetMix, MixCollator
from train.embed.tasks import embed_task


def anisotropic(rows: int = 2000, width: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, axes): rows spread with standard deviations 32, 16, ..., 1 along the columns of a random
    orthogonal ``axes``, around a non-zero mean."""
    generator = torch.Generator().manual_seed(0)
    axes, _ = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
    spread = torch.randn(rows, width, generator=generator, dtype=torch.float64) * 2.0 ** torch.arange(width - 1, -1, -1)
    return spread @ axes.T + 3.0, axes


def test_rotation_is_orthogonal_ordered_by_variance_and_signed_deterministically():
    embeddings, axes = anisotropic()
    rotation = pca_rotation(embeddings)
    assert rotation.dtype == torch.float32 and rotation.shape == (6, 6)
    assert torch.allclose(rotation.T @ rotation, torch.eye(6), atol=1e-5)
    # the columns are the true axes up to sign (a sample of rows: close, not exact)
    assert (rotation.double().T @ axes).abs().diagonal().min() > 0.98
    variances = (embeddings.float() @ rotation).var(dim=0)
    assert torch.all(variances[:-1] > variances[1:])
    largest = rotation.gather(0, rotation.abs().argmax(dim=0, keepdim=True))
    assert torch.all(largest > 0)
    assert torch.allclose(pca_rotation(embeddings.flip(0)), rotation, atol=1e-6)  # same rows, same matrix
    with pytest.raises(ValueError, match="N >= 2"):
        pca_rotation(embeddings[:1])


def truncated_kl(embeddings: torch.Tensor, rotation: torch.Tensor, width: int, temperature: float = 0.05) -> float:
    """Mean over rows of KL(full-width neighbour distribution || width-``width`` one), each row's own entry left
    out: what ``refine`` lowers, computed here over every row at once."""
    vectors = F.normalize(embeddings.double(), dim=-1)
    rotated = vectors @ rotation.double()
    narrow = F.normalize(rotated[:, :width], dim=-1)
    is_self = torch.eye(len(vectors), dtype=torch.bool)
    full = F.log_softmax((vectors @ vectors.T / temperature).masked_fill(is_self, -1e4), dim=-1)
    truncated = F.log_softmax((narrow @ narrow.T / temperature).masked_fill(is_self, -1e4), dim=-1)
    return float((full.exp() * (full - truncated)).sum(dim=-1).mean())


def clustered(rows: int = 240, width: int = 12) -> torch.Tensor:
    """Rows in 8 clusters whose centres differ along low-variance directions, under large isotropic-ish noise
    along the others: the PCA prefix is spent on the noise, the neighbours are decided by the clusters."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(8, width, generator=generator) * torch.linspace(0.2, 1.5, width)
    noise = torch.randn(rows, width, generator=generator) * torch.linspace(1.0, 0.1, width)
    return centres[torch.arange(rows) % 8] + noise


def test_refined_rotation_stays_orthogonal_and_brings_truncated_rankings_closer_to_full_width():
    embeddings = clustered()
    start = pca_rotation(embeddings)
    refined = refine_rotation(start, embeddings, [12, 6, 3], [1.0, 1.0, 2.0], steps=150, temperature=0.05, seed=0)
    assert refined.shape == (12, 12) and refined.dtype == torch.float32
    assert torch.allclose(refined.T @ refined, torch.eye(12), atol=1e-5)
    vectors = F.normalize(embeddings, dim=-1)
    assert torch.allclose((vectors @ refined) @ (vectors @ refined).T, vectors @ vectors.T, atol=1e-5)
    assert truncated_kl(embeddings, refined, 6) < 0.95 * truncated_kl(embeddings, start, 6)
    assert truncated_kl(embeddings, refined, 3) < 0.8 * truncated_kl(embeddings, start, 3)
    again = refine_rotation(start, embeddings, [12, 6, 3], [1.0, 1.0, 2.0], steps=150, temperature=0.05, seed=0)
    assert torch.equal(again, refined)  # seeded: the same matrix on every process and every re-run
    other_seed = refine_rotation(start, embeddings, [12, 6, 3], [1.0, 1.0, 2.0], steps=150, temperature=0.05, seed=1)
    assert not torch.equal(other_seed, refined)
    # nothing to refine: no steps, or only the full width
    assert refine_rotation(start, embeddings, [12, 6], [1.0, 1.0], steps=0, temperature=0.05, seed=0) is start
    assert refine_rotation(start, embeddings, [12], [1.0], steps=50, temperature=0.05, seed=0) is start


def test_refinement_uses_only_the_widths_narrower_than_the_embeddings_with_their_weights():
    embeddings = clustered()
    start = pca_rotation(embeddings)
    weighted = refine_rotation(start, embeddings, [12, 6, 3], [1.0, 0.0, 1.0], steps=60, temperature=0.05, seed=0)
    only_three = refine_rotation(start, embeddings, [3], [1.0], steps=60, temperature=0.05, seed=0)
    assert torch.allclose(weighted, only_three, atol=1e-6)  # weight 0 removes width 6; width 12 adds nothing
    pooled = refine_rotation(start, embeddings, [3], [1.0], steps=60, temperature=0.05, seed=0, pool_size=40)
    assert torch.allclose(pooled.T @ pooled, torch.eye(12), atol=1e-5) and not torch.equal(pooled, only_three)


def test_rotation_texts_take_each_role_with_its_training_prefix():
    pairs = Dataset.from_list([{"anchor": f"question {i}", "positive": f"answer {i}"} for i in range(10)])
    pair_collator = ContrastiveCollator(None, embed_task("pairs"), 32, "query: ", "passage: ")
    texts = rotation_texts(pairs, pair_collator, limit=4, seed=0)
    assert len(texts) == 8
    asked = sorted(text.removeprefix("query: ").split()[1] for text in texts if text.startswith("query: "))
    answered = sorted(text.removeprefix("passage: ").split()[1] for text in texts if text.startswith("passage: "))
    assert asked == answered and len(asked) == 4  # both texts of the same 4 sampled rows
    assert rotation_texts(pairs, pair_collator, limit=4, seed=0) == texts

    scored = Dataset.from_list([{"sentence1": "a b", "sentence2": "c d", "score": 0.5}] * 3)
    scored_collator = ContrastiveCollator(None, embed_task("scored_pairs"), 32, "q: ")  # one instruction, both sides
    assert rotation_texts(scored, scored_collator, limit=10, seed=0) == ["q: a b", "q: c d"]

    tags = Dataset.from_list([{"text": f"title {i}", "tags": ["x", "y"]} for i in range(30)])
    mix = DatasetMix(["pairs", "tags"], [pairs, tags], [embed_task("pairs"), embed_task("tags")])
    collators = [ContrastiveCollator(None, embed_task(name), 32) for name in ("pairs", "tags")]
    mixed = rotation_texts(mix, MixCollator(collators, collators[0]), limit=8, seed=1)
    assert sum(text.startswith("question") for text in mixed) == 2  # 10 of 40 rows -> 2 of 8
    assert sum(text.startswith("title") for text in mixed) == 6 and {"x", "y"} <= set(mixed)


@pytest.mark.parametrize("export_merged", ["true", "false"])
def test_rotated_run_keeps_full_width_cosines_and_every_loader_applies_the_rotation(
    tiny_bert_dir, tmp_path, export_merged
):
    data = data_files(tmp_path)
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "scored_pairs", "--train_data", data["scored_pairs"],
            "--eval_data", data["scored_pairs"], "--output_dir", str(out), "--use_peft", "true", *FAST,
            "--matryoshka_dims", "32", "8", "--matryoshka_rotation", "after", "--export_merged", export_merged]  # fmt: skip
    assert run_main(main, argv) == 0
    manifest = json.loads((out / "lorasmith.json").read_text())
    assert manifest["embedding"]["rotation"] == "rotation.safetensors"
    assert "matryoshka_rotation" in (out / "README.md").read_text()

    rotated = Embedder.load(out, device="cpu", show_progress=False)
    rotation = rotated.rotation
    assert rotation is not None and torch.allclose(rotation.T @ rotation, torch.eye(32), atol=1e-5)
    plain = Embedder.load(out, device="cpu", show_progress=False)
    plain.rotation = None  # the same trained model without the rotation
    texts = sentences(7, offset=3)
    ours, unrotated = rotated.encode(texts), plain.encode(texts)
    assert torch.allclose(ours, unrotated @ rotation, atol=1e-5)
    assert torch.allclose(ours @ ours.T, unrotated @ unrotated.T, atol=1e-5)  # full-width cosines unchanged

    # fitted after training on the training texts: the leading axes are those of the final model's embeddings
    train = load_sts_data(data["scored_pairs"])
    fitted_on = list(dict.fromkeys([*train["sentence1"], *train["sentence2"]]))
    reference = pca_rotation(plain.encode(fitted_on))
    assert (reference[:, :3] - rotation[:, :3]).abs().max() < 1e-3

    # the final metrics are those of the rotated model: same full width, first components at width 8
    metrics = json.loads((out / "metrics.json").read_text())["after"]
    assert metrics["spearman"] == pytest.approx(
        embedding_metrics(plain, "scored_pairs", train)["spearman"], abs=1e-3
    )
    truncated = Embedder.load(out, device="cpu", show_progress=False, truncate_dim=8)
    assert torch.allclose(truncated.encode(texts), F.normalize((unrotated @ rotation)[:, :8], dim=-1), atol=1e-5)
    assert metrics["spearman@8"] == pytest.approx(
        embedding_metrics(truncated, "scored_pairs", train)["spearman"], abs=1e-3
    )

    if export_merged == "true":
        from sentence_transformers import SentenceTransformer

        assert json.loads((out / "merged" / "modules.json").read_text())[2]["type"].endswith("Dense")
        folder = Embedder.load(out / "merged", device="cpu", show_progress=False, truncate_dim=8)
        assert torch.allclose(folder.encode(texts), truncated.encode(texts), atol=1e-5)
        st = SentenceTransformer(str(out / "merged"), device="cpu", truncate_dim=8)
        theirs = torch.from_numpy(st.encode(texts, normalize_embeddings=True))
        assert (theirs - truncated.encode(texts)).abs().max() < 1e-4
    else:
        assert not (out / "merged").exists()


def test_modules_lorasmith_cannot_reproduce_are_refused(tiny_bert_dir, tmp_path):
    folder = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 16}))
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="only a square Dense module without bias or activation"):
        Embedder.load(folder, device="cpu", show_progress=False)
    modules[2] = {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="cannot reproduce: \\['LayerNorm'\\]"):
        Embedder.load(folder, device="cpu", show_progress=False)


def saved_rotation(out) -> tuple[Embedder, torch.Tensor]:
    """(the finished run's embedder with its rotation taken off, the saved ``(32, 32)`` rotation), after checking
    that the rotation is orthogonal."""
    embedder = Embedder.load(out, device="cpu", show_progress=False)
    rotation, embedder.rotation = embedder.rotation, None
    assert torch.allclose(rotation.T @ rotation, torch.eye(32), atol=1e-5)
    return embedder, rotation


def test_refined_run_saves_an_orthogonal_rotation_closer_to_full_width_rankings_than_pca(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "scored_pairs", "--train_data", data["scored_pairs"],
            "--eval_data", data["scored_pairs"], "--output_dir", str(out), "--use_peft", "true", *FAST,
            "--matryoshka_dims", "32", "8", "--matryoshka_rotation", "{fit: after, refine: {steps: 40}}",
            "--export_merged", "false"]  # fmt: skip
    assert run_main(main, argv) == 0
    assert "matryoshka_rotation.refine" in (out / "README.md").read_text()
    rotated, rotation = saved_rotation(out)
    train = load_sts_data(data["scored_pairs"])
    fitted_on = rotated.encode(list(dict.fromkeys([*train["sentence1"], *train["sentence2"]])))
    pca = pca_rotation(fitted_on)
    assert truncated_kl(fitted_on, rotation, 8) < truncated_kl(fitted_on, pca, 8)
    # evaluation after training used the refined rotation
    truncated = Embedder.load(out, device="cpu", show_progress=False, truncate_dim=8)
    metrics = json.loads((out / "metrics.json").read_text())["after"]
    assert metrics["spearman@8"] == pytest.approx(
        embedding_metrics(truncated, "scored_pairs", train)["spearman"], abs=1e-3
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--matryoshka_dims", "32", "8", "--matryoshka_rotation", "{fit: before, refine: {steps: 10}}"],
         "set matryoshka_rotation.fit to after or both"),
        (["--matryoshka_rotation", "{refine: {steps: 10}}"], "matryoshka_rotation.refine needs matryoshka_dims"),
        (["--matryoshka_rotation", "{refine: {steps: -1}}"], "matryoshka_rotation.refine.steps must be >= 0"),
        (["--matryoshka_dims", "32", "8", "--matryoshka_rotation", "{refine: {steps: 5, temperature: 0}}"],
         "matryoshka_rotation.refine.temperature must be > 0"),
        (["--matryoshka_rotation", "before"], "fit: before trains the matryoshka_dims widths"),
        (["--pca_rotation", "true", "--rotation_refine_steps", "10"],
         "'pca_rotation' was replaced: write matryoshka_rotation: {fit: after}"),
    ],
)
def test_bad_refinement_settings_fail_before_any_model_is_loaded(tmp_path, capsys, flags, message):
    argv = ["--model_name_or_path", "missing-model", "--task", "pairs", "--train_data", "x.jsonl",
            "--output_dir", str(tmp_path), *flags]  # fmt: skip
    assert run_main(main, argv) == 2
    assert message in capsys.readouterr().err


def test_bad_sample_count_fails_before_any_model_is_loaded(tmp_path, capsys):
    argv = ["--model_name_or_path", "missing-model", "--task", "pairs", "--train_data", "x.jsonl",
            "--matryoshka_rotation", "{samples: 1}", "--output_dir", str(tmp_path)]  # fmt: skip
    assert run_main(main, argv) == 2
    assert "matryoshka_rotation.samples must be >= 2" in capsys.readouterr().err


# --- fit: before: training in the untrained model's principal axes ------------------------------------


def basis_run(tiny_bert_dir, data: dict, out, *flags: str):
    """A tiny LoRA scored_pairs run with Matryoshka 32/8 and evaluation before and after; returns its folder."""
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "scored_pairs", "--train_data", data["scored_pairs"],
            "--eval_data", data["scored_pairs"], "--output_dir", str(out), "--use_peft", "true", *FAST,
            "--matryoshka_dims", "32", "8", "--export_merged", "false", *flags]  # fmt: skip
    assert run_main(main, argv) == 0
    return out


def training_texts(data: dict) -> list[str]:
    train = load_sts_data(data["scored_pairs"])
    return list(dict.fromkeys([*train["sentence1"], *train["sentence2"]]))


def test_pca_basis_is_the_untrained_models_pca_and_is_in_place_from_the_first_evaluation(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    untrained = Embedder.load(tiny_bert_dir, device="cpu", show_progress=False)
    basis = pca_rotation(untrained.encode(training_texts(data)))
    out = basis_run(tiny_bert_dir, data, tmp_path / "run", "--matryoshka_rotation", "before")

    saved = Embedder.load(out, device="cpu", show_progress=False).rotation
    assert saved is not None and torch.allclose(saved.T @ saved, torch.eye(32), atol=1e-5)
    assert (saved - basis).abs().max() < 1e-4  # no rotation fitted after training: the basis itself is saved
    assert "fit: before" in (out / "README.md").read_text()
    # the evaluation before training already embedded in the basis: width 8 = the first 8 principal components
    untrained_in_basis = Embedder.load(tiny_bert_dir, device="cpu", show_progress=False, truncate_dim=8)
    untrained_in_basis.rotation = basis
    before = json.loads((out / "metrics.json").read_text())["before"]
    assert before["spearman@8"] == pytest.approx(
        embedding_metrics(untrained_in_basis, "scored_pairs", load_sts_data(data["scored_pairs"]))["spearman"],
        abs=1e-3,
    )


def test_pca_basis_changes_only_what_the_narrower_widths_train(tiny_bert_dir, tmp_path):
    """Cosine losses are blind to an orthogonal map, so with weight 0 on width 8 the basis changes nothing the
    model learns; with weight 1 on width 8 the truncated losses see the basis and the trained weights differ."""
    data = data_files(tmp_path)
    texts = sentences(7, offset=3)

    def unrotated(out) -> torch.Tensor:
        embedder = Embedder.load(out, device="cpu", show_progress=False)
        embedder.rotation = None
        return embedder.encode(texts)

    trained = {
        (weights, basis): unrotated(
            basis_run(tiny_bert_dir, data, tmp_path / f"w{weights}-{basis}", "--matryoshka_weights", "1", weights,
                      *(["--matryoshka_rotation", "before"] if basis == "true" else []))  # fmt: skip
        )
        for weights in ("0", "1")
        for basis in ("false", "true")
    }
    assert torch.allclose(trained[("0", "false")], trained[("0", "true")], atol=1e-5)
    assert (trained[("1", "false")] - trained[("1", "true")]).abs().max() > 1e-3


def test_fit_both_composes_the_rotation_after_training_with_the_basis(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    out = basis_run(tiny_bert_dir, data, tmp_path / "run", "--matryoshka_rotation", "both")
    rotated = Embedder.load(out, device="cpu", show_progress=False)
    rotation = rotated.rotation
    assert torch.allclose(rotation.T @ rotation, torch.eye(32), atol=1e-5)
    final = rotated.encode(training_texts(data))
    # the saved rotation puts the final model's embeddings on their own principal axes, in order: a second PCA
    # of them is the identity (up to noise in the trailing, nearly tied axes)
    again = pca_rotation(final)
    assert (again[:, :4] - torch.eye(32)[:, :4]).abs().max() < 1e-3
    # = the PCA of the trained model's own (unrotated) embeddings, each axis up to its sign
    rotated.rotation = None
    reference = pca_rotation(rotated.encode(training_texts(data)))
    assert (reference[:, :4] * rotation[:, :4]).sum(dim=0).abs().min() > 0.999


def test_a_resumed_pca_basis_run_fits_the_same_basis_from_the_untrained_weights(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    out = basis_run(tiny_bert_dir, data, tmp_path / "run", "--matryoshka_rotation", "before", "--save_steps", "2",
                    "--save_strategy", "steps")  # fmt: skip
    first = Embedder.load(out, device="cpu", show_progress=False).rotation
    basis_run(tiny_bert_dir, data, out, "--matryoshka_rotation", "before", "--save_steps", "2",
              "--save_strategy", "steps", "--max_steps", "4")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["train"]["global_step"], metrics["train"]["resumed_from_step"]) == (4, 2)
    resumed = Embedder.load(out, device="cpu", show_progress=False).rotation
    assert torch.equal(resumed, first)
