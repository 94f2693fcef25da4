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
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from train.contrastive.sampling import DatasetMix


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


def rotation_texts(train_ds, collator, limit: int, seed: int) -> list[str]:
    """Distinct training texts to fit the rotation on, as ``collator`` (the run's ``ContrastiveCollator``, or the
    ``MixCollator`` of a ``DatasetMix``) gives them to the encoder (``ContrastiveCollator.texts``: each role with
    its prefix) for a seeded sample of about ``limit`` rows in all (of a ``DatasetMix``, each dataset's share
    proportional to its size, rounded up, read by its own task's collator)."""
    parts = (
        list(zip(train_ds.datasets, collator.collators, strict=True))
        if isinstance(train_ds, DatasetMix)
        else [(train_ds, collator)]
    )
    total = sum(len(dataset) for dataset, _ in parts)
    rng = random.Random(seed)
    texts: list[str] = []
    for dataset, part_collator in parts:
        count = min(len(dataset), math.ceil(limit * len(dataset) / total))
        rows = list(dataset.select(sorted(rng.sample(range(len(dataset)), count))))
        texts += part_collator.texts(part_collator.task.roles(rows))
    return list(dict.fromkeys(texts))


def fit_rotation(trainer, train_ds, limit: int, seed: int) -> Tensor:
    """Fit the rotation on the final model (``trainer.embedder()``, sharded over processes) and install it on the
    trained ``EmbeddingModel`` (``rotation``), so that evaluation and export use it. Call on every process."""
    texts = rotation_texts(train_ds, trainer.data_collator, limit, seed)
    with trainer.full_parameters():
        embeddings = trainer.embedder().encode(texts, batch_size=trainer.args.embed_batch_size)
    rotation = pca_rotation(embeddings)
    trainer.accelerator.unwrap_model(trainer.model).set_rotation(rotation)
    return rotation
