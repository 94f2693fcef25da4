"""train.embed losses and objective on one process, against hand computations of the published formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lorasmith.errors import ConfigError
from train.embed.batch import PAD_ID, EmbeddedBatch, GlobalBatch, text_ids
from train.embed.gather import gather_no_grad, gather_sizes, gather_with_grad
from train.embed.loss_spec import build_objective
from train.embed.losses import (
    AnglELoss,
    CoSENTLoss,
    CosineMSELoss,
    InBatchNegativesLoss,
    InfoNCELoss,
    angle_similarity,
)
from train.embed.tasks import embed_task

D = 6


def embeddings(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def info_nce_term(anchor, positive, negatives, t) -> float:
    """-log(exp(s_ap/t) / (exp(s_ap/t) + sum_n exp(s_an/t))), written out."""
    numerator = math.exp(cos(anchor, positive) / t)
    return -math.log(numerator / (numerator + sum(math.exp(cos(anchor, n) / t) for n in negatives)))


def pairs_batch(anchor_texts, candidate_texts, seed=0, scores=None) -> EmbeddedBatch:
    """Aligned batch: candidate i is anchor i's partner, further candidates are hard negatives."""
    return EmbeddedBatch.aligned(
        embeddings(len(anchor_texts), seed),
        embeddings(len(candidate_texts), seed + 1),
        text_ids(anchor_texts),
        text_ids(candidate_texts),
        scores=None if scores is None else torch.tensor(scores, dtype=torch.float64),
    )


def loss_of(loss, batch: EmbeddedBatch) -> float:
    return float(loss(GlobalBatch.single_process(batch)).loss)


def objective_of(task: str, loss=None, **options):
    """The objective a recipe with ``task`` and ``loss`` builds."""
    return build_objective(embed_task(task), loss, **options)


def multi_positive(
    anchor, candidates, anchor_ids, candidate_ids, positives: list[list[int]]
) -> EmbeddedBatch:
    """Tags: ``positives[i]`` lists the content ids of anchor ``i``'s tags, padded with -1 (as the collator does)."""
    width = max(len(ids) for ids in positives)
    positive_ids = torch.tensor([ids + [PAD_ID] * (width - len(ids)) for ids in positives], dtype=torch.int64)
    return EmbeddedBatch(anchor, candidates, anchor_ids, candidate_ids, positive_ids)


# --- content ids and batch construction ---------------------------------------------------------------


def test_text_ids_are_stable_63_bit_content_hashes():
    ids = text_ids(["hello", "tag: red", "hello"])
    assert ids.dtype == torch.int64
    assert ids.tolist() == [
        6042553977968695870,
        1250836941640010647,
        6042553977968695870,
    ]  # pinned across runs


def test_aligned_batch_takes_partner_or_anchor_ids_as_positives():
    batch = pairs_batch(["q0", "q1"], ["p0", "p1", "n0"])
    assert batch.pair_index.tolist() == [0, 1]
    assert batch.positive_ids.tolist() == [[i] for i in text_ids(["p0", "p1"]).tolist()]
    simcse = EmbeddedBatch.aligned(
        embeddings(2, 0),
        embeddings(2, 1),
        text_ids(["a", "b"]),
        text_ids(["a", "b"]),
        positive_is_anchor=True,
    )
    assert simcse.positive_ids.flatten().tolist() == text_ids(["a", "b"]).tolist()


def test_multi_positive_batch_pads_positive_ids_with_minus_one():
    red, blue = text_ids(["red", "blue"]).tolist()
    batch = multi_positive(
        embeddings(2, 0),
        embeddings(2, 1),
        text_ids(["x", "y"]),
        text_ids(["red", "blue"]),
        [[red, blue], [blue]],
    )
    assert batch.positive_ids.tolist() == [[red, blue], [blue, -1]]
    assert batch.pair_index is None


