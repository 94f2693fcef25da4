"""The trainable embedding model: a transformer (optionally with LoRA) + pooling + optional L2 normalisation.

``EmbeddingModel`` is the ONE ``nn.Module`` that ``Trainer`` prepares (DDP / DeepSpeed wrap it), so every
trainable parameter is used in each forward (DDP requirement). Its forward embeds a list of chunks (the
collator's ``chunks``: every text of the step, packed several to a row, in length-sorted mini-batches or one chunk
per role) and returns
their embeddings in chunk order; :func:`in_text_order` puts them back in the step's text order. A plain step
is one forward of all chunks; the gradient cache (``cached.py``) calls it once per chunk.

The encoder is whatever ``train.common.modeling.load_model`` + ``apply_tuning`` returned: a
``PreTrainedModel`` (full fine-tuning) or a ``PeftModel`` around one (LoRA, LoRA on chosen layers, a
continued adapter). Pooling is ``lorasmith.pooling.pool``, the same function evaluation uses, so the vectors
trained here are the vectors ``lorasmith.encoder.Embedder`` produces from the exported model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel

from lorasmith.pooling import is_causal, pool, validate_pooling_mode
from lorasmith.tokenizer_inputs import positions_from_mask
from train.common.args import ModelArguments
from train.common.modeling import apply_tuning, load_model
from train.common.packing import first_position, packed_model_inputs, unpack


class EmbeddingModel(nn.Module):
    """``texts (tokenized) -> (N, D)`` embeddings for the anchor and candidate roles of a batch.

    Args:
        encoder: a ``PreTrainedModel`` returning ``last_hidden_state`` (AutoModel: no LM / pooler head), or a
            ``PeftModel`` around one.
        pooling: one of ``lorasmith.pooling.POOLING_MODES``.
        normalize: L2-normalise the pooled vectors (rows of the outputs have norm 1).

    ``rotation`` (``(D, D)`` or None): an orthogonal map applied to the pooled vectors before normalisation
    (``rotation.py``, installed by :meth:`set_rotation` once training has ended, or before it with the
    rotation's ``fit: before``; otherwise None while training). A non-persistent buffer: not in checkpoints.
    """

    def __init__(self, encoder: PreTrainedModel | PeftModel, pooling: str, normalize: bool):
        super().__init__()
        self.encoder = encoder
        self.pooling = validate_pooling_mode(pooling)
        self.normalize = normalize
        # decoder models attend to earlier tokens only; packed rows must keep that (packing.packed_attention_mask)
        self.causal = is_causal(encoder)
        self.first_position = first_position(encoder)
        self.register_buffer("rotation", None, persistent=False)

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(N, T)`` token ids and mask -> ``(N, D)`` pooled (and normalised) embeddings, differentiable. A decoder
        gets positions from the mask, so left and right padding embed a text alike."""
        positions = {"position_ids": positions_from_mask(attention_mask)} if self.causal else {}
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **positions
        ).last_hidden_state  # (N, T, D)
        return self.finish(pool(hidden, attention_mask, self.pooling))

    def embed_packed(self, chunk: dict[str, Tensor]) -> Tensor:
        """A packed chunk (``packing.py``: ``n`` texts in ``R`` rows of ``L`` tokens) -> ``(n, D)`` embeddings,
        differentiable: one encoder call with per-text positions and block-diagonal attention, then each text's
        token states gathered into the padded per-text layout ``(n, T, D)`` that :func:`lorasmith.pooling.pool` reads."""
        config, dtype = self.base_model.config, self.embedding_dtype()
        inputs = packed_model_inputs(config, chunk, dtype, self.causal, self.first_position)
        hidden = self.encoder(**inputs).last_hidden_state  # (R, L, D)
        per_text = unpack(hidden, chunk)  # (n, T, D)
        return self.finish(pool(per_text, chunk["attention_mask"], self.pooling))

    def finish(self, embeddings: Tensor) -> Tensor:
        """``(N, D)`` pooled -> rotated (when a rotation is set) -> L2-normalised when ``normalize``."""
        if self.rotation is not None:
            embeddings = embeddings @ self.rotation.to(embeddings.dtype)
        return F.normalize(embeddings, p=2, dim=-1) if self.normalize else embeddings

    def set_rotation(self, rotation: Tensor) -> None:
        """Install a ``(D, D)`` rotation (``rotation.py``) on the encoder's device."""
        self.rotation = rotation.to(next(self.encoder.parameters()).device)

    def forward(self, chunks: list[dict[str, Tensor]]) -> Tensor:
        """Chunks of tokenized texts -> ``(sum n_c, D)`` embeddings in chunk order, one encoder call per chunk:
        padded chunks (``input_ids`` / ``attention_mask`` ``(n_c, T_c)``, each padded only to its own longest
        text) or packed ones (with ``segments``: several texts per row, ``packing.py``).

        For unsupervised SimCSE every text occurs twice among the chunks, so dropout gives the two views.
        """
        return torch.cat([self.embed_chunk(chunk) for chunk in chunks])

    def embed_chunk(self, chunk: dict[str, Tensor]) -> Tensor:
        """One chunk, packed (with ``segments``) or padded -> its ``(n_c, D)`` embeddings."""
        if "segments" in chunk:
            return self.embed_packed(chunk)
        return self.embed(chunk["input_ids"], chunk["attention_mask"])

    # ---- what Trainer asks of a model ----

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformer under any PEFT wrapper."""
        return self.encoder.get_base_model() if isinstance(self.encoder, PeftModel) else self.encoder

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **options) -> None:
        """Trainer's ``activation_checkpointing`` (alias ``gradient_checkpointing``): checkpoint the transformer's
        layers, non-reentrant by default (reentrant checkpointing with frozen inputs would give LoRA no gradient;
        ``apply_tuning`` also makes the input embeddings require grad for that case)."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        self.base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)

    def get_input_embeddings(self) -> nn.Module:
        """The transformer's token embeddings (the start-up check of LoRA + checkpointing inspects them)."""
        return self.base_model.get_input_embeddings()

    def embedding_dtype(self) -> torch.dtype:
        """dtype of the token embeddings: the one transformers builds additive attention masks in."""
        return self.get_input_embeddings().weight.dtype

    def hidden_size(self) -> int:
        """``D``: width of the embeddings (the transformer's hidden size)."""
        return self.base_model.config.hidden_size


