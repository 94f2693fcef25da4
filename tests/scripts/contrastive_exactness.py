"""Exactness of the gathered contrastive objective: 2 processes x local batch == 1 process x global batch.

Run under ``accelerate launch`` on 2 CPU processes (``tests/multiproc.run_multiprocess``). For every task and
loss below (and Matryoshka widths 8/4/2 over them), in float64, with a tiny encoder (Linear 16->8 + tanh) wrapped in DDP, each rank computes the
objective on its local batch (gathered across ranks) and backpropagates; every rank also computes the
single-process reference on the concatenated global batch with an undistributed copy of the encoder. Checked:
the mean over ranks of the local losses equals the reference loss, the DDP-averaged parameter gradients
equal the reference gradients (both to 1e-6 relative), and components / telemetry equal the reference's.

Every case runs in three ways (``VARIANTS``): ``plain`` (the rank's rows in one chunk, one DDP forward),
``chunked`` (rows in length-sorted chunks of at most ``CHUNK`` texts, ``collator.length_sorted_chunks``, one DDP forward
of all chunks, embeddings put back with ``model.in_text_order``) and ``cached`` (``cached.gradient_cache_step``:
no-grad pass on the unwrapped encoder, per-chunk re-encode under ``no_sync`` but the last); the ranks hold
different numbers of chunks in the uneven cases. One more case turns dropout on and checks that the cached
step equals the chunked step drawn from the same seed (dropout replayed on both ranks).
Prints ``<case>: PASSED ...`` or ``<case>: FAILED ...`` per case on rank 0; exits 1 on any mismatch.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn

from train.embed.batch import PAD_ID, EmbeddedBatch, text_ids
from train.embed.cached import gradient_cache_step
from train.embed.collator import length_sorted_chunks
from train.embed.loss_spec import build_objective
from train.embed.matryoshka import matryoshka_dims
from train.embed.model import in_text_order
from train.embed.tasks import embed_task

TOLERANCE = 1e-6
FEATURES = 16
CHUNK = 3  # texts per chunk in the chunked / cached variants
VARIANTS = ("plain", "chunked", "cached")
DROPOUT_CASE = "simcse_unsup/infonce [cached, dropout 0.3]"


class ChunkEncoder(nn.Module):
    """The tiny encoder with ``EmbeddingModel``'s calling convention: a list of chunks -> rows in chunk order."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 8), nn.Dropout(0.0), nn.Tanh())

    def forward(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.net(chunk) for chunk in chunks])


@dataclass
class Spec:
    """One rank's batch as texts: features come from the text (duplicates embed identically) plus per-row noise
    (SimCSE's dropout views)."""

    anchor_texts: list[str]
    candidate_texts: list[str]
    positives: list[list[str]]
    pair_index: list[int] | None = None
    scores: list[float] | None = None
    view_noise: float = 0.0
    noise_seed: int = 0
    rows: int = field(init=False)

    def __post_init__(self):
        self.rows = len(self.anchor_texts) + len(self.candidate_texts)


def text_features(texts: list[str]) -> torch.Tensor:
    """``(len(texts), FEATURES)`` fixed random features per text, the same on every rank."""
    rows = []
    for text_id in text_ids(texts).tolist():
        generator = torch.Generator().manual_seed(text_id % 2**31)
        rows.append(torch.randn(FEATURES, generator=generator, dtype=torch.float64))
    return torch.stack(rows)


def spec_inputs(spec: Spec) -> torch.Tensor:
    """Encoder input of a spec: anchors then candidates, ``(B + M, FEATURES)``."""
    inputs = text_features(spec.anchor_texts + spec.candidate_texts)
    generator = torch.Generator().manual_seed(spec.noise_seed)
    return inputs + spec.view_noise * torch.randn(inputs.shape, generator=generator, dtype=torch.float64)