def test_embedded_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"EmbeddedBatch.candidate_ids has shape \(2,\), expected \(3,\)"):
        EmbeddedBatch(
            embeddings(2, 0), embeddings(3, 1), text_ids(["a", "b"]), text_ids(["a", "b"]), torch.zeros(2, 1)
        )


def test_gather_is_the_identity_without_a_process_group():
    t = embeddings(3, 0)
    assert gather_with_grad(t) is t
    assert gather_no_grad(t) is t
    assert gather_sizes(3) == [(3,)]


# --- InfoNCE ------------------------------------------------------------------------------------------


def test_infonce_with_hard_negatives_matches_the_formula():
    batch = pairs_batch(["q0", "q1", "q2"], ["p0", "p1", "p2", "n0", "n1", "n2"])
    c = batch.candidates
    expected = (
        sum(info_nce_term(batch.anchor[i], c[i], [c[j] for j in range(6) if j != i], 0.05) for i in range(3))
        / 3
    )
    assert loss_of(InfoNCELoss(temperature=0.05), batch) == pytest.approx(expected, rel=1e-12)


def test_infonce_duplicate_positive_text_is_not_a_negative():
    # p0 occurs twice: anchor 0's partner (row 0) and again as anchor 2's partner (row 2).
    batch = pairs_batch(["q0", "q1", "q2"], ["p0", "p1", "p0"])
    c = batch.candidates
    expected = (
        info_nce_term(batch.anchor[0], c[0], [c[1]], 0.1)
        + info_nce_term(batch.anchor[1], c[1], [c[0]], 0.1)  # p0 is one negative, scored at its first row
        + info_nce_term(batch.anchor[2], c[2], [c[1]], 0.1)
    ) / 3
    unmasked = (
        sum(info_nce_term(batch.anchor[i], c[i], [c[j] for j in range(3) if j != i], 0.1) for i in range(3))
        / 3
    )
    assert loss_of(InfoNCELoss(temperature=0.1), batch) == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(unmasked, rel=1e-3)
    telemetry = objective_of("pairs", {"infonce": {"temperature": 0.1}})(batch).telemetry
    # anchor 2's positive p0 would have been a negative at row 0; for anchor 0, row 2 is a second copy anyway
    assert telemetry["infonce/masked_false_negatives"] == 1
    assert telemetry["infonce/negatives_per_anchor"] == pytest.approx(1)


def test_infonce_multi_positive_tags_one_term_per_distinct_tag():
    tags = ["red", "blue", "green", "red"]  # "red" twice: its first occurrence (row 0) is the positive
    red, blue, green = text_ids(["red", "blue", "green"]).tolist()
    # a repeated id in a row counts once, padding (-1) never
    positives = [[red, blue, red], [green, -1, -1], [blue, -1, -1]]
    batch = EmbeddedBatch(
        embeddings(3, 0), embeddings(4, 1), text_ids(["x", "y", "z"]), text_ids(tags), torch.tensor(positives)
    )
    a, c = batch.anchor, batch.candidates
    expected = [
        info_nce_term(a[0], c[0], [c[2]], 0.05),  # x: red vs green (blue and the 2nd red are positives)
        info_nce_term(a[0], c[1], [c[2]], 0.05),  # x: blue vs green
        info_nce_term(a[1], c[2], [c[0], c[1]], 0.05),  # y: green vs red (once), blue
        info_nce_term(a[2], c[1], [c[0], c[2]], 0.05),  # z: blue vs red (once), green
    ]
    assert loss_of(InfoNCELoss(), batch) == pytest.approx(sum(expected) / 4, rel=1e-12)


