"""``matryoshka_rotation: {refine: {objective: training_loss}}``: the PCA rotation is refined on the run's own loss at its narrower
Matryoshka widths, on batches of cached training-row embeddings laid out as in training. The result stays
orthogonal (full-width cosines unchanged), lowers the narrow-width loss (checked here by a hand-written InfoNCE over
every row), is seeded, works for every task layout and for several datasets, and bad settings fail before any model
is loaded."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_embed_train import FAST, data_files
from test_pca_rotation import saved_rotation

from lorasmith.process import run_main
from train.embed import main
from train.embed.batch import EmbeddedBatch
from train.embed.collator import ContrastiveCollator
from train.embed.loss_spec import build_objective
from train.embed.matryoshka import matryoshka_dims
from train.embed.rotation import pca_rotation, refine_rotation_on_loss, rows_texts
from train.embed.tasks import embed_task
from train.embed.trainer import embedded_batch

WIDTH = 12


def hidden_triplets(n: int = 48, signal: int = 4, seed: int = 0):
    """``(rows, by_text)``: triplet rows ``q{i} -> d{i}``, negative ``d{i+1}`` (another row's positive), and text ->
    its ``(WIDTH,)`` embedding. A query and its document share a random vector in the last ``signal``
    dimensions (standard deviation 1) while the first ones hold independent noise of standard deviation 2 .. 1.5, so
    the PCA rotation puts the noise first and a narrow width cannot match queries to documents."""
    generator = torch.Generator().manual_seed(seed)
    rows = [{"anchor": f"q{i}", "positive": f"d{i}", "negatives": [f"d{(i + 1) % n}"]} for i in range(n)]
    shared = torch.randn(n, signal, generator=generator)
    scale = torch.linspace(2, 1.5, WIDTH - signal)
    queries = torch.cat([torch.randn(n, WIDTH - signal, generator=generator) * scale, shared], dim=1)
    documents = torch.cat(
        [torch.randn(n, WIDTH - signal, generator=generator) * scale, shared + 0.1 * torch.randn(n, signal, generator=generator)],
        dim=1,
    )
    by_text = {**{f"q{i}": queries[i] for i in range(n)}, **{f"d{i}": documents[i] for i in range(n)}}
    return rows, by_text


def objective(dims=(WIDTH, 6, 3), weights=(1.0, 1.0, 2.0), task: str = "triplets", loss=None):
    return build_objective(embed_task(task), loss, temperature=0.05, matryoshka=matryoshka_dims(list(dims), list(weights)))


def cached(parts, by_text):
    """(texts, (N, WIDTH) embeddings) of the parts' texts, as ``fit_rotation`` gives them to the refinement."""
    texts = rows_texts(parts)
    return texts, torch.stack([by_text[text] for text in texts])


def hand_infonce(rows, by_text, rotation, width: int, temperature: float = 0.05) -> float:
    """Mean InfoNCE of every query against every document (all rows at once) on the first ``width`` rotated
    dimensions, computed in float64 independently of the product's losses."""
    queries = torch.stack([by_text[row["anchor"]] for row in rows]).double() @ rotation.double()
    documents = torch.stack([by_text[row["positive"]] for row in rows]).double() @ rotation.double()
    logits = F.normalize(queries[:, :width], dim=-1) @ F.normalize(documents[:, :width], dim=-1).T / temperature
    return float(F.cross_entropy(logits, torch.arange(len(rows))))


def test_refining_on_the_training_loss_keeps_full_width_and_lowers_the_narrow_loss():
    rows, by_text = hidden_triplets()
    parts = [(ContrastiveCollator(None, embed_task("triplets"), 16), rows)]
    texts, embeddings = cached(parts, by_text)
    start = pca_rotation(embeddings)
    refined = refine_rotation_on_loss(start, embeddings, texts, parts, objective(), steps=300, seed=0, batch_size=32)
    assert refined.shape == (WIDTH, WIDTH) and refined.dtype == torch.float32
    assert torch.allclose(refined.T @ refined, torch.eye(WIDTH), atol=1e-5)
    vectors = F.normalize(embeddings, dim=-1)
    assert torch.allclose((vectors @ refined) @ (vectors @ refined).T, vectors @ vectors.T, atol=1e-5)
    assert hand_infonce(rows, by_text, refined, 3) < 0.7 * hand_infonce(rows, by_text, start, 3)
    assert hand_infonce(rows, by_text, refined, 6) < 0.8 * hand_infonce(rows, by_text, start, 6)
    assert hand_infonce(rows, by_text, refined, WIDTH) == pytest.approx(hand_infonce(rows, by_text, start, WIDTH), abs=1e-4)

    short = refine_rotation_on_loss(start, embeddings, texts, parts, objective(), steps=20, seed=0, batch_size=32)
    again = refine_rotation_on_loss(start, embeddings, texts, parts, objective(), steps=20, seed=0, batch_size=32)
    assert torch.equal(again, short)  # seeded: every process computes the same matrix
    other = refine_rotation_on_loss(start, embeddings, texts, parts, objective(), steps=20, seed=1, batch_size=32)
    assert not torch.equal(other, short)
    # nothing to refine: no steps, or no narrower width of weight > 0
    assert refine_rotation_on_loss(start, embeddings, texts, parts, objective(), steps=0, seed=0) is start
    full_only = objective(dims=(WIDTH, 3), weights=(1.0, 0.0))
    assert refine_rotation_on_loss(start, embeddings, texts, parts, full_only, steps=20, seed=0) is start


def test_the_narrower_objective_keeps_the_losses_and_weights_of_the_narrow_widths_only():
    generator = torch.Generator().manual_seed(0)
    anchor, candidates = torch.randn(8, WIDTH, generator=generator), torch.randn(8, WIDTH, generator=generator)
    ids = torch.arange(16)
    batch = EmbeddedBatch.aligned(anchor, candidates, ids[:8], ids[8:])
    whole = objective(dims=(WIDTH, 6, 3), weights=(1.0, 0.0, 2.0), task="pairs")
    narrow = whole.narrower_than(WIDTH)
    out = narrow(batch, across_processes=False)
    assert list(out.components) == ["infonce@3"]
    assert out.value == pytest.approx(2.0 * whole(batch, across_processes=False).components["infonce@3"])
    assert objective(dims=(WIDTH,), weights=(1.0,), task="pairs").narrower_than(WIDTH) is None
    assert build_objective(embed_task("pairs"), None).narrower_than(WIDTH) is None


def scored_rows(n: int = 40, seed: int = 0):
    """Scored pairs whose gold score is the cosine of hidden low-variance vectors (noise first, as above)."""
    generator = torch.Generator().manual_seed(seed)
    left, right = torch.randn(n, 4, generator=generator), torch.randn(n, 4, generator=generator)
    right = torch.where(torch.rand(n, 1, generator=generator) < 0.5, left + 0.3 * right, right)
    scores = (F.cosine_similarity(left, right) + 1) / 2
    scale = torch.linspace(4, 2, WIDTH - 4)
    noise = lambda: torch.randn(n, WIDTH - 4, generator=generator) * scale  # noqa: E731
    by_text = {**{f"a{i}": v for i, v in enumerate(torch.cat([noise(), left], 1))},
               **{f"b{i}": v for i, v in enumerate(torch.cat([noise(), right], 1))}}  # fmt: skip
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "score": float(scores[i])} for i in range(n)]
    return rows, by_text


