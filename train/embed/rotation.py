"""PCA rotation of a trained embedding space (``pca_rotation: true``), fitted once training has ended.

The rotation is an orthogonal ``(D, D)`` matrix ``R`` whose columns are the principal axes of the training texts'
embeddings, by decreasing variance. Embeddings become ``pooled @ R`` (before normalisation):

- every full-width dot product, cosine and norm is unchanged (``R`` is orthogonal), so full-width metrics are the
  same to rounding;
- the first ``d`` dimensions now hold the ``d`` directions of most variance, so a truncated embedding
  (``truncate_dim``, Matryoshka widths) keeps more of the geometry than the first ``d`` raw dimensions do.

It is fitted on the texts the run trained on (a seeded sample of up to ``pca_rotation_samples`` rows, each text in
the role and with the prefix it had in training), embedded by the final model; under a distributed launch the
encoding is sharded and gathered, so every process fits the same matrix from the same embeddings.

With ``rotation_refine_steps`` (and ``matryoshka_dims``) the PCA rotation is then trained further, kept orthogonal,
so that at every narrower Matryoshka width each training text ranks the other training texts as the full width
does (:func:`refine_rotation`). PCA keeps the most variance in the first dimensions; what retrieval at a width needs
is each text's nearest neighbours, and the refinement optimises that directly while full-width cosines stay exact.
With ``rotation_refine_objective: training_loss`` the refinement minimises the run's own loss instead (its losses,
weights and Matryoshka widths narrower than the embeddings, :func:`refine_rotation_on_loss`) on batches of the same
sampled training rows, embedded once: the narrow widths are fitted to the task the run was trained for, with batches
as large as the refinement likes (the embeddings are cached), while full-width cosines stay exact.
With ``matryoshka_pca_basis`` (and ``matryoshka_dims``) a PCA rotation of the *untrained* model's embeddings of the
same texts is installed before the first step (:func:`fit_pca_basis`): every forward then embeds in that basis, so
the Matryoshka losses train prefixes of principal axes from the start instead of the first raw dimensions. A
``pca_rotation`` fitted after training is fitted on those rotated embeddings and composed with the basis. On resume
the basis is fitted again from the freshly loaded (untrained) weights before the checkpoint is restored: the same
matrix.

Measured on SciFact (MiniLM fully fine-tuned on mined triplets with Matryoshka 384/256/128/64, README): 600 steps
move the 64-d NDCG@10 loss vs 384-d from -3.02 (PCA) to -2.08 with ``neighbours`` and to +0.95 (64-d above full
width) with ``training_loss`` on the test queries, and from -7.64 to -5.29 / +3.18 on the held-out training queries;
on STS-B (``configs/embed/sts_matryoshka.yaml``, LoRA, 3 epochs) ``neighbours`` takes the 64-d Spearman loss from
-1.90 (no rotation) to -0.33.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from torch import Tensor
from tqdm.auto import tqdm

from train.embed.collator import ContrastiveCollator
from train.embed.matryoshka import matryoshka_dims
from train.embed.objective import ContrastiveObjective
from train.embed.sampling import DatasetMix
from train.embed.trainer import embedded_batch


def pca_rotation(embeddings: Tensor) -> Tensor:
    """``(N, D)`` embeddings -> ``(D, D)`` fp32 orthogonal rotation: column ``j`` is the ``j``-th principal axis
    (eigenvector of the centred covariance, eigenvalues decreasing), its sign chosen so that its largest-magnitude
    entry is positive (the same matrix from the same embeddings). Computed in float64 on CPU."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"a PCA rotation needs (N >= 2, D) embeddings, got {tuple(embeddings.shape)}")
    centred = embeddings.detach().to("cpu", torch.float64)
    centred = centred - centred.mean(dim=0)
    _, axes = torch.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    axes = axes.flip(-1)
    largest = axes.gather(0, axes.abs().argmax(dim=0, keepdim=True))  # (1, D)
    return (axes * torch.where(largest < 0, -1.0, 1.0)).float()