def test_infonce_loss_does_not_depend_on_how_many_copies_of_a_candidate_the_batch_holds():
    # Two processes each de-duplicate their own tags, so "red" reaches the global batch twice; one process
    # de-duplicating the double batch holds it once. With equal embeddings for equal texts the loss must agree.
    red, blue, green = text_ids(["red", "blue", "green"]).tolist()
    once = embeddings(3, 1)  # red, blue, green
    twice = torch.cat([once, once[:1]])  # red, blue, green, red
    anchors, anchor_ids = embeddings(2, 0), text_ids(["x", "y"])
    positives = torch.tensor([[red, -1], [green, blue]])
    deduplicated = EmbeddedBatch(anchors, once, anchor_ids, text_ids(["red", "blue", "green"]), positives)
    repeated = EmbeddedBatch(anchors, twice, anchor_ids, text_ids(["red", "blue", "green", "red"]), positives)
    assert loss_of(InfoNCELoss(), repeated) == pytest.approx(loss_of(InfoNCELoss(), deduplicated), rel=1e-12)
    objective = objective_of("tags", {"infonce": {}})
    with_copy, without = objective(repeated).telemetry, objective(deduplicated).telemetry
    assert (with_copy.pop("global_candidates"), without.pop("global_candidates")) == (4, 3)  # rows encoded
    assert with_copy == pytest.approx(without)  # loss, top-1, negatives per anchor, masked false negatives


def test_infonce_positive_missing_from_candidates_is_an_error():
    batch = EmbeddedBatch(
        embeddings(1, 0), embeddings(1, 1), text_ids(["x"]), text_ids(["red"]), text_ids(["blue"])[:, None]
    )
    with pytest.raises(ValueError, match="not among the candidates"):
        loss_of(InfoNCELoss(), batch)


def test_infonce_symmetric_averages_both_directions_with_duplicates_masked():
    # Queries q0 and q3 share their positive p0; q0 appears twice as an anchor (rows 0 and 2).
    batch = pairs_batch(["q0", "q1", "q0", "q3"], ["p0", "p1", "p2", "p0", "n0"])
    a, c = batch.anchor, batch.candidates
    forward = [  # a negative content counts once, at its first row: p0 is c[0], never c[3]
        info_nce_term(a[0], c[0], [c[1], c[2], c[4]], 0.05),  # c[3] is p0 again
        info_nce_term(a[1], c[1], [c[0], c[2], c[4]], 0.05),
        info_nce_term(a[2], c[2], [c[0], c[1], c[4]], 0.05),
        info_nce_term(a[3], c[3], [c[1], c[2], c[4]], 0.05),  # c[0] is p0 again
    ]
    backward = [  # candidate -> anchors: anchors with the same text or the same partner text are not negatives
        info_nce_term(c[0], a[0], [a[1]], 0.05),  # a[2] is q0 again, a[3]'s partner is p0
        info_nce_term(c[1], a[1], [a[0], a[3]], 0.05),  # q0 counts once (a[0]; a[2] is its second copy)
        info_nce_term(c[2], a[2], [a[1], a[3]], 0.05),  # a[0] is q0 again
        info_nce_term(c[3], a[3], [a[1]], 0.05),  # a[0]'s partner is p0, a[2] is q0 whose first copy is a[0]
    ]
    expected = (sum(forward) / 4 + sum(backward) / 4) / 2
    assert loss_of(InfoNCELoss(symmetric=True), batch) == pytest.approx(expected, rel=1e-9)


def test_infonce_temperature_sharpens_the_softmax():
    anchors = embeddings(4, 0)
    batch = EmbeddedBatch.aligned(
        anchors, anchors + 0.1 * embeddings(4, 1), text_ids(list("abcd")), text_ids(list("ABCD"))
    )
    losses = [loss_of(InfoNCELoss(temperature=t), batch) for t in (1.0, 0.1, 0.01)]
    assert losses[0] > losses[1] > losses[2]  # positives rank first, so a lower temperature lowers the loss
    assert losses[2] < 1e-3


