"""The Matryoshka rotation, one extension: its recipe key, checks, plan phrase, card text, hooks and fitting.

    matryoshka_rotation: {fit: after | before | both, samples: 20000, refine: {steps: 600, objective: neighbours |
                          training_loss, temperature: 0.05}}

``R`` is an orthogonal ``(D, D)`` matrix whose columns are the principal axes of the training texts' embeddings
(variance decreasing); embeddings become ``pooled @ R`` before normalisation, so full-width cosines are unchanged
and a truncated embedding keeps the ``d`` directions of most variance. ``fit: after`` fits it on the final model,
``refine`` then trains it further, kept orthogonal; ``fit: before`` trains in the untrained model's basis (fitted
again on resume: the same matrix); ``both`` composes the two. The model applies any rotation it is given
(``EmbeddingModel.rotation``, saved as ``rotation.safetensors`` and a sentence-transformers ``Dense`` module), so
removing the feature is this file plus its key. Measured effect: the README's Matryoshka section.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import yaml
from accelerate.utils import broadcast
from torch import Tensor
from tqdm.auto import tqdm

from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option
from train.embed.collator import ContrastiveCollator
from train.embed.matryoshka import MatryoshkaDims
from train.embed.objective import ContrastiveObjective
from train.embed.sampling import DatasetMix
from train.embed.tasks import EmbedTask
from train.embed.trainer import embedded_batch

KEY = "matryoshka_rotation"
FITS = ("after", "before", "both")
REFINE_OBJECTIVES = ("neighbours", "training_loss")

# The flat keys this one replaced: a recipe that still writes one is told what to write instead.
RENAMED_KEYS = {
    "pca_rotation": f"{KEY}: {{fit: after}}",
    "matryoshka_pca_basis": f"{KEY}: {{fit: before}} (fit: both together with pca_rotation)",
    "pca_rotation_samples": f"{KEY}: {{samples: N}}",
    "rotation_refine_steps": f"{KEY}: {{refine: {{steps: N}}}}",
    "rotation_refine_temperature": f"{KEY}: {{refine: {{temperature: T}}}}",
    "rotation_refine_objective": f"{KEY}: {{refine: {{objective: neighbours | training_loss}}}}",
}

HELP = (
    "Matryoshka rotation, fitted on the training texts' embeddings and saved with the model (full-width cosines "
    "unchanged): {fit: after | before | both, samples: 20000, refine: {steps: N, objective: neighbours | "
    "training_loss, temperature: 0.05}}, or only the fit (--matryoshka_rotation after). before, both and refine "
    "need matryoshka_dims. See train/embed/rotation.py. Default: off."
)


def recipe_field():
    """The ``EmbedConfig`` field of :data:`KEY`: the recipe's raw value (a mapping, a fit name or YAML text)."""
    return option(HELP, default=None)


@dataclass(frozen=True)
class Refinement:
    """``refine:``: ``steps`` >= 1 of Adam on the orthogonal rotation, minimising ``objective`` (one of
    :data:`REFINE_OBJECTIVES`); ``temperature`` > 0 is the neighbour rankings' softmax temperature."""

    steps: int
    objective: str = "neighbours"
    temperature: float = 0.05

    @property
    def goal(self) -> str:
        return "the training loss" if self.objective == "training_loss" else "neighbour rankings"