def concat(
    specs: list[Spec],
) -> tuple[list[str], list[str], list[list[str]], list[int] | None, list[float] | None]:
    """The global batch of the per-rank specs, in rank order (partner indices shifted)."""
    anchors, candidates, positives, pair_index, scores = [], [], [], [], []
    for spec in specs:
        if spec.pair_index is not None:
            pair_index += [len(candidates) + i for i in spec.pair_index]
        anchors += spec.anchor_texts
        candidates += spec.candidate_texts
        positives += spec.positives
        scores += spec.scores or []
    return anchors, candidates, positives, pair_index or None, scores or None


def embedded_batch(
    embeddings: torch.Tensor,
    anchors: list[str],
    candidates: list[str],
    positives: list[list[str]],
    pair_index: list[int] | None,
    scores: list[float] | None,
) -> EmbeddedBatch:
    width = max(len(p) for p in positives)
    positive_ids = [text_ids(p).tolist() + [PAD_ID] * (width - len(p)) for p in positives]
    return EmbeddedBatch(
        anchor=embeddings[: len(anchors)],
        candidates=embeddings[len(anchors) :],
        anchor_ids=text_ids(anchors),
        candidate_ids=text_ids(candidates),
        positive_ids=torch.tensor(positive_ids, dtype=torch.int64),
        pair_index=None if pair_index is None else torch.tensor(pair_index),
        scores=None if scores is None else torch.tensor(scores, dtype=torch.float64),
    )


def aligned_specs(
    anchors: list[str],
    partners: list[str],
    split: int,
    *,
    negatives=None,
    scores=None,
    view_noise=0.0,
    unsup=False,
) -> list[Spec]:
    """Rows ``[:split]`` to rank 0, the rest to rank 1; ``negatives[i]`` = hard negative texts of row i."""
    specs = []
    for rank, rows in enumerate((range(0, split), range(split, len(anchors)))):
        rows = list(rows)
        extra = [text for i in rows for text in (negatives[i] if negatives else [])]
        specs.append(
            Spec(
                anchor_texts=[anchors[i] for i in rows],
                candidate_texts=[partners[i] for i in rows] + extra,
                positives=[[anchors[i] if unsup else partners[i]] for i in rows],
                pair_index=list(range(len(rows))),
                scores=[scores[i] for i in rows] if scores else None,
                view_noise=view_noise,
                noise_seed=100 + rank,
            )
        )
    return specs