def test_infonce_single_anchor_has_zero_loss_and_finite_gradient():
    anchor = embeddings(1, 0).requires_grad_()
    batch = EmbeddedBatch.aligned(anchor, embeddings(1, 1), text_ids(["q"]), text_ids(["p"]))
    loss = InfoNCELoss()(GlobalBatch.single_process(batch)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(anchor.grad).all()


# --- in-batch negatives for scored pairs -------------------------------------------------------------------


def test_ibn_positives_are_pairs_above_threshold_and_duplicates_are_masked():
    # Pairs 0 and 2 score above 0.5; pair 3 sits at the threshold (not above); pairs 0 and 1 share sentence2.
    batch = pairs_batch(["a0", "a1", "a2", "a3"], ["b0", "b0", "b2", "b3"], scores=[0.9, 0.2, 0.7, 0.5])
    a, c = batch.anchor, batch.candidates
    expected = (
        info_nce_term(a[0], c[0], [c[2], c[3]], 0.05)  # c[1] has b0's content: not a negative
        + info_nce_term(a[2], c[2], [c[0], c[3]], 0.05)  # b0 counts once, at its first row c[0]
    ) / 2
    assert loss_of(InBatchNegativesLoss(), batch) == pytest.approx(expected, rel=1e-12)
    assert loss_of(InBatchNegativesLoss(threshold=0.4), batch) != pytest.approx(expected, rel=1e-3)


# --- CoSENT, AnglE, cosine MSE ------------------------------------------------------------------------------


def cosent_by_hand(similarities, scores, t) -> float:
    """log(1 + sum over (i, j) with y_i > y_j of exp((s_j - s_i) / t))."""
    total = 1.0
    for i, (s_i, y_i) in enumerate(zip(similarities, scores, strict=True)):
        for j, (s_j, y_j) in enumerate(zip(similarities, scores, strict=True)):
            if i != j and y_i > y_j:
                total += math.exp((s_j - s_i) / t)
    return math.log(total)


SCORES = [0.1, 0.8, 0.8, 0.4, 1.0]  # a tie: (1, 2) is not compared


def test_cosent_matches_the_formula():
    batch = pairs_batch([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)], scores=SCORES)
    similarities = [cos(batch.anchor[i], batch.candidates[i]) for i in range(5)]
    for t in (0.05, 0.5):
        assert loss_of(CoSENTLoss(temperature=t), batch) == pytest.approx(
            cosent_by_hand(similarities, SCORES, t)
        )


def test_angle_similarity_is_the_complex_quotient():
    a, b = embeddings(4, 0), embeddings(4, 1)
    a_n, b_n = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    za = torch.complex(*a_n.chunk(2, dim=-1))
    zb = torch.complex(*b_n.chunk(2, dim=-1))
    quotient = (za * zb.conj()).sum(dim=-1)  # sum of (a / b) * |b|^2 per complex dimension, rows of unit norm
    torch.testing.assert_close(angle_similarity(a, b), (quotient.real + quotient.imag).abs())


def test_angle_loss_is_cosent_ranking_on_angle_similarity():
    batch = pairs_batch([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)], scores=SCORES)
    similarities = angle_similarity(batch.anchor, batch.candidates[:5]).tolist()
    assert loss_of(AnglELoss(), batch) == pytest.approx(cosent_by_hand(similarities, SCORES, 0.05))


@pytest.mark.slow  # importing sentence-transformers takes ~10 s
def test_cosent_and_angle_equal_sentence_transformers():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    batch = pairs_batch([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)], scores=SCORES)
    pair, labels = [batch.anchor, batch.candidates], batch.scores
    reference_cosent = st_losses.CoSENTLoss(model=None, scale=20.0).compute_loss_from_embeddings(pair, labels)
    reference_angle = st_losses.AnglELoss(model=None, scale=20.0).compute_loss_from_embeddings(pair, labels)
    assert loss_of(CoSENTLoss(temperature=0.05), batch) == pytest.approx(float(reference_cosent), rel=1e-12)
    assert loss_of(AnglELoss(temperature=0.05), batch) == pytest.approx(float(reference_angle), rel=1e-12)