def refine_rotation(
    rotation: Tensor,
    embeddings: Tensor,
    widths: list[int],
    weights: list[float],
    *,
    steps: int,
    temperature: float,
    seed: int,
    batch_size: int = 512,
    pool_size: int = 8192,
    show_progress: bool = False,
) -> Tensor:
    """Train the ``(D, D)`` orthogonal ``rotation`` for ``steps`` so truncated embeddings rank neighbours as the
    full ones do; returns the new ``(D, D)`` fp32 orthogonal matrix (on ``embeddings.device``).

    ``embeddings``: ``(N, D)`` unrotated pooled vectors (cosine is used: they are L2-normalised here). A seeded pool
    of at most ``pool_size`` rows is the candidate set; each step draws ``batch_size`` anchors from it and, for each
    width ``d < D`` of ``widths`` with its weight, adds ``weight * KL(p_full || p_d)``, where ``p(. | anchor)`` is the
    softmax over the pool (the anchor itself excluded) of cosine / ``temperature`` from all ``D`` dimensions
    (``p_full``: the same for every rotation) or from the first ``d`` rotated dimensions, re-normalised (``p_d``).
    Adam (lr 1e-3) on torch's orthogonal parametrization, started at ``rotation``: the result stays orthogonal, so
    full-width cosines are unchanged. Memory: ``batch_size x min(N, pool_size)`` floats per width."""
    pairs = [(width, weight) for width, weight in zip(widths, weights, strict=True) if width < rotation.shape[0]]
    if steps == 0 or not pairs:
        return rotation
    generator = torch.Generator().manual_seed(seed)
    vectors = F.normalize(embeddings.detach().float(), dim=-1)
    pool = vectors[torch.randperm(len(vectors), generator=generator)[:pool_size].to(vectors.device)]
    linear, optimizer = _orthogonal_map(rotation, vectors.device)
    for _ in tqdm(range(steps), desc="rotation", disable=not show_progress):
        anchors = torch.randint(len(pool), (min(batch_size, len(pool)),), generator=generator).to(vectors.device)
        is_self = anchors[:, None] == torch.arange(len(pool), device=vectors.device)[None]
        anchor_vectors = pool[anchors]
        target = F.log_softmax((anchor_vectors @ pool.T / temperature).masked_fill(is_self, -1e4), dim=-1)
        rotated_anchors, rotated_pool = linear(anchor_vectors), linear(pool)
        loss = 0.0
        for width, weight in pairs:
            scores = F.normalize(rotated_anchors[:, :width], dim=-1) @ F.normalize(rotated_pool[:, :width], dim=-1).T
            student = F.log_softmax((scores / temperature).masked_fill(is_self, -1e4), dim=-1)
            loss = loss + weight * F.kl_div(student, target, log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return linear.weight.detach().T.contiguous()


def refine_rotation_on_loss(
    rotation: Tensor,
    embeddings: Tensor,
    texts: list[str],
    parts: list[tuple[ContrastiveCollator, list[dict]]],
    objective: ContrastiveObjective,
    *,
    steps: int,
    seed: int,
    batch_size: int = 512,
    show_progress: bool = False,
) -> Tensor:
    """Train the ``(D, D)`` orthogonal ``rotation`` for ``steps`` on the run's own loss at its narrower widths;
    returns the new ``(D, D)`` fp32 orthogonal matrix (on ``embeddings.device``).

    ``embeddings``: ``(N, D)`` unrotated pooled vectors of ``texts`` (distinct, as the encoder saw them: with
    prefixes), which hold every text of ``parts``: ``(collator, rows)`` per training dataset (:func:`rotation_rows`).
    Each step draws one part (in proportion to its rows when there are several) and ``min(batch_size, rows)`` of
    its rows without replacement, lays them out as a training batch (``collator.task.roles``, ``collator.labels``:
    in-batch and hard negatives, false-negative masking, tags, scores as in training), rotates their looked-up
    embeddings and adds ``objective.narrower_than(D)`` (every loss at every Matryoshka width ``< D``, with the
    run's weights and temperatures) on the batch as a whole. Adam (lr 1e-3) on torch's orthogonal
    parametrization, started at ``rotation``, all draws from one ``seed``-ed generator: every process computes the
    same matrix, and full-width cosines are unchanged. Memory: ``batch_size`` anchors x their candidates per
    width."""
    narrow = objective.narrower_than(rotation.shape[0])
    if steps == 0 or narrow is None:
        return rotation
    device = embeddings.device
    row_of = {text: row for row, text in enumerate(texts)}
    vectors = embeddings.detach().float()
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([len(rows) for _, rows in parts], dtype=torch.float64)
    linear, optimizer = _orthogonal_map(rotation, device)
    for _ in tqdm(range(steps), desc="rotation", disable=not show_progress):
        collator, rows = parts[int(torch.multinomial(sizes, 1, generator=generator))]
        picked = torch.randperm(len(rows), generator=generator)[:batch_size].tolist()
        roles = collator.task.roles([rows[i] for i in picked])
        rotated = linear(vectors[torch.tensor([row_of[text] for text in collator.texts(roles)], device=device)])
        labels = {key: value.to(device) for key, value in collator.labels(roles).items()}
        anchors = len(roles.anchors)
        batch = embedded_batch(collator.task, rotated[:anchors], rotated[anchors:], labels)
        loss = narrow(batch, across_processes=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return linear.weight.detach().T.contiguous()


def _orthogonal_map(rotation: Tensor, device) -> tuple[torch.nn.Linear, torch.optim.Adam]:
    """``x -> x @ rotation`` as a ``Linear`` under torch's orthogonal parametrization, and Adam (lr 1e-3) on it."""
    linear = torch.nn.Linear(*rotation.shape, bias=False, device=device)
    with torch.no_grad():
        linear.weight.copy_(rotation.T)  # linear(x) = x @ rotation
    torch.nn.utils.parametrizations.orthogonal(linear)
    return linear, torch.optim.Adam(linear.parameters(), lr=1e-3)


def rotation_rows(train_ds, collator, limit: int, seed: int) -> list[tuple[ContrastiveCollator, list[dict]]]:
    """A seeded sample of about ``limit`` training rows in all, as ``(collator, rows)`` per dataset: the run's
    ``ContrastiveCollator``, or for a ``DatasetMix`` (with its ``MixCollator``) each dataset's own task collator
    and a share proportional to its size, rounded up."""
    datasets = (
        list(zip(train_ds.datasets, collator.collators, strict=True))
        if isinstance(train_ds, DatasetMix)
        else [(train_ds, collator)]
    )
    total = sum(len(dataset) for dataset, _ in datasets)
    rng = random.Random(seed)
    parts = []
    for dataset, part_collator in datasets:
        count = min(len(dataset), math.ceil(limit * len(dataset) / total))
        parts.append((part_collator, list(dataset.select(sorted(rng.sample(range(len(dataset)), count))))))
    return parts


def rows_texts(parts: list[tuple[ContrastiveCollator, list[dict]]]) -> list[str]:
    """The distinct texts of :func:`rotation_rows`' parts as the encoder sees them (``ContrastiveCollator.texts``:
    each role with its prefix), in order of first appearance."""
    texts = [text for collator, rows in parts for text in collator.texts(collator.task.roles(rows))]
    return list(dict.fromkeys(texts))


def rotation_texts(train_ds, collator, limit: int, seed: int) -> list[str]:
    """Distinct training texts to fit the rotation on: :func:`rows_texts` of :func:`rotation_rows`."""
    return rows_texts(rotation_rows(train_ds, collator, limit, seed))


def training_text_embeddings(trainer, texts: list[str]) -> Tensor:
    """``(N, D)`` embeddings of ``texts`` by the trainer's model as it is now (with its current rotation, if any),
    encoded sharded over processes and gathered: every process gets the same tensor."""
    with trainer.full_parameters():
        return trainer.embedder().encode(texts, batch_size=trainer.args.embed_batch_size)


def fit_pca_basis(trainer, train_ds, limit: int, seed: int) -> Tensor:
    """``matryoshka_pca_basis``: before training, install the PCA rotation of the untrained model's embeddings of
    the training texts on the ``EmbeddingModel``, so training (and every Matryoshka width) runs in that basis.
    Returns the ``(D, D)`` rotation. Call on every process, before ``trainer.train`` (also when resuming: the
    weights are still the untrained ones then, so the matrix is the original run's)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if model.rotation is not None:
        raise RuntimeError("fit_pca_basis: the model is already rotated; the basis is fitted on the untrained model")
    texts = rotation_texts(train_ds, trainer.data_collator, limit, seed)
    rotation = pca_rotation(training_text_embeddings(trainer, texts))
    model.set_rotation(rotation)
    return rotation


def fit_rotation(trainer, train_ds, limit: int, seed: int) -> Tensor:
    """Fit the rotation on the final model (``trainer.embedder()``, sharded over processes) and install it on the
    trained ``EmbeddingModel`` (``rotation``), so that evaluation and export use it; returns the installed
    ``(D, D)`` matrix. A model trained in a ``matryoshka_pca_basis`` is fitted in that basis and gets the composed
    rotation ``basis @ fitted``. Call on every process: with ``rotation_refine_steps`` each process refines on its
    device and the main process's matrix is broadcast."""
    args = trainer.args
    parts = rotation_rows(train_ds, trainer.data_collator, limit, seed)
    texts = rows_texts(parts)
    embeddings = training_text_embeddings(trainer, texts)
    rotation = pca_rotation(embeddings)
    if args.rotation_refine_steps:
        device = trainer.accelerator.device
        show_progress = trainer.accelerator.is_main_process and not args.disable_tqdm
        if args.rotation_refine_objective == "training_loss":
            refined = refine_rotation_on_loss(
                rotation.to(device),
                embeddings.to(device),
                texts,
                parts,
                trainer.objective,
                steps=args.rotation_refine_steps,
                seed=seed,
                show_progress=show_progress,
            )
        else:
            matryoshka = matryoshka_dims(args.matryoshka_dims, args.matryoshka_weights)
            refined = refine_rotation(
                rotation.to(device),
                embeddings.to(device),
                list(matryoshka.dims),
                list(matryoshka.weights),
                steps=args.rotation_refine_steps,
                temperature=args.rotation_refine_temperature,
                seed=seed,
                show_progress=show_progress,
            )
        rotation = broadcast(refined, from_process=0).cpu()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if model.rotation is not None:  # trained in a matryoshka_pca_basis: the embeddings above were in it
        rotation = model.rotation.detach().cpu().float() @ rotation
    model.set_rotation(rotation)
    return rotation