def build_cases() -> list[tuple[str, str, object, list[Spec], list[int] | None]]:
    """(case name, task, loss config, per-rank specs, Matryoshka widths or None), the same on every rank."""
    generator = torch.Generator().manual_seed(7)
    # SimCSE unsupervised: the same sentence ("s1") twice in the global batch, once on each rank.
    sentences = ["s0", "s1", "s2", "s3", "s4", "s1", "s6", "s7"]
    simcse = aligned_specs(sentences, sentences, 4, view_noise=0.3, unsup=True)
    # Pairs: two queries share their positive ("p2") across ranks.
    queries = [f"q{i}" for i in range(8)]
    passages = ["p0", "p1", "p2", "p3", "p4", "p2", "p6", "p7"]
    pairs = aligned_specs(queries, passages, 4)
    pairs_uneven = aligned_specs(queries[:7], passages[:7], 4)
    # Triplets, 2 hard negatives each; one hard negative of rank 1 is a positive ("p1") of rank 0.
    negatives = [[f"n{i}a", f"n{i}b"] for i in range(8)]
    negatives[5][1] = "p1"
    triplets = aligned_specs(queries, passages, 4, negatives=negatives)
    # Tags: 1-3 tags per text, tags shared across ranks, rank 0 holds more terms than rank 1.
    tag_rows = [
        ["red", "blue"],
        ["blue"],
        ["green", "red", "cyan"],
        ["pink"],
        ["red"],
        ["cyan", "blue"],
        ["gold"],
    ]
    tags = []
    for rank, rows in enumerate((range(0, 4), range(4, 7))):
        local_tags = list(dict.fromkeys(tag for i in rows for tag in tag_rows[i]))
        tags.append(
            Spec([f"text{i}" for i in rows], local_tags, [tag_rows[i] for i in rows], noise_seed=rank)
        )
    # Scored pairs: scores in [0, 1] with a tie, a repeated sentence2 among the positives.
    scores = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
    scores[3] = scores[6]
    scores[2], scores[5] = 0.9, 0.8
    scored = aligned_specs(queries, passages, 4, scores=scores)
    scored_uneven = aligned_specs(queries[:7], passages[:7], 3, scores=scores[:7])

    combination = {"cosent": 1, "ibn": {"weight": 0.5, "temperature": 0.1}, "angle": {"weight": 1}}
    widths = [8, 4, 2]  # the encoder's full width (8) and two prefixes
    cases = [
        ("simcse_unsup/infonce", "simcse_unsup", "infonce", simcse),
        ("pairs/infonce", "pairs", {"infonce": {"temperature": 0.1}}, pairs),
        ("pairs/infonce_symmetric", "pairs", {"infonce": {"symmetric": True}}, pairs),
        ("pairs_uneven/infonce_symmetric", "pairs", {"infonce": {"symmetric": True}}, pairs_uneven),
        ("triplets/infonce", "triplets", "infonce", triplets),
        ("tags/infonce", "tags", "infonce", tags),
        ("scored_pairs/cosent", "scored_pairs", "cosent", scored),
        ("scored_pairs/angle", "scored_pairs", "angle", scored),
        ("scored_pairs/cosine_mse", "scored_pairs", "cosine_mse", scored),
        ("scored_pairs/ibn", "scored_pairs", "ibn", scored),
        ("scored_pairs/cosent+ibn+angle", "scored_pairs", combination, scored),
        ("scored_pairs_uneven/cosent+ibn+angle", "scored_pairs", combination, scored_uneven),
    ]
    matryoshka = [
        ("matryoshka/pairs/infonce_symmetric", "pairs", {"infonce": {"symmetric": True}}, pairs_uneven),
        ("matryoshka/tags/infonce", "tags", "infonce", tags),
        ("matryoshka/triplets/infonce", "triplets", "infonce", triplets),
        ("matryoshka/scored_pairs/cosent+ibn+angle", "scored_pairs", combination, scored_uneven),
    ]
    return [(*case, None) for case in cases] + [(*case, widths) for case in matryoshka]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm().clamp(min=1e-300))


def local_step(model, objective, spec: Spec, variant: str):
    """This rank's objective output and DDP-averaged flat gradient, by ``variant`` (see module docstring)."""
    texts = spec.anchor_texts + spec.candidate_texts
    inputs = spec_inputs(spec)
    chunks = [list(range(len(texts)))]
    if variant != "plain":
        chunks = length_sorted_chunks([len(text) for text in texts], CHUNK)
    text_order = torch.tensor([i for chunk in chunks for i in chunk])
    rows = [inputs[chunk] for chunk in chunks]

    def loss_of(embeddings):
        return objective(embedded_batch(embeddings, *concat([spec])))

    model.zero_grad(set_to_none=True)
    if variant == "cached":
        output = gradient_cache_step(
            rows, text_order, encode=lambda chunk: model([chunk]), loss_of=loss_of,
            encode_without_grad=lambda chunk: model.module([chunk]), no_sync=model.no_sync,
            backward=lambda surrogate, last: surrogate.backward(),
        )  # fmt: skip
    else:
        output = loss_of(in_text_order(model(rows), text_order))
        output.loss.backward()
    return output, torch.cat([p.grad.flatten() for p in model.parameters()])


def mean_over_ranks(value: float) -> float:
    total = torch.tensor(value)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def report(name: str, ok: bool, rank: int, details: str) -> int:
    """1 if any rank failed ``name`` (printed on rank 0), else 0."""
    verdict = torch.tensor([0 if ok else 1])
    dist.all_reduce(verdict)
    if rank == 0:
        print(f"{name}: {'PASSED' if verdict.item() == 0 else 'FAILED'} {details}", flush=True)
    return int(verdict.item() > 0)


