"""Contrastive and similarity-ranking losses on a :class:`~train.embed.batch.GlobalBatch`.

Every loss is a :class:`ContrastiveLoss`: it declares what it reads from the batch (``needs``, a
:class:`BatchNeeds`) and its ``forward(view)`` returns a :class:`LossOutput`: **this process's share** of the
big-batch loss, and local statistics. The mean over processes of the shares is the loss of the whole global
batch, and (with the autograd gather and DDP's gradient averaging, see ``gather.py``) so is the gradient. On
one process the share *is* the loss. Two families:

* **In-batch softmax losses** (:class:`InfoNCELoss`, :class:`InBatchNegativesLoss`): each term belongs to
  one local anchor and is scored against *all* gathered candidates. A process holding ``T_r`` of the
  ``T = sum_r T_r`` terms returns ``sum(its terms) * world_size / T`` (``T`` exchanged as a no-grad count),
  so the mean over processes is ``sum(all terms) / T`` even when processes hold different numbers of
  terms (texts with 1 or 5 tags, pairs below the positive threshold, a short last batch).
* **Whole-batch ranking losses** (:class:`CoSENTLoss`, :class:`AnglELoss`, :class:`CosineMSELoss`) compare
  every aligned pair with every other pair, so each process computes the *full* global loss from the
  gathered pairs (identical on every process, so DDP's gradient average is the big batch's;
  ``tests/test_contrastive_distributed.py`` checks it against one process).

Similarities are cosines (embeddings are L2-normalised inside the losses). ``temperature`` ``t`` divides
the cosine before the softmax / ranking: ``t = 0.05`` is ``scale = 20`` in sentence-transformers; smaller
``t`` sharpens the distribution (harder negatives weigh more).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.embed.batch import PAD_ID, BatchNeeds, GlobalBatch
from train.embed.gather import sum_over_ranks


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


@dataclass
class LossOutput:
    """One loss on one step.

    Attributes:
        loss: scalar, this process's share of the big-batch loss (mean over processes = big-batch loss).
        stats: local sums without gradient (float64 scalars) that add up over processes; the loss's
            :meth:`ContrastiveLoss.summarize` turns their global sums into logged numbers. Empty for losses that
            log nothing besides their value.
    """

    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class ContrastiveLoss(nn.Module):
    """The interface of every loss.

    - ``needs``: a :class:`BatchNeeds`, what the objective must gather and what the task must provide (an
      instance attribute when it depends on the options, e.g. InfoNCE's ``symmetric``);
    - ``forward(view: GlobalBatch) -> LossOutput``: this process's share of the loss, and local statistics;
    - ``summarize(sums) -> dict``: logged numbers from the statistics summed over processes.
    """

    needs: BatchNeeds = BatchNeeds()

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Logged numbers (global) from the sums over processes of :attr:`LossOutput.stats`; none by default."""
        return {}


def share_of_global_mean(term_losses: Tensor, world_size: int) -> Tensor:
    """This process's share of the global mean of per-term losses: ``sum(term_losses) * world_size / T``,
    ``T`` the number of terms on all processes (0 terms anywhere -> 0, still attached to the graph)."""
    count = torch.tensor(term_losses.numel(), dtype=torch.int64, device=term_losses.device)
    if world_size > 1:
        count = sum_over_ranks(count)
    return term_losses.sum() * (world_size / max(int(count), 1))


@dataclass
class SoftmaxTerms:
    """The terms of an in-batch softmax over ``Q`` queries and ``K`` keys, plus their local statistics.

    Attributes:
        losses: ``(T,)`` per-term loss ``-log(exp(s_pos/t) / (exp(s_pos/t) + sum_neg exp(s_neg/t)))``.
        stats: local sums (no gradient) over the queries that have at least one term: ``queries``,
            ``top1_correct`` (the best-scoring key is one of the query's positives), ``negatives`` (distinct
            contents left as negatives after masking) and ``masked_false_negatives`` (distinct contents that
            would have been negatives but carry one of the query's positives, other than the term's own
            positive row: a duplicate of the positive text elsewhere in the global batch).
    """

    losses: Tensor
    stats: dict[str, Tensor]


def first_occurrences(ids: Tensor) -> Tensor:
    """Bool of ``ids``' shape ``(..., K)``: True at the first occurrence of each distinct id along the last dim."""
    earlier_same = (ids[..., :, None] == ids[..., None, :]).tril(diagonal=-1)  # (..., K, K): j < i has i's id
    return ~earlier_same.any(dim=-1)


def softmax_terms(
    queries: Tensor,
    keys: Tensor,
    key_ids: Tensor,
    term_query: Tensor,
    term_key: Tensor,
    is_positive: Tensor,
    temperature: float,
) -> SoftmaxTerms:
    """In-batch softmax terms with positives masked out of the negatives and each negative content counted once.

    The negatives of a query are the *distinct contents* among the keys that are none of its positives: a
    text present twice in the global batch (a tag brought by two processes, a repeated sentence) is one
    negative, scored at its first row. Which copies a batch holds therefore does not change the loss:
    tags de-duplicated per process on 2 processes give the loss of one process de-duplicating the double batch.

    Args:
        queries: ``(Q, D)`` query embeddings.
        keys: ``(K, D)`` key embeddings.
        key_ids: ``(K,)`` content ids of the keys.
        term_query: ``(T,)`` query row of each term.
        term_key: ``(T,)`` key row of each term's positive.
        is_positive: ``(Q, K)`` bool, True where the key has the content of one of the query's positives;
            such keys are never negatives. Must be True at every ``(term_query, term_key)``.
        temperature: cosine similarities are divided by it.
    """
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / temperature  # (Q, K)
    first = first_occurrences(key_ids)  # (K,)
    is_negative = ~is_positive & first[None, :]  # (Q, K)
    negative_lse = torch.logsumexp(logits.masked_fill(~is_negative, float("-inf")), dim=1)  # (Q,)
    positive_logit = logits[term_query, term_key]  # (T,)
    # softplus(lse_neg - pos) = -log(exp(pos) / (exp(pos) + sum exp(neg)))
    losses = F.softplus(negative_lse[term_query] - positive_logit)  # (T,)
    with torch.no_grad():
        has_term = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
        has_term[term_query] = True
        is_term_key = torch.zeros_like(is_positive)
        is_term_key[term_query, term_key] = True
        best_key = logits.argmax(dim=1)
        rows = torch.arange(queries.shape[0], device=queries.device)
        masked = is_positive & first[None, :] & ~is_term_key  # (Q, K)
        stats = {
            "queries": has_term.sum(),
            "top1_correct": (is_positive[rows, best_key] & has_term).sum(),
            "negatives": (is_negative & has_term[:, None]).sum(),
            "masked_false_negatives": (masked & has_term[:, None]).sum(),
        }
    return SoftmaxTerms(losses, {name: value.to(torch.float64) for name, value in stats.items()})


class InfoNCELoss(ContrastiveLoss):
    """Multi-positive InfoNCE (MultipleNegativesRankingLoss) with content-aware masking of false negatives.

    Inputs (from the :class:`GlobalBatch`): local ``anchor (B, D)`` and ``positive_ids (B, P)``, global
    ``candidates (M_g, D)`` and ``candidate_ids (M_g,)``; ``pair_index`` for aligned tasks.

    Every distinct id in an anchor's ``positive_ids`` row (``-1`` padding skipped) is one term
    ``-log(exp(s_ap/t) / (exp(s_ap/t) + sum_n exp(s_an/t)))``, ``s`` the cosine. The positive candidate ``p``
    is the anchor's aligned partner (``pair_index``) when it has that id, else the first global candidate
    with that id. The negatives ``n`` are the distinct contents among the global candidates whose id is *none*
    of the anchor's positive ids, each counted once (:func:`softmax_terms`): a duplicate of the positive text
    elsewhere in the global batch (the same sentence twice, a tag shared with another text) is neither a
    negative nor an extra term, and a negative text present twice weighs once. Loss = mean over all terms of
    the global batch.
    Covers SimCSE (unsupervised: positive = second dropout view; supervised: + contradiction as hard negative),
    pairs, triplets with hard negatives (extra candidate rows), and text -> tags retrieval (multi-positive).

    ``symmetric=True`` (aligned tasks only) averages this with the reverse direction: each local anchor's
    partner is the query, all global anchors the keys, the anchor its positive; anchors with the same content
    as the query's anchor, or whose partner has the query's content, are not negatives; each distinct anchor
    content counts once.

    Args:
        temperature: cosines are divided by it (0.05 == scale 20).
        symmetric: add the candidate -> anchor direction (as in CLIP / MultipleNegativesSymmetricRankingLoss).

    References: van den Oord et al. 2018 (InfoNCE); Gao et al. 2021 (SimCSE); Henderson et al. 2017
    (in-batch negatives); sentence-transformers ``MultipleNegativesRankingLoss``.
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.symmetric = symmetric
        # the reverse direction scores against the global anchors and masks by their partners
        self.needs = BatchNeeds(anchors=symmetric, pairs=symmetric)

    def positive_ids(self, view: GlobalBatch) -> Tensor:
        """``(B, P)`` content ids of each local anchor's positives, -1 = none."""
        return view.local.positive_ids

    def forward_terms(self, view: GlobalBatch) -> SoftmaxTerms:
        """Anchor -> candidate terms of the local anchors against all global candidates."""
        positive_ids = self.positive_ids(view)  # (B, P)
        candidate_ids = view.candidate_ids  # (M_g,)
        matches = positive_ids[:, :, None] == candidate_ids[None, None, :]  # (B, P, M_g); -1 never matches
        is_term = (positive_ids != PAD_ID) & first_occurrences(positive_ids)  # (B, P)
        if (is_term & ~matches.any(dim=2)).any():
            raise ValueError("a positive id of an anchor is not among the candidates of the global batch")
        # (B, P): first global occurrence of each positive id (argmax returns the first maximum), replaced by
        # the aligned partner when the partner has that id
        positive_index = matches.to(torch.uint8).argmax(dim=2)
        if view.local.pair_index is not None:
            partner = view.local_pair_index  # (B,)
            is_partner = positive_ids == candidate_ids[partner][:, None]
            positive_index = torch.where(is_partner, partner[:, None], positive_index)
        term_query, term_slot = is_term.nonzero(as_tuple=True)
        return softmax_terms(
            view.local.anchor,
            view.candidates,
            candidate_ids,
            term_query,
            positive_index[term_query, term_slot],
            matches.any(dim=1),
            self.temperature,
        )

    def reverse_terms(self, view: GlobalBatch) -> SoftmaxTerms:
        """Candidate -> anchor terms: each local anchor's partner against all global anchors."""
        partner = view.local_pair_index  # (B,)
        query_anchor_ids = view.local.anchor_ids  # (B,)
        query_ids = view.candidate_ids[partner]  # (B,)
        key_partner_ids = view.candidate_ids[view.pair_index]  # (N,)
        not_negative = (view.anchor_ids[None, :] == query_anchor_ids[:, None]) | (
            key_partner_ids[None, :] == query_ids[:, None]
        )  # (B, N)
        term_query = torch.arange(partner.shape[0], device=partner.device)
        return softmax_terms(
            view.candidates[partner],
            view.anchors,
            view.anchor_ids,
            term_query,
            term_query + view.anchor_offset,
            not_negative,
            self.temperature,
        )

    def forward(self, view: GlobalBatch) -> LossOutput:
        """This process's share of the loss and the :class:`SoftmaxTerms` statistics of the anchor -> candidate
        direction."""
        terms = self.forward_terms(view)
        share = share_of_global_mean(terms.losses, view.world_size)
        if self.symmetric:
            share = (share + share_of_global_mean(self.reverse_terms(view).losses, view.world_size)) / 2
        return LossOutput(share, terms.stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``top1_accuracy`` (share of anchors whose best-scoring candidate is a positive),
        ``negatives_per_anchor`` (after masking) and ``masked_false_negatives`` (summed over the global batch)."""
        queries = max(sums["queries"], 1.0)
        return {
            "top1_accuracy": sums["top1_correct"] / queries,
            "negatives_per_anchor": sums["negatives"] / queries,
            "masked_false_negatives": sums["masked_false_negatives"],
        }


class InBatchNegativesLoss(InfoNCELoss):
    """In-batch negatives for scored pairs (AnglE's ``ibn`` loss, "In-Batch Negatives Loss").

    Inputs: local ``anchor (B, D)`` (sentence1), ``scores (B,)`` in ``[0, 1]`` and ``pair_index (B,)``;
    global ``candidates`` (every sentence2) and ``candidate_ids``.

    A pair whose gold score is above ``threshold`` is a positive: its anchor gets one InfoNCE term with the
    partner as positive and every other distinct global candidate content as negative, except the partner's
    content (identical texts are not negatives). Pairs at or below the threshold contribute no term, but their
    sentence2 still serves as an in-batch negative for the others. Loss = mean over the global batch's terms
    (0 if no pair is positive).

    Args:
        temperature: cosines are divided by it (AnglE's ``ibn_tau = 20`` is ``temperature = 0.05``).
        threshold: score above which a pair is positive; 0.5 is the middle of the normalised range.

    Reference: Li & Li 2023, "AnglE-optimized Text Embeddings" (``angle_emb`` ``in_batch_negative_loss``).
    """

    def __init__(self, temperature: float = 0.05, threshold: float = 0.5):
        super().__init__(temperature, symmetric=False)
        self.threshold = float(threshold)
        self.needs = BatchNeeds(scores=True)

    def positive_ids(self, view: GlobalBatch) -> Tensor:
        local = view.local
        partner_ids = local.candidate_ids[local.pair_index]  # (B,)
        return torch.where(local.scores > self.threshold, partner_ids, PAD_ID)[:, None]


def aligned_pairs(view: GlobalBatch) -> tuple[Tensor, Tensor, Tensor]:
    """The global aligned pairs: ``anchors (N, D)``, their ``partners (N, D)`` and gold ``scores (N,)``."""
    return view.anchors, view.candidates[view.pair_index], view.scores


def cosent_ranking(similarity: Tensor, scores: Tensor, temperature: float) -> Tensor:
    """``log(1 + sum_{(i, j): y_i > y_j} exp((s_j - s_i) / t))`` over all pairs of pairs, ``(N,)`` inputs.

    Penalises every pair of pairs whose predicted order contradicts the gold order (Su 2022, CoSENT).
    """
    should_rank_higher = scores[:, None] > scores[None, :]  # (N, N): y_i > y_j
    violations = (similarity[None, :] - similarity[:, None]) / temperature  # (N, N): (s_j - s_i) / t
    zero = similarity.new_zeros(1)
    return torch.logsumexp(torch.cat([zero, violations[should_rank_higher]]), dim=0)


def angle_similarity(a: Tensor, b: Tensor) -> Tensor:
    """AnglE's similarity of ``(N, D)`` rows: ``|Re + Im|`` of the complex quotient ``a / b`` where the first and
    second halves of each L2-normalised row are real and imaginary parts, i.e. ``|cos(a, b) + sin-part|``.
    Odd ``D`` is zero-padded. Same as sentence-transformers ``pairwise_angle_sim``."""
    if a.shape[-1] % 2:
        a, b = F.pad(a, (0, 1)), F.pad(b, (0, 1))
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    a_re, a_im = a.chunk(2, dim=-1)
    b_re, b_im = b.chunk(2, dim=-1)
    real = (a_re * b_re + a_im * b_im).sum(dim=-1)
    imaginary = (a_im * b_re - a_re * b_im).sum(dim=-1)
    return (real + imaginary).abs()


class CoSENTLoss(ContrastiveLoss):
    """CoSENT: rank the cosines of all aligned pairs of the global batch in the order of their gold scores.

    Inputs: global ``anchors (N, D)``, ``partners (N, D)`` (``candidates[pair_index]``), ``scores (N,)``.
    Loss = ``log(1 + sum_{y_i > y_j} exp((cos_j - cos_i) / t))`` over the whole global batch, computed
    identically on every process. Only the order of the scores matters, so their range is irrelevant.
    ``temperature = 0.05`` equals sentence-transformers ``CoSENTLoss(scale=20)`` and AnglE's ``cosine_tau=20``.

    Reference: Su 2022, "CoSENT" (Huang et al., TASLP 2024); sentence-transformers ``CoSENTLoss``.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.needs = BatchNeeds(scores=True, anchors=True, pairs=True)

    def similarity(self, anchors: Tensor, partners: Tensor) -> Tensor:
        """``(N,)`` similarity of each aligned pair."""
        return F.cosine_similarity(anchors, partners, dim=-1)

    def forward(self, view: GlobalBatch) -> LossOutput:
        anchors, partners, scores = aligned_pairs(view)
        return LossOutput(cosent_ranking(self.similarity(anchors, partners), scores, self.temperature))


class AnglELoss(CoSENTLoss):
    """AnglE: the CoSENT ranking on the angle similarity in complex space (:func:`angle_similarity`).

    Cosine has flat regions near +-1 where its gradient vanishes; comparing angle differences in complex
    space avoids them. Inputs and temperature as :class:`CoSENTLoss` (``0.05`` == AnglE ``angle_tau=20``
    == sentence-transformers ``AnglELoss(scale=20)``). Usually combined with CoSENT and in-batch negatives.

    Reference: Li & Li 2023, "AnglE-optimized Text Embeddings" (``angle_emb`` ``angle_loss``);
    sentence-transformers ``AnglELoss``.
    """

    def similarity(self, anchors: Tensor, partners: Tensor) -> Tensor:
        return angle_similarity(anchors, partners)


class CosineMSELoss(ContrastiveLoss):
    """Regress the cosine of each aligned pair on its gold score: ``mean_i (cos(a_i, b_i) - y_i)^2``.

    Inputs: global ``anchors (N, D)``, ``partners (N, D)``, ``scores (N,)`` in ``[0, 1]``; mean over the global
    batch, computed identically on every process. No temperature.

    Reference: sentence-transformers ``CosineSimilarityLoss`` (Reimers & Gurevych 2019).
    """

    def __init__(self):
        super().__init__()
        self.needs = BatchNeeds(scores=True, anchors=True, pairs=True)

    def forward(self, view: GlobalBatch) -> LossOutput:
        anchors, partners, scores = aligned_pairs(view)
        return LossOutput(
            F.mse_loss(F.cosine_similarity(anchors, partners, dim=-1), scores.to(anchors.dtype))
        )
