"""``EmbedConfig``: the ``TrainingArguments`` of ``train/embed/__main__.py`` plus what a contrastive run needs.

Fields are grouped by concern: the objective (``loss``, ``temperature``), how a text becomes a vector
(``pooling``, ``normalize``, query/document prefixes) and what is evaluated (``eval_task``, ``eval_ks``).
``max_length`` and the LoRA fields live in ``ModelArguments`` (shared by every entrypoint).

Defaults that differ from ``TrainingArguments`` (chosen for contrastive fine-tuning):

- ``output_dir`` outputs/embed; ``learning_rate`` 2e-5 (sentence-transformers' bi-encoder default);
  ``per_device_train_batch_size`` 32 (in-batch negatives want big batches); ``num_train_epochs`` 1;
  ``warmup_steps`` 0.1 (a share of all steps); ``logging_steps`` 10; ``report_to`` tensorboard.
- ``eval_strategy`` / ``save_strategy`` epoch, ``save_total_limit`` 2, ``load_best_model_at_end`` True:
  ``metric_for_best_model`` defaults to the eval task's main metric (``spearman`` for STS, ``ndcg@10`` for
  retrieval); evaluation follows ``save_strategy`` when the two differ (the best checkpoint needs an
  evaluation at each save); without ``eval_data`` there is no evaluation and the last model is exported.
- ``remove_unused_columns`` False: rows reach the collator as raw texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from transformers import TrainingArguments

from lorasmith.errors import ConfigError
from lorasmith.pooling import POOLING_MODES
from train.common.launch import check_best_metric
from train.common.run import disable_evaluation_without_data
from train.embed.evaluation import metric_names
from train.embed.matryoshka import matryoshka_dims
from train.embed.sampling import SAMPLING
from train.embed.tasks import EMBED_TASKS, EVAL_METRICS, EmbedTask

REFINE_OBJECTIVES = ("neighbours", "training_loss")  # rotation_refine_objective

# Most texts per forward when the recipe does not say. The chunking (collator.LengthSortedChunker) picks the cuts
# itself (fewest forwards at <= 10 % padding over the run), so this is only a cap: bench/embed_throughput.py
# (MiniLM + LoRA, 2 CPU cores, 150 steps of rows sampled from the whole train sets) measured with 32: STS-B batch 16
# padding 0.10, 1.42x sentence-transformers' pairs/s; StackOverflow tags batch 32 (texts of ~6 tokens, where the
# fixed cost of each forward weighs most) padding 0.10, 1.06x-1.42x over three runs on a noisy machine (fixed
# chunks of 8 left 0.20 padding). Under gradient_cache the cap bounds activation memory: set it to what one
# forward may hold.
DEFAULT_MINI_BATCH_SIZE = 32
# Distributions whose forward runs collectives per layer: every process must run the same number of forwards.
SHARDED_FORWARD = ("deepspeed-zero3", "fsdp")

SYMMETRIC = ", ".join(name for name, task in EMBED_TASKS.items() if task.symmetric)


def per_task(attribute: str) -> str:
    """``'task: value, ...'`` of one ``EmbedTask`` field, for the help texts."""
    return ", ".join(f"{name}: {getattr(task, attribute)}" for name, task in EMBED_TASKS.items())


@dataclass
class EmbedConfig(TrainingArguments):
    """Training arguments of the contrastive embedding trainer (``python -m train.embed --help`` lists all)."""

    # ---- objective ----
    loss: dict | str | None = field(
        default=None,
        metadata={
            "help": "Loss name, list of names, or map name -> weight / options, e.g. infonce, [cosent, angle] or "
            "{cosent: {weight: 1, temperature: 0.05}, ibn: 0, angle: 1}. Losses: infonce (temperature, symmetric), "
            "ibn (temperature, threshold), cosent (temperature), angle (temperature), cosine_mse. "
            f"Default per task: {per_task('default_loss')}. On the command line: a name or YAML text."
        },
    )
    temperature: float | None = field(
        default=None,
        metadata={
            "help": "Temperature of every loss that does not set its own (0.05 = scale 20). Default: 0.05."
        },
    )
    # ---- how a step is encoded ----
    mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Most texts per encoder forward inside a step: all of a step's texts (anchors, positives, "
            "negatives, tags) are sorted by token length and encoded in chunks of at most this many, cut where the "
            "length drops (padding saved vs one more forward), each padded only to its own longest text; the loss "
            "still sees the whole batch (same negatives, same loss). With packing (the default where the model "
            "supports it) a forward holds up to mini_batch_size x max_length token slots instead, several texts per "
            "row. With gradient_cache it bounds activation memory. 0 = one forward per role (anchors, candidates), "
            "each padded to its longest. Default: "
            f"{DEFAULT_MINI_BATCH_SIZE} (0 under DeepSpeed ZeRO-3 / FSDP, whose sharded forwards need the same number "
            "of forwards on every process)."
        },
    )
    packing: bool | None = field(
        default=None,
        metadata={
            "help": "Pack several texts into each row of a forward (each with its own positions, attention "
            "block-diagonal: the same embeddings as padded rows, checked on the model at start): forwards of at "
            "most mini_batch_size x max_length token slots, little padding, and far fewer forwards when texts are "
            "short (titles, tags). Needs mini_batch_size > 0 and a model whose attention takes position_ids and a "
            "4D mask (BERT/RoBERTa-like encoders, Llama-like decoders; sdpa or eager attention). Default: on where "
            "the start-up check passes, else length-sorted padded chunks; true makes a failed check an error."
        },
    )
    gradient_cache: bool = field(
        default=False,
        metadata={
            "help": "Gradient cache (GradCache): embed every chunk without autograd, take the full-batch loss's "
            "gradient w.r.t. the embeddings, then re-encode chunk by chunk and backpropagate it (dropout replayed). "
            "Same gradient as a plain step, activation memory of one mini_batch_size chunk, about 1.3-1.5x the "
            "compute. Needs mini_batch_size > 0; not with DeepSpeed ZeRO-3 or FSDP (refused at start)."
        },
    )
    # ---- text -> vector ----
    pooling: str = field(
        default="mean",
        metadata={"help": f"Token states -> one vector: {', '.join(POOLING_MODES)} (last for decoder LLMs)."},
    )
    normalize: bool = field(
        default=True, metadata={"help": "L2-normalise embeddings (cosine = dot product)."}
    )
    dropout: float | None = field(
        default=None,
        metadata={
            "help": "Set every dropout probability of the transformer (unsupervised SimCSE's two views come from "
            "dropout; 0 makes training deterministic). Default: the model's own (0.1 for BERT-like encoders)."
        },
    )
    query_prefix: str = field(
        default="",
        metadata={"help": f"Instruction prepended to anchors / queries / texts (not for {SYMMETRIC})."},
    )
    document_prefix: str = field(
        default="", metadata={"help": f"Prepended to positives / negatives / tags (not for {SYMMETRIC})."}
    )
    # ---- evaluation ----
    eval_task: str | None = field(
        default=None,
        metadata={
            "help": "Schema of eval_data: scored_pairs (STS Spearman), pairs or tags (recall/NDCG/MRR@k). "
            f"Default per task: {per_task('eval_task')}."
        },
    )
    eval_ks: list[int] = field(
        default_factory=lambda: [1, 5, 10], metadata={"help": "k of the retrieval metrics."}
    )
    eval_before_training: bool = field(
        default=True,
        metadata={"help": "Evaluate the untrained model first (before/after table, metrics.json)."},
    )
    embed_batch_size: int = field(default=64, metadata={"help": "Texts per forward pass during evaluation."})
    # ---- Matryoshka widths, several training datasets ----
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={
            "help": "Matryoshka: also train the first d dimensions as embeddings of their own, every loss at every "
            "width, e.g. [384, 256, 128, 64] (--matryoshka_dims 384 256 128 64); strictly descending, the widest <= "
            "the model's hidden size. Evaluation adds the main metric per narrower width (eval_spearman@64); use a "
            "width with eval --truncate-dim d or SentenceTransformer(merged, truncate_dim=d). Default: off."
        },
    )
    matryoshka_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weight of each matryoshka_dims width in the loss (same order, >= 0). Default: all 1."},
    )
    pca_rotation: bool = field(
        default=False,
        metadata={
            "help": "Once training has ended, rotate the embedding space onto the principal axes of the training "
            "texts' embeddings (an orthogonal map: full-width cosines unchanged; the first dimensions carry the most "
            "variance, so truncated embeddings keep more). Saved with the model; see train/embed/rotation.py."
        },
    )
    matryoshka_pca_basis: bool = field(
        default=False,
        metadata={
            "help": "With matryoshka_dims: before training, rotate the embedding space onto the principal axes of "
            "the untrained model's embeddings of the training texts, so the Matryoshka widths are trained as prefixes "
            "of those axes from the first step (an orthogonal map: full-width cosines unchanged). With pca_rotation "
            "the rotation fitted after training is composed with it. Saved with the model; see rotation.py."
        },
    )
    pca_rotation_samples: int = field(
        default=20000,
        metadata={"help": "Training rows whose texts pca_rotation / matryoshka_pca_basis are fitted on (seeded sample)."},
    )
    rotation_refine_steps: int = field(
        default=0,
        metadata={
            "help": "With pca_rotation and matryoshka_dims: after the PCA fit, train the rotation (kept orthogonal) "
            "for N steps so that at every narrower Matryoshka width each training text ranks the other training "
            "texts as the full width does (KL of softmax(cosine / rotation_refine_temperature), weighted by "
            "matryoshka_weights); full-width cosines stay unchanged. 0 = the PCA rotation as is; e.g. 600."
        },
    )
    rotation_refine_temperature: float = field(
        default=0.05, metadata={"help": "Softmax temperature of the rotation_refine_steps neighbour rankings."}
    )
    rotation_refine_objective: str = field(
        default="neighbours",
        metadata={
            "help": "What rotation_refine_steps minimises: neighbours (each training text's neighbour ranking at "
            "the narrower widths matched to the full width's) or training_loss (the run's own loss and weights at "
            "the narrower Matryoshka widths, on batches of 512 of the sampled training rows, embedded once; not "
            "for simcse_unsup, whose two views are one text without dropout). Full-width cosines stay unchanged."
        },
    )
    dataset_sampling: str = field(
        default="proportional",
        metadata={
            "help": "When train_data lists several datasets ([a.jsonl, b.jsonl] or a map name -> source / {data:, "
            "task:, columns:}), each batch comes from one of them: proportional (every batch of every dataset once "
            "per epoch, in a seeded random order: datasets drawn in proportion to their size) or round_robin (one "
            "batch of each dataset in turn). See train/embed/sampling.py."
        },
    )

    # ---- TrainingArguments defaults that differ ----
    output_dir: str | None = field(default="outputs/embed", metadata={"help": "Where everything is written."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (AdamW)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Anchors per process per step."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over train_data."})
    warmup_steps: float = field(
        default=0.1,
        metadata={"help": "Linear warm-up: steps (int >= 1) or a share of all steps (float < 1)."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log loss and telemetry every N steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "no, steps or epoch (needs eval_data)."})
    save_strategy: str = field(default="epoch", metadata={"help": "no, steps, epoch or best."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most N checkpoints (+ the best)."}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={"help": "Export the best checkpoint by metric_for_best_model (needs eval_data)."},
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "tensorboard, wandb, none, ..."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the raw text columns."}
    )

    def __post_init__(self):
        if self.load_best_model_at_end and str(self.save_strategy) != str(self.eval_strategy):
            # The best checkpoint needs an evaluation at every save: evaluation follows the checkpoints
            # (a recipe that only says save_strategy: steps / no must not fail on TrainingArguments' check).
            if str(self.save_strategy) == "no":
                self.load_best_model_at_end = False
            elif str(self.save_strategy) != "best":
                self.eval_strategy = self.save_strategy
                self.eval_steps = self.eval_steps or self.save_steps
        super().__post_init__()
        if isinstance(self.loss, str) and self.loss.strip().startswith(("{", "[")):
            self.loss = yaml.safe_load(self.loss)  # --loss '{cosent: 1, angle: 1}' from the command line
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling must be one of {', '.join(POOLING_MODES)}; got {self.pooling!r}")
        if self.eval_task is not None and self.eval_task not in EVAL_METRICS:
            raise ConfigError(f"eval_task must be one of {', '.join(EVAL_METRICS)}; got {self.eval_task!r}")
        if self.remove_unused_columns:
            raise ConfigError(
                "remove_unused_columns must be false for train.embed (the collator reads the texts)"
            )
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.mini_batch_size is not None and self.mini_batch_size < 0:
            raise ConfigError(f"mini_batch_size must be >= 0 (0 = one forward per role); got {self.mini_batch_size}")
        if self.gradient_cache and self.mini_batch_size == 0:
            raise ConfigError("gradient_cache needs mini_batch_size > 0 (the texts per re-encoded chunk)")
        if self.packing and self.mini_batch_size == 0:
            raise ConfigError("packing needs mini_batch_size > 0 (it packs the length-sorted texts of a step)")
        if not self.eval_ks or min(self.eval_ks) < 1:
            raise ConfigError(f"eval_ks must be positive integers; got {self.eval_ks}")
        matryoshka_dims(self.matryoshka_dims, self.matryoshka_weights)  # ConfigError on bad widths / weights
        if self.pca_rotation_samples < 2:
            raise ConfigError(f"pca_rotation_samples must be >= 2; got {self.pca_rotation_samples}")
        self._check_rotation_refinement()
        if self.dataset_sampling not in SAMPLING:
            raise ConfigError(f"dataset_sampling must be one of {', '.join(SAMPLING)}; got {self.dataset_sampling!r}")

    def _check_rotation_refinement(self) -> None:
        if self.rotation_refine_steps < 0:
            raise ConfigError(f"rotation_refine_steps must be >= 0; got {self.rotation_refine_steps}")
        if self.rotation_refine_temperature <= 0:
            raise ConfigError(f"rotation_refine_temperature must be > 0; got {self.rotation_refine_temperature}")
        if self.rotation_refine_objective not in REFINE_OBJECTIVES:
            raise ConfigError(
                f"rotation_refine_objective must be one of {', '.join(REFINE_OBJECTIVES)}; "
                f"got {self.rotation_refine_objective!r}"
            )
        if self.rotation_refine_steps and not self.pca_rotation:
            raise ConfigError("rotation_refine_steps refines the PCA rotation: set pca_rotation: true as well")
        if self.matryoshka_pca_basis and not self.matryoshka_dims:
            raise ConfigError(
                "matryoshka_pca_basis trains the matryoshka_dims widths in the principal-axes basis: set "
                "matryoshka_dims as well (e.g. 384 256 128 64); without narrower widths a rotation changes no loss"
            )
        if self.rotation_refine_steps and not self.matryoshka_dims:
            raise ConfigError(
                "rotation_refine_steps needs matryoshka_dims with narrower widths (e.g. 384 256 128 64): they are "
                "the widths whose neighbour rankings it matches to the full width's"
            )


def resolve_task_defaults(config: EmbedConfig, task: EmbedTask, has_eval_data: bool) -> None:
    """Fill the settings that depend on the task and on whether there is eval data (in place).

    - ``eval_task`` defaults to the task's (``EmbedTask.eval_task``);
    - without eval data: no evaluation and no best-model reload;
    - ``metric_for_best_model`` left unset (TrainingArguments turns that into ``loss``, which an embedding
      evaluation does not produce) becomes the eval task's main metric (``EVAL_METRICS``), higher is better;
      a name the evaluation does not report is a ConfigError (``launch.check_best_metric``).

    Query / document prefixes on a symmetric task (whose texts are embedded without them) are a ConfigError.
    """
    check_refine_task(config, task)
    if task.symmetric and (config.query_prefix or config.document_prefix):
        raise ConfigError(
            f"query_prefix / document_prefix do not apply to task {task.name}: both sides are the same kind of text "
            "and are embedded without prefixes (as eval.sts does). Remove them, or use pairs / triplets / tags"
        )
    config.eval_task = config.eval_task or task.eval_task
    disable_evaluation_without_data(config, has_eval_data)
    if not has_eval_data:
        config.eval_before_training = False
        return
    if config.metric_for_best_model in (None, "loss", "eval_loss"):
        config.metric_for_best_model = EVAL_METRICS[config.eval_task]
        config.greater_is_better = True
    check_best_metric(config, metric_names(config.eval_task, config.eval_ks, config.matryoshka_dims))


def check_refine_task(config: EmbedConfig, task: EmbedTask) -> None:
    """ConfigError when ``rotation_refine_objective: training_loss`` would refine on ``task``'s loss and that loss
    has nothing to fit on cached embeddings: a task whose positive is the anchor's own text (SimCSE's two dropout
    views are one embedding once cached)."""
    if config.rotation_refine_steps and config.rotation_refine_objective == "training_loss" and task.positive_is_anchor:
        raise ConfigError(
            f"rotation_refine_objective training_loss refines on the training loss of cached embeddings, but task "
            f"{task.name} pairs each text with itself (two dropout views, one embedding once cached): use "
            "rotation_refine_objective: neighbours"
        )


def resolve_mini_batches(config: EmbedConfig, distribution: str) -> None:
    """Fill ``mini_batch_size`` for ``distribution`` (``launch.distribution``) and refuse what cannot run, before
    any model is loaded (in place).

    Under DeepSpeed ZeRO-3 and FSDP every forward gathers the sharded weights layer by layer, a collective every
    process must join: length-sorted chunks (their number differs between processes) and the gradient cache
    cannot run there. The default becomes 0 (one forward per role, as many on every process); an explicit
    ``mini_batch_size > 0`` or ``gradient_cache`` is a ConfigError naming the launches that support them.
    """
    if distribution in SHARDED_FORWARD:
        name = "DeepSpeed ZeRO-3" if distribution == "deepspeed-zero3" else "FSDP"
        if config.gradient_cache or config.mini_batch_size or config.packing:
            raise ConfigError(
                f"gradient_cache, packing and mini_batch_size > 0 cannot run under {name}: its sharded forwards "
                "need the same number of forwards on every process, and length-sorted chunks differ per process. "
                "Use accelerate_configs/ddp.yaml or zero2.yaml (ZeRO-2 shards the optimizer and gradients and "
                "keeps the cache), or set gradient_cache: false, packing: false and mini_batch_size: 0"
            )
        config.mini_batch_size = 0
    elif config.mini_batch_size is None:
        config.mini_batch_size = DEFAULT_MINI_BATCH_SIZE


def encoding_mode(config: EmbedConfig, packing: bool) -> str:
    """The plan's description of how a step is encoded (after :func:`resolve_mini_batches`; ``packing``: what
    ``packing.resolve_packing`` decided)."""
    same = "negatives per anchor unchanged (the loss sees the whole global batch)"
    size = config.mini_batch_size
    chunks = (
        f"packed forwards of <= {size} x max_length token slots (several texts per row, block-diagonal attention)"
        if packing
        else f"length-sorted chunks of <= {size} texts"
    )
    if config.gradient_cache:
        return (
            f"gradient cache: {chunks} embedded without autograd, then re-encoded with the full-batch gradient "
            f"(activations of one chunk at a time); {same}"
        )
    if size:
        return f"chunked: {chunks}, one backward per step; {same}"
    return "plain: one forward per role (anchors, candidates), each padded to its longest text"