def main() -> int:
    torch.set_default_dtype(torch.float64)
    accelerator = Accelerator(cpu=True)
    world = accelerator.num_processes
    expected = int(os.environ.get("LORASMITH_EXPECT_WORLD_SIZE", "2"))
    assert world == expected == 2, f"world size {world}, expected 2 (LORASMITH_EXPECT_WORLD_SIZE={expected})"
    rank = accelerator.process_index

    torch.manual_seed(0)
    encoder = ChunkEncoder()
    reference_encoder = copy.deepcopy(encoder)
    model = accelerator.prepare(encoder)
    failures = checked = 0
    started = time.perf_counter()
    for name, task, loss_config, specs, widths in build_cases():
        matryoshka = matryoshka_dims(widths, [1, 0.5, 0.25]) if widths else None
        objective = build_objective(embed_task(task), loss_config, matryoshka=matryoshka)
        spec = specs[rank]

        # Global rows in the order of ``concat``: every rank's anchors, then every rank's candidates.
        per_rank = [(reference_encoder([spec_inputs(s)]), len(s.anchor_texts)) for s in specs]
        reference_rows = [e[:b] for e, b in per_rank] + [e[b:] for e, b in per_rank]
        reference_batch = embedded_batch(torch.cat(reference_rows), *concat(specs))
        reference = objective(reference_batch, across_processes=False)
        reference_loss = float(reference.loss.detach())
        reference_gradients = torch.cat(
            [g.flatten() for g in torch.autograd.grad(reference.loss, list(reference_encoder.parameters()))]
        )

        for variant in VARIANTS:
            output, gradients = local_step(model, objective, spec, variant)
            mean_loss = mean_over_ranks(float(output.loss.detach()))
            loss_error = abs(mean_loss - reference_loss) / abs(reference_loss)
            gradient_error = relative_error(gradients, reference_gradients)
            logged_error = max(
                [
                    abs(output.components[k] - reference.components[k]) / abs(reference.components[k])
                    for k in output.components
                ]
                + [abs(output.telemetry[k] - reference.telemetry[k]) for k in reference.telemetry]
            )
            ok = (
                loss_error <= TOLERANCE
                and gradient_error <= TOLERANCE
                and logged_error <= TOLERANCE
                and output.telemetry.keys() == reference.telemetry.keys()
                and float(reference_gradients.norm()) > 0
            )
            checked += 1
            failures += report(
                name if variant == "plain" else f"{name} [{variant}]",
                ok,
                rank,
                f"loss={mean_loss:.10f} reference={reference_loss:.10f} loss_rel_err={loss_error:.1e} "
                f"grad_rel_err={gradient_error:.1e} logged_err={logged_error:.1e} "
                f"local_anchors={len(spec.anchor_texts)} global_anchors={int(output.telemetry['global_batch_size'])}",
            )

    # Dropout on: the cached step replays each chunk's masks, so it equals the chunked step from the same seed.
    _, task, loss_config, specs, _ = build_cases()[0]
    objective = build_objective(embed_task(task), loss_config)
    model.module.net[1].p = 0.3
    results = {}
    for variant in ("chunked", "cached"):
        torch.manual_seed(100 + rank)
        output, gradients = local_step(model, objective, specs[rank], variant)
        results[variant] = (mean_over_ranks(float(output.loss.detach())), gradients)
    (chunked_loss, chunked), (cached_loss, cached) = results["chunked"], results["cached"]
    loss_error = abs(cached_loss - chunked_loss) / abs(chunked_loss)
    gradient_error = relative_error(cached, chunked)
    checked += 1
    failures += report(
        DROPOUT_CASE, loss_error <= TOLERANCE and gradient_error <= TOLERANCE, rank,
        f"loss={cached_loss:.10f} chunked={chunked_loss:.10f} loss_rel_err={loss_error:.1e} "
        f"grad_rel_err={gradient_error:.1e}",
    )  # fmt: skip

    accelerator.wait_for_everyone()
    if rank == 0:
        elapsed = time.perf_counter() - started
        print(f"{failures} of {checked} cases failed on {world} processes ({elapsed:.1f} s)", flush=True)
    dist.destroy_process_group()  # gloo threads left alive at interpreter exit can abort a rank (seen in CI)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