def test_cosine_mse_is_the_mean_squared_error_of_cosines():
    batch = pairs_batch([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)], scores=SCORES)
    expected = sum((cos(batch.anchor[i], batch.candidates[i]) - SCORES[i]) ** 2 for i in range(5)) / 5
    assert loss_of(CosineMSELoss(), batch) == pytest.approx(expected, rel=1e-12)


# --- objective ---------------------------------------------------------------------------------------------


def test_objective_is_the_weighted_sum_and_skips_zero_weights():
    batch = pairs_batch([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)], scores=SCORES)
    objective = objective_of(
        "scored_pairs", {"cosent": {"weight": 1, "temperature": 0.05}, "ibn": {"weight": 0}, "angle": 0.5}
    )
    output = objective(batch)
    assert set(output.components) == {"cosent", "angle"}
    assert output.components["cosent"] == pytest.approx(loss_of(CoSENTLoss(0.05), batch))
    assert float(output.loss) == pytest.approx(output.components["cosent"] + 0.5 * output.components["angle"])
    assert output.telemetry["global_batch_size"] == 5


def test_objective_top1_accuracy_counts_anchors_whose_best_candidate_is_positive():
    anchors = embeddings(4, 0)
    candidates = anchors.clone()
    candidates[3] = -anchors[3]  # anchor 3's partner points away: its best candidate is another one
    batch = EmbeddedBatch.aligned(anchors, candidates, text_ids(list("abcd")), text_ids(list("ABCD")))
    telemetry = objective_of("pairs", "infonce")(batch).telemetry
    assert telemetry["infonce/top1_accuracy"] == 0.75
    assert telemetry["infonce/negatives_per_anchor"] == 3


def test_loss_recipe_temperature_default_applies_to_losses_without_their_own():
    objective = objective_of(
        "scored_pairs", {"cosent": 1, "angle": {"temperature": 0.2}, "cosine_mse": 1}, temperature=0.1
    )
    assert objective.losses["cosent"].temperature == 0.1
    assert objective.losses["angle"].temperature == 0.2
    assert type(objective_of("scored_pairs").losses["cosent"]) is CoSENTLoss
    assert objective_of("tags").losses["infonce"].temperature == 0.05


@pytest.mark.parametrize(
    ("task", "loss", "message"),
    [
        (
            "pairs",
            "infonse",
            r"unknown loss 'infonse' \(did you mean 'infonce'\?\)\. Known losses: infonce, ibn",
        ),
        ("pairs", "cosent", r"loss 'cosent' needs gold similarity scores, which task 'pairs' does not have"),
        ("scored_pairs", "infonce", r"for task scored_pairs use 'ibn'"),
        ("scored_pairs", {"cosent": 0, "angle": {"weight": 0}}, r"every loss has weight 0 \(cosent, angle\)"),
        (
            "tags",
            {"infonce": {"symmetric": True}},
            r"symmetric needs one aligned partner per anchor, which task 'tags'",
        ),
        (
            "pairs",
            {"infonce": {"temprature": 0.1}},
            r"unknown option\(s\) temprature \(did you mean 'temperature'\?\)",
        ),
        ("pairs", {"infonce": {"temperature": 0}}, r"temperature must be a number > 0, got 0"),
        ("pairs", {"infonce": {"weight": -1}}, r"weight must be a number >= 0, got -1"),
        ("pairs", {"infonce": "high"}, r"expected a weight or a mapping of options"),
        ("pair", "infonce", r"unknown contrastive task 'pair' \(did you mean 'pairs'\?\)"),
        ("labeled", "infonce", r"unknown contrastive task 'labeled'.*Known tasks: simcse_unsup, pairs"),
        ("pairs", [], r"loss is empty"),
    ],
)
def test_loss_recipe_rejects_invalid_configs_with_actionable_messages(task, loss, message):
    with pytest.raises(ConfigError, match=message):
        objective_of(task, loss)