@dataclass(frozen=True)
class MatryoshkaRotation:
    """The checked ``matryoshka_rotation``: when it is fitted (``fit``), on how many training rows (``samples``),
    the optional ``refine`` and the run's Matryoshka widths (``matryoshka``, needed by before / both / refine)."""

    fit: str
    samples: int
    refine: Refinement | None
    matryoshka: MatryoshkaDims | None

    @property
    def before(self) -> bool:
        return self.fit in ("before", "both")

    @property
    def after(self) -> bool:
        return self.fit in ("after", "both")

    @classmethod
    def from_recipe(cls, value, matryoshka: MatryoshkaDims | None) -> MatryoshkaRotation | None:
        """``None`` when the key is unset; else the checked settings.

        Raises:
            ConfigError: not a mapping / fit name, an unknown key, a bad value (named ``matryoshka_rotation.<key>``),
                ``fit: before`` / ``both`` or ``refine`` without ``matryoshka_dims``, ``refine`` with ``fit: before``.
        """
        if value is None:
            return None
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("{") else {"fit": value.strip()}
        value = _mapping(value, KEY, ("fit", "samples", "refine"))
        fit = _setting(value, KEY, "fit", "after", lambda v: v in FITS, f"one of {', '.join(FITS)}")
        samples = _setting(value, KEY, "samples", 20000, lambda v: isinstance(v, int) and v >= 2, ">= 2")
        if fit != "after" and matryoshka is None:
            raise ConfigError(
                f"{KEY} fit: {fit} trains the matryoshka_dims widths in the principal-axes basis: set matryoshka_dims "
                "as well (e.g. 384 256 128 64); without narrower widths a rotation changes no loss"
            )
        refine = _refinement(value.get("refine"))
        if refine is not None and fit == "before":
            raise ConfigError(
                f"{KEY}.refine refines the rotation fitted after training: set {KEY}.fit to after or both"
            )
        if refine is not None and matryoshka is None:
            raise ConfigError(
                f"{KEY}.refine needs matryoshka_dims with narrower widths (e.g. 384 256 128 64): they are the widths "
                "it fits the rotation for"
            )
        return cls(fit, samples, refine, matryoshka)

    def check_task(self, task: EmbedTask) -> None:
        """ConfigError when ``refine.objective: training_loss`` would refine on ``task``'s loss and that loss has
        nothing to fit on cached embeddings: a task whose positive is the anchor's own text (SimCSE's two dropout
        views are one embedding once cached)."""
        if self.refine and self.refine.objective == "training_loss" and task.positive_is_anchor:
            raise ConfigError(
                f"{KEY}.refine.objective training_loss refines on the training loss of cached embeddings, but task "
                f"{task.name} pairs each text with itself (two dropout views, one embedding once cached): use "
                "objective: neighbours"
            )

    def plan_phrase(self, train_rows: int) -> str:
        """The plan's words, e.g. ``PCA rotation after training (fit on 512 rows' texts, refined 600 steps on
        neighbour rankings)``."""
        fitted_on = f"fit on {min(self.samples, train_rows)} rows' texts"
        refined = f", refined {self.refine.steps} steps on {self.refine.goal}" if self.refine else ""
        phrases = [f"trained in the untrained model's PCA basis ({fitted_on})"] if self.before else []
        if self.after:
            phrases.append(f"PCA rotation after training ({fitted_on}{refined})")
        return ", ".join(phrases)

    def card_text(self) -> str:
        """The model card's paragraph: the basis training ran in, the rotation, its refinement, where it is saved."""
        lines = [f"The embeddings are rotated by an orthogonal map (`{KEY}: {{fit: {self.fit}}}`), so full-width "
                 "cosines are unchanged:"]  # fmt: skip
        if self.before:
            lines.append("training ran in the principal axes of the untrained model's embeddings of the training "
                         "texts, so each Matryoshka width was trained as the first `d` of those axes.")  # fmt: skip
        if self.after:
            lines.append("after training they were rotated onto the principal axes of the trained model's "
                         "embeddings, so truncated embeddings (`truncate_dim=d`, `--truncate_dim d`) are the first "
                         "`d` principal components.")  # fmt: skip
        if self.refine:
            lines.append(f"The rotation was then refined for {self.refine.steps} steps on {self.refine.goal} at each "
                         f"narrower width (`{KEY}.refine`, `objective: {self.refine.objective}`), kept "
                         "orthogonal.")  # fmt: skip
        lines.append("It is the `Dense` module of `merged/` and `rotation.safetensors`; lorasmith applies it on load.")
        return "\n".join(lines)

    def before_training(self, trainer, train_ds) -> None:
        """``fit: before`` / ``both``: install the untrained model's PCA basis (:func:`fit_pca_basis`). Call on every
        process before the first evaluation, also when resuming (the checkpoint's weights load later)."""
        if self.before:
            fit_pca_basis(trainer, train_ds, self.samples, trainer.args.seed)

    def after_training(self, trainer, train_ds) -> None:
        """``fit: after`` / ``both``: fit (and refine) the rotation on the final model (:func:`fit_rotation`). Call
        on every process after training and the best-model reload, before the final evaluation."""
        if self.after:
            fit_rotation(trainer, train_ds, self)