def in_text_order(embeddings: Tensor, text_order: Tensor) -> Tensor:
    """``(N, D)`` embeddings in chunk order -> ``(N, D)`` in text order (row ``text_order[j]`` of the result is
    row ``j`` of ``embeddings``); differentiable, so the gradient flows back to the chunk rows."""
    inverse = torch.empty_like(text_order)
    inverse[text_order] = torch.arange(text_order.shape[0], device=text_order.device)
    return embeddings.index_select(0, inverse)


def set_dropout(model: nn.Module, probability: float) -> None:
    """Every ``nn.Dropout`` of ``model`` and every ``*dropout*`` probability of its config -> ``probability``
    (the config covers models that call ``F.dropout`` with a config value, e.g. Llama's attention dropout)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
    config = model.config
    for name, value in vars(config).items():
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, probability)
    for module in model.modules():  # attention layers that copied the config value at construction
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = probability


def build_embedding_model(
    model_args: ModelArguments,
    pooling: str,
    normalize: bool,
    gradient_checkpointing: bool = False,
    dropout: float | None = None,
) -> EmbeddingModel:
    """Load the recipe's transformer with ``AutoModel`` (hidden states; BERT poolers dropped) and make it
    trainable as the recipe says (LoRA / LoRA on chosen layers / full fine-tuning / a continued adapter).

    ``dropout`` (if not None) overrides the transformer's dropout probabilities (LoRA's is ``lora_dropout``).
    ``gradient_checkpointing`` only prepares the model for it (Trainer turns it on through
    :meth:`EmbeddingModel.activation_checkpointing_enable`)."""
    encoder = load_model(model_args, AutoModel)
    if dropout is not None:
        set_dropout(encoder, dropout)
    encoder = apply_tuning(
        encoder, model_args, "FEATURE_EXTRACTION", gradient_checkpointing=gradient_checkpointing
    )
    return EmbeddingModel(encoder, pooling, normalize)