def tag_rows(n: int = 40, tags: int = 5, seed: int = 0):
    """Texts whose tag (one of ``tags``) is carried by hidden low-variance dimensions shared with the tag text."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(tags, 4, generator=generator)
    scale = torch.linspace(4, 2, WIDTH - 4)
    labels = [i % tags for i in range(n)]
    by_text = {f"t{i}": torch.cat([torch.randn(WIDTH - 4, generator=generator) * scale,
                                   centres[label] + 0.3 * torch.randn(4, generator=generator)])
               for i, label in enumerate(labels)}  # fmt: skip
    by_text.update({f"tag{k}": torch.cat([torch.randn(WIDTH - 4, generator=generator) * scale, centres[k]]) for k in range(tags)})
    return [{"text": f"t{i}", "tags": [f"tag{label}"]} for i, label in enumerate(labels)], by_text


def whole_loss(parts, by_text, rotation, narrow) -> float:
    """The narrow objective on each part's rows as one batch (mean over the parts)."""
    total = 0.0
    for collator, rows in parts:
        roles = collator.task.roles(rows)
        vectors = torch.stack([by_text[text] for text in collator.texts(roles)]) @ rotation
        b = len(roles.anchors)
        batch = embedded_batch(collator.task, vectors[:b], vectors[b:], collator.labels(roles))
        total += float(narrow(batch, across_processes=False).value)
    return total / len(parts)


