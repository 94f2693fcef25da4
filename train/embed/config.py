"""``EmbedConfig``: the ``TrainingArguments`` of ``train/embed/__main__.py`` plus what a contrastive run needs.

Fields are grouped by concern: the objective (``loss``, ``temperature``), how a step is encoded, how a text becomes
a vector (``pooling``, ``normalize``, query/document prefixes), what is evaluated (``eval_task``, ``eval_ks``) and
the Matryoshka widths; ``max_length`` and the LoRA fields live in ``ModelArguments`` (shared by every entrypoint).
The ``TrainingArguments`` defaults it changes are chosen for contrastive fine-tuning; each field's help says why.
``remove_unused_columns`` stays False: rows reach the collator as raw texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import yaml
from transformers import TrainingArguments

from lorasmith.errors import ConfigError
from lorasmith.pooling import POOLING_MODES
from lorasmith.recipe_fields import option
from train.common.args import CLASSIFICATION_DATA_FIELDS, HUB_FIELDS
from train.embed import rotation
from train.embed.loss_spec import losses_help
from train.embed.tasks import EMBED_TASKS, EVAL_METRICS

# Most texts per forward when the recipe does not say. The chunking (collator.LengthSortedChunker) picks the cuts
# itself (fewest forwards at <= 10 % padding over the run), so this is only a cap: bench/embed_throughput.py
# (MiniLM + LoRA, 2 CPU cores, 150 steps of rows sampled from the whole train sets) measured with 32: STS-B batch 16
# padding 0.10, 1.42x sentence-transformers' pairs/s; StackOverflow tags batch 32 (texts of ~6 tokens, where the
# fixed cost of each forward weighs most) padding 0.10, 1.06x-1.42x over three runs on a noisy machine (fixed
# chunks of 8 left 0.20 padding). Under gradient_cache the cap bounds activation memory: set it to what one
# forward may hold.
DEFAULT_MINI_BATCH_SIZE = 32

SYMMETRIC = ", ".join(name for name, task in EMBED_TASKS.items() if task.symmetric)


def per_task(attribute: str) -> str:
    """``'task: value, ...'`` of one ``EmbedTask`` field, for the help texts."""
    return ", ".join(f"{name}: {getattr(task, attribute)}" for name, task in EMBED_TASKS.items())


@dataclass
class EmbedConfig(TrainingArguments):
    """Training arguments of the contrastive embedding trainer (``python -m train.embed --help`` lists all).

    Per-field ranges are checked by ``lorasmith.recipe_checks`` before this is built; ``__post_init__`` checks
    what involves several fields; ``train.embed.resolve.resolve_run`` fills what depends on the task, the data and
    the launch, once, into a new config."""

    _argument_group_name = "Contrastive training"
    not_offered = HUB_FIELDS | CLASSIFICATION_DATA_FIELDS | {"label_smoothing_factor", "neftune_noise_alpha"}

    # recipe keys that were replaced, and what to write instead (recipe_parser names them in its error)
    renamed_keys: ClassVar[dict[str, str]] = rotation.RENAMED_KEYS

    # ---- objective ----
    loss: dict | str | None = option(
        "Loss name, list of names, or map name -> weight / options, e.g. infonce, [cosent, angle] or "
        f"{{cosent: {{weight: 1, temperature: 0.05}}, ibn: 0, angle: 1}}. Losses: {losses_help()}. "
        f"Default per task: {per_task('default_loss')}. On the command line: a name or YAML text.",
        default=None,
    )
    temperature: float | None = option(
        "Temperature of every loss that does not set its own (0.05 = scale 20). Default: 0.05.", default=None
    )
    # ---- how a step is encoded ----
    mini_batch_size: int | None = option(
        "Most texts per encoder forward inside a step: all of a step's texts (anchors, positives, "
        "negatives, tags) are sorted by token length and encoded in chunks of at most this many, cut where the "
        "length drops (padding saved vs one more forward), each padded only to its own longest text; the loss "
        "still sees the whole batch (same negatives, same loss). With packing (the default where the model "
        "supports it) a forward holds up to mini_batch_size x max_length token slots instead, several texts per "
        "row. With gradient_cache it bounds activation memory. 0 = one forward per role (anchors, candidates), "
        "each padded to its longest. Default: "
        f"{DEFAULT_MINI_BATCH_SIZE} (0 under DeepSpeed ZeRO-3 / FSDP, whose sharded forwards need the same number "
        "of forwards on every process).",
        default=None,
    )
    packing: bool | None = option(
        "Pack several texts into each row of a forward (each with its own positions, attention "
        "block-diagonal: the same embeddings as padded rows, checked on the model at start): forwards of at "
        "most mini_batch_size x max_length token slots, little padding, and far fewer forwards when texts are "
        "short (titles, tags). Needs mini_batch_size > 0 and a model whose attention takes position_ids and a "
        "4D mask (BERT/RoBERTa-like encoders, Llama-like decoders; sdpa or eager attention). Default: on where "
        "the start-up check passes, else length-sorted padded chunks; true makes a failed check an error.",
        default=None,
    )
    gradient_cache: bool = option(
        "Gradient cache (GradCache): embed every chunk without autograd, take the full-batch loss's "
        "gradient w.r.t. the embeddings, then re-encode chunk by chunk and backpropagate it (dropout replayed). "
        "Same gradient as a plain step, activation memory of one mini_batch_size chunk, about 1.3-1.5x the "
        "compute. Needs mini_batch_size > 0; not with DeepSpeed ZeRO-3 or FSDP (refused at start).",
        default=False,
    )
    # ---- text -> vector ----
    pooling: str = option(
        f"Token states -> one vector: {', '.join(POOLING_MODES)} (last for decoder LLMs).", default="mean"
    )
    normalize: bool = option("L2-normalise embeddings (cosine = dot product).", default=True)
    append_eos: bool | None = option(
        "End every text with the tokenizer's EOS token (kept under truncation), in training, evaluation, mining "
        "and the exported tokenizer. Default: on for a decoder LLM with pooling: last, off otherwise.",
        default=None,
    )
    dropout: float | None = option(
        "Set every dropout probability of the transformer (unsupervised SimCSE's two views come from "
        "dropout; 0 makes training deterministic). Default: the model's own (0.1 for BERT-like encoders).",
        default=None,
    )
    query_prefix: str = option(
        "Instruction put before anchors / queries: a prefix, or a template ending with {text} ('Instruct: Given a "
        f"question, retrieve passages that answer it\\nQuery: {{text}}'); on both sides for {SYMMETRIC}. A dataset of "
        "a multi-dataset train_data may set its own. Exported as the sentence-transformers prompt 'query' (and one "
        "per dataset, by name). See train/embed/instructions.py.",
        default="",
    )
    document_prefix: str = option(
        f"Put before positives / negatives / tags (a prefix or a template ending with {{text}}; not for {SYMMETRIC}, "
        "which use query_prefix on both sides).",
        default="",
    )
    # ---- evaluation ----
    eval_task: str | None = option(
        "Schema of eval_data: scored_pairs (STS Spearman), pairs or tags (recall/NDCG/MRR@k). "
        f"Default per task: {per_task('eval_task')}.",
        default=None,
    )
    eval_ks: list[int] = option("k of the retrieval metrics.", default_factory=lambda: [1, 5, 10])
    eval_before_training: bool = option(
        "Evaluate the untrained model first (before/after table, metrics.json).", default=True
    )
    embed_batch_size: int = option("Texts per forward pass during evaluation.", default=64)
    # ---- Matryoshka widths, several training datasets ----
    matryoshka_dims: list[int] | None = option(
        "Matryoshka: also train the first d dimensions as embeddings of their own, every loss at every "
        "width, e.g. [384, 256, 128, 64] (--matryoshka_dims 384 256 128 64); strictly descending, the widest <= "
        "the model's hidden size. Evaluation adds the main metric per narrower width (eval_spearman@64); use a "
        "width with eval --truncate_dim d or SentenceTransformer(merged, truncate_dim=d). Default: off.",
        default=None,
    )
    matryoshka_weights: list[float] | None = option(
        "Weight of each matryoshka_dims width in the loss (same order, >= 0). Default: all 1.", default=None
    )
    matryoshka_rotation: dict | str | None = rotation.recipe_field()
    dataset_sampling: str = option(
        "When train_data lists several datasets ([a.jsonl, b.jsonl] or a map name -> source / {data:, "
        "task:, columns:}), each batch comes from one of them: proportional (every batch of every dataset once "
        "per epoch, in a seeded random order: datasets drawn in proportion to their size) or round_robin (one "
        "batch of each dataset in turn). See train/embed/sampling.py.",
        default="proportional",
    )

    # ---- TrainingArguments defaults that differ ----
    output_dir: str | None = option("Where everything is written.", default="outputs/embed")
    learning_rate: float = option("Peak learning rate (AdamW; sentence-transformers' bi-encoder's).", default=2e-5)
    per_device_train_batch_size: int = option(
        "Anchors per process per step (in-batch negatives want big batches).", default=32
    )
    num_train_epochs: float = option("Epochs over train_data.", default=1.0)
    warmup_steps: float = option(
        "Linear warm-up: steps (int >= 1) or a share of all steps (float < 1).", default=0.1
    )
    logging_steps: float = option("Log loss and telemetry every N steps.", default=10)
    eval_strategy: str = option(
        "no, steps or epoch (needs eval_data); follows save_strategy when the two differ and "
        "load_best_model_at_end is on (the best checkpoint needs an evaluation at each save).",
        default="epoch",
    )
    save_strategy: str = option("no, steps, epoch or best.", default="epoch")
    save_total_limit: int | None = option("Keep at most N checkpoints (+ the best).", default=2)
    load_best_model_at_end: bool = option(
        "Export the best checkpoint by metric_for_best_model (default: the eval task's main metric, spearman for "
        "STS, ndcg@10 for retrieval; needs eval_data, else the last model is exported).",
        default=True,
    )
    report_to: None | str | list[str] = option("tensorboard, wandb, none, ...", default="tensorboard")
    remove_unused_columns: bool = option(
        "Must stay False: the collator reads the raw text columns.", default=False
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
        if self.gradient_cache and self.mini_batch_size == 0:
            raise ConfigError("gradient_cache needs mini_batch_size > 0 (the texts per re-encoded chunk)")
        if self.packing and self.mini_batch_size == 0:
            raise ConfigError("packing needs mini_batch_size > 0 (it packs the length-sorted texts of a step)")


def encoding_mode(config: EmbedConfig, packing: bool) -> str:
    """The plan's description of how a step is encoded (of a resolved config; ``packing``: what
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