def _mapping(value, where: str, known: tuple[str, ...]) -> dict:
    """``value`` when it is a mapping of ``known`` keys only; else a ConfigError naming ``where``."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping {{{', '.join(f'{k}:' for k in known)}}}; got {value!r}")
    unknown = sorted(set(map(str, value)) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(known)}")
    return value


def _setting(value: dict, where: str, key: str, default, valid, expected: str):
    """``value[key]`` (or ``default``) when ``valid`` (a boolean never is), else ConfigError naming ``where.key``."""
    setting = value.get(key, default)
    if isinstance(setting, bool) or not valid(setting):
        raise ConfigError(f"{where}.{key} must be {expected}; got {setting!r}")
    return setting


def _refinement(value) -> Refinement | None:
    """``refine:`` checked; ``None`` when absent or ``steps: 0``."""
    if value is None:
        return None
    where = f"{KEY}.refine"
    value = _mapping(value, where, ("steps", "objective", "temperature"))
    steps = _setting(value, where, "steps", 0, lambda v: isinstance(v, int) and v >= 0, ">= 0")
    objectives = f"one of {', '.join(REFINE_OBJECTIVES)}"
    objective = _setting(value, where, "objective", "neighbours", lambda v: v in REFINE_OBJECTIVES, objectives)
    temperature = _setting(value, where, "temperature", 0.05, lambda v: isinstance(v, int | float) and v > 0, "> 0")
    return Refinement(steps, objective, float(temperature)) if steps else None


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
    """``fit: before``: install the PCA rotation of the untrained model's embeddings of the training texts on the
    ``EmbeddingModel``, so training (and every Matryoshka width) runs in that basis. Returns the ``(D, D)``
    rotation. Call on every process, before ``trainer.train`` (also when resuming: the weights are still the
    untrained ones then, so the matrix is the original run's)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if model.rotation is not None:
        raise RuntimeError("fit_pca_basis: the model is already rotated; the basis is fitted on the untrained model")
    texts = rotation_texts(train_ds, trainer.data_collator, limit, seed)
    rotation = pca_rotation(training_text_embeddings(trainer, texts))
    model.set_rotation(rotation)
    return rotation


def fit_rotation(trainer, train_ds, settings: MatryoshkaRotation) -> Tensor:
    """Fit the rotation on the final model (``trainer.embedder()``, sharded over processes), refine it when
    ``settings.refine`` says so, and install it on the trained ``EmbeddingModel`` (``rotation``), so that evaluation
    and export use it; returns the installed ``(D, D)`` matrix. A model trained in a PCA basis (``fit: both``) is
    fitted in that basis and gets the composed rotation ``basis @ fitted``. Call on every process: each process
    refines on its device and the main process's matrix is broadcast."""
    seed = trainer.args.seed
    parts = rotation_rows(train_ds, trainer.data_collator, settings.samples, seed)
    texts = rows_texts(parts)
    embeddings = training_text_embeddings(trainer, texts)
    rotation = pca_rotation(embeddings)
    refine = settings.refine
    if refine is not None:
        device = trainer.accelerator.device
        show_progress = trainer.accelerator.is_main_process and not trainer.args.disable_tqdm
        common = dict(steps=refine.steps, seed=seed, show_progress=show_progress)
        if refine.objective == "training_loss":
            refined = refine_rotation_on_loss(
                rotation.to(device), embeddings.to(device), texts, parts, trainer.objective, **common
            )
        else:
            dims, weights = list(settings.matryoshka.dims), list(settings.matryoshka.weights)
            refined = refine_rotation(
                rotation.to(device), embeddings.to(device), dims, weights, temperature=refine.temperature, **common
            )
        rotation = broadcast(refined, from_process=0).cpu()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if model.rotation is not None:  # trained in a PCA basis (fit: both): the embeddings above were in it
        rotation = model.rotation.detach().cpu().float() @ rotation
    model.set_rotation(rotation)
    return rotation