@pytest.mark.parametrize("case", ["scored_pairs", "tags", "triplets+tags"])
def test_every_task_layout_and_several_datasets_are_refined_on_their_own_loss(case):
    triplets, triplet_texts = hidden_triplets(n=40)
    scored, scored_texts = scored_rows()
    tagged, tag_texts = tag_rows()
    collator = {name: ContrastiveCollator(None, embed_task(name), 16) for name in ("triplets", "scored_pairs", "tags")}
    by_text = {**triplet_texts, **scored_texts, **tag_texts}
    parts = {
        "scored_pairs": [(collator["scored_pairs"], scored)],
        "tags": [(collator["tags"], tagged)],
        "triplets+tags": [(collator["triplets"], triplets), (collator["tags"], tagged)],
    }[case]
    whole = objective(task=parts[0][0].task.name, loss="cosent" if case == "scored_pairs" else None)
    texts, embeddings = cached(parts, by_text)
    start = pca_rotation(embeddings)
    refined = refine_rotation_on_loss(start, embeddings, texts, parts, whole, steps=400, seed=0, batch_size=16)
    assert torch.allclose(refined.T @ refined, torch.eye(WIDTH), atol=1e-5)
    narrow = whole.narrower_than(WIDTH)
    assert whole_loss(parts, by_text, refined, narrow) < 0.9 * whole_loss(parts, by_text, start, narrow)
    if case == "triplets+tags":  # both datasets are drawn: not the refinement of the first alone
        first_only = refine_rotation_on_loss(start, embeddings, texts, parts[:1], whole, steps=400, seed=0, batch_size=16)
        assert not torch.allclose(first_only, refined, atol=1e-4)


def test_a_run_refined_on_its_training_loss_saves_a_rotation_with_a_lower_narrow_loss_than_pca(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "pairs", "--train_data", data["pairs"],
            "--output_dir", str(out), "--use_peft", "true", *FAST, "--matryoshka_dims", "32", "8",
            "--matryoshka_rotation", "{fit: after, refine: {steps: 60, objective: training_loss}}",
            "--export_merged", "false"]  # fmt: skip
    assert run_main(main, argv) == 0
    assert "`objective: training_loss`" in (out / "README.md").read_text()
    embedder, rotation = saved_rotation(out)
    rows = [json.loads(line) for line in open(data["pairs"])]
    texts = list(dict.fromkeys([row["anchor"] for row in rows] + [row["positive"] for row in rows]))
    by_text = dict(zip(texts, embedder.encode(texts), strict=True))
    pca = pca_rotation(torch.stack(list(by_text.values())))
    assert hand_infonce(rows, by_text, rotation, 8) < 0.5 * hand_infonce(rows, by_text, pca, 8)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "pairs", "--matryoshka_rotation", "{refine: {steps: 5, objective: labels}}"],
         "matryoshka_rotation.refine.objective must be one of neighbours, training_loss; got 'labels'"),
        (["--task", "simcse_unsup", "--matryoshka_rotation", "{refine: {steps: 5, objective: training_loss}}"],
         "task simcse_unsup pairs each text with itself"),
    ],
)  # fmt: skip
def test_bad_refine_objective_settings_fail_before_any_model_is_loaded(tmp_path, capsys, flags, message):
    argv = ["--model_name_or_path", "missing-model", "--train_data", "x.jsonl", "--output_dir", str(tmp_path),
            "--matryoshka_dims", "32", "8", *flags]  # fmt: skip
    assert run_main(main, argv) == 2
    assert message in capsys.readouterr().err


def test_a_simcse_dataset_among_several_is_named_when_refining_on_the_training_loss(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sort_keys=False, data={
        "task": "pairs", "output_dir": str(tmp_path / "o"), "model_name_or_path": "missing",
        "matryoshka_dims": [32, 8], "matryoshka_rotation": {"refine": {"steps": 5, "objective": "training_loss"}},
        "train_data": {"qa": "qa.jsonl", "wiki": {"data": "wiki.txt", "task": "simcse_unsup"}}}))  # fmt: skip
    assert run_main(main, ["--config", str(recipe)]) == 2
    assert "train_data 'wiki' (task simcse_unsup)" in capsys.readouterr().err
