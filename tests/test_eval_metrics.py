"""eval.metrics against their references: sklearn.metrics, scipy.stats, and hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from retrieval_reference import (  # tests/ is on sys.path (conftest.py)
    hit_rate_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    retrieval_metrics,
)
from scipy import stats
from sklearn import metrics as skm

from eval.metrics.classification import classification_metrics, expected_calibration_error
from eval.metrics.correlation import pearson, spearman
from eval.metrics.retrieval import exact_topk, topk_retrieval_metrics


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _graded_problem(rng, queries=40, candidates=25, tied=False):
    scores = (
        rng.integers(0, 4, size=(queries, candidates)).astype(float)
        if tied
        else rng.normal(size=(queries, candidates))
    )
    relevance = rng.integers(0, 4, size=(queries, candidates)) * (rng.random((queries, candidates)) < 0.3)
    relevance[:, 0] = np.maximum(relevance[:, 0], 1)  # every query has a relevant candidate
    return scores, relevance


# ---- retrieval ----


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("k", [1, 3, 10, 25, 40])
def test_ndcg_matches_sklearn_including_ties_and_k_beyond_candidates(rng, tied, k):
    scores, relevance = _graded_problem(rng, tied=tied)
    expected = skm.ndcg_score(relevance, scores, k=k)
    assert ndcg_at_k(scores, relevance, k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_ignore_ties_differs_from_average_only_when_scores_tie(rng):
    scores, relevance = _graded_problem(rng, tied=True)
    ignoring = ndcg_at_k(scores, relevance, 5, ignore_ties=True)
    assert ignoring != pytest.approx(ndcg_at_k(scores, relevance, 5))
    # ignore_ties=True in sklearn sorts with argsort's (unstable) order; compare on tie-free data instead
    scores, relevance = _graded_problem(rng)
    assert ndcg_at_k(scores, relevance, 5, ignore_ties=True) == pytest.approx(
        skm.ndcg_score(relevance, scores, k=5)
    )


def test_queries_without_relevant_candidates_are_excluded_from_the_mean(rng):
    scores, relevance = _graded_problem(rng)
    relevance[:5] = 0
    expected = skm.ndcg_score(relevance[5:], scores[5:], k=10)
    assert ndcg_at_k(scores, relevance, 10) == pytest.approx(expected, abs=1e-12)
    per_query = recall_at_k(scores, relevance, 10, per_query=True)
    assert torch.isnan(per_query[:5]).all() and not torch.isnan(per_query[5:]).any()
    metrics = retrieval_metrics(scores, relevance, ks=(1, 10))
    assert metrics["num_queries"] == 40 and metrics["num_queries_without_relevant"] == 5


def _reference_ranked_metrics(scores, relevance, k):
    """Brute force per query, ties broken by candidate index (stable sort)."""
    recall, precision, mrr, average_precision, hit = [], [], [], [], []
    for row_scores, row_rel in zip(scores, relevance, strict=True):
        order = sorted(range(len(row_scores)), key=lambda i: (-row_scores[i], i))[:k]
        relevant = row_rel > 0
        flags = [bool(relevant[i]) for i in order]
        recall.append(sum(flags) / relevant.sum())
        precision.append(sum(flags) / k)
        hit.append(float(any(flags)))
        mrr.append(next((1 / (r + 1) for r, f in enumerate(flags) if f), 0.0))
        found, ap = 0, 0.0
        for r, f in enumerate(flags):
            if f:
                found += 1
                ap += found / (r + 1)
        average_precision.append(ap / relevant.sum())
    return {
        name: float(np.mean(v))
        for name, v in dict(
            recall=recall, precision=precision, mrr=mrr, map=average_precision, hit_rate=hit
        ).items()
    }


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_rank_metrics_match_brute_force(rng, tied, k):
    scores, relevance = _graded_problem(rng, tied=tied)
    expected = _reference_ranked_metrics(scores, relevance, k)
    assert recall_at_k(scores, relevance, k) == pytest.approx(expected["recall"])
    assert precision_at_k(scores, relevance, k) == pytest.approx(expected["precision"])
    assert mrr_at_k(scores, relevance, k) == pytest.approx(expected["mrr"])
    assert map_at_k(scores, relevance, k) == pytest.approx(expected["map"])
    assert hit_rate_at_k(scores, relevance, k) == pytest.approx(expected["hit_rate"])


def test_hand_computed_ranking():
    scores = [[0.9, 0.8, 0.7, 0.6]]
    relevance = [[0, 1, 0, 1]]
    metrics = retrieval_metrics(scores, relevance, ks=(1, 2, 4))
    assert metrics["recall@1"] == 0 and metrics["recall@2"] == 0.5 and metrics["recall@4"] == 1
    assert metrics["precision@2"] == 0.5 and metrics["mrr@4"] == 0.5 and metrics["hit_rate@1"] == 0
    assert metrics["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))


def test_retrieval_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=">= 0"):
        retrieval_metrics(np.zeros((1, 3)), -np.ones((1, 3)))


def test_exact_topk_equals_full_sort(rng):
    queries = torch.tensor(rng.normal(size=(37, 16)), dtype=torch.float32)
    corpus = torch.tensor(rng.normal(size=(503, 16)), dtype=torch.float32)
    scores, indices = exact_topk(queries, corpus, k=10, chunk_size=64, query_chunk_size=8)
    full = queries @ corpus.T
    expected_scores, expected_indices = full.sort(dim=1, descending=True)
    assert torch.equal(indices, expected_indices[:, :10])
    assert torch.allclose(scores, expected_scores[:, :10])
    _, all_indices = exact_topk(queries, corpus[:4], k=10, chunk_size=3)
    assert all_indices.shape == (37, 4)


def test_topk_metrics_with_qrels_equal_dense_metrics(rng):
    scores, relevance = _graded_problem(rng, queries=20, candidates=30)
    corpus_ids = [f"d{i}" for i in range(30)]
    query_ids = [f"q{i}" for i in range(20)]
    qrels = {
        q: {corpus_ids[c]: int(g) for c, g in enumerate(row) if g > 0}
        for q, row in zip(query_ids, relevance, strict=True)
    }
    qrels["unjudged-extra"] = {"d1": 1}  # queries absent from the run are ignored
    _, indices = exact_topk(torch.tensor(scores), torch.eye(30, dtype=torch.float64), k=10)
    from_topk = topk_retrieval_metrics(indices, query_ids, corpus_ids, qrels, ks=(1, 5, 10))
    dense = retrieval_metrics(scores, relevance, ks=(1, 5, 10))
    for key, value in dense.items():
        assert from_topk[key] == pytest.approx(value), key


def test_topk_metrics_skip_queries_without_qrels():
    corpus_ids = ["a", "b"]
    metrics = topk_retrieval_metrics(
        torch.tensor([[1, 0], [0, 1]]), ["q1", "q2"], corpus_ids, {"q1": {"b": 1}}, ks=(1,)
    )
    assert metrics["num_queries"] == 1 and metrics["recall@1"] == 1.0


# ---- correlation ----


def test_correlations_match_scipy(rng):
    predicted, gold = rng.normal(size=200), rng.normal(size=200)
    gold[:50] = np.round(gold[:50])  # ties
    assert spearman(predicted, gold) == pytest.approx(stats.spearmanr(predicted, gold).statistic)
    assert pearson(predicted, gold) == pytest.approx(stats.pearsonr(predicted, gold).statistic)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


# ---- classification ----


@pytest.mark.parametrize("num_labels", [2, 4])
def test_classification_metrics_match_sklearn(rng, num_labels):
    y_true = rng.integers(0, num_labels, size=300)
    probabilities = rng.dirichlet(np.ones(num_labels), size=300)
    y_pred = probabilities.argmax(axis=1)
    names = [f"label{i}" for i in range(num_labels)]
    result = classification_metrics(y_true, y_pred, names, probabilities)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for average in ("macro", "micro", "weighted"):
        assert result[f"f1_{average}"] == pytest.approx(skm.f1_score(y_true, y_pred, average=average))
        assert result[f"precision_{average}"] == pytest.approx(
            skm.precision_score(y_true, y_pred, average=average)
        )
        assert result[f"recall_{average}"] == pytest.approx(skm.recall_score(y_true, y_pred, average=average))
    assert ("f1" in result) == (num_labels == 2)
    if num_labels == 2:
        assert result["f1"] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert result["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    per_class_f1 = skm.f1_score(y_true, y_pred, average=None)
    assert [result["per_class"][n]["f1"] for n in names] == pytest.approx(per_class_f1.tolist())
    assert sum(result["per_class"][n]["support"] for n in names) == 300


def test_single_class_present_keeps_every_label():
    result = classification_metrics([0, 0, 0], [0, 0, 1], ["neg", "pos", "neutral"])
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert result["per_class"]["pos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics([0, 5], [0, 0], ["a", "b", "c"])


def test_multi_label_metrics_match_sklearn(rng):
    y_true = rng.integers(0, 2, size=(100, 3))
    probabilities = rng.random((100, 3))
    y_pred = (probabilities >= 0.5).astype(int)
    result = classification_metrics(y_true, y_pred, ["a", "b", "c"], probabilities)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["f1_micro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="micro"))
    assert np.array(result["confusion_matrix"]).shape == (3, 2, 2)


def test_expected_calibration_error():
    # two bins: confidence 0.9 (100% right) and 0.6 (50% right) -> 0.5*0.1 + 0.5*0.1
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y_true = np.array([0, 1, 0, 0])
    assert expected_calibration_error(y_true, probabilities, n_bins=10) == pytest.approx(0.1)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error([0, 1, 2], perfect) == 0.0
