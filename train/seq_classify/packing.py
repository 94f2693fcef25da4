"""Packed forwards of ``train.seq_classify`` (``packing``): the texts of a batch share rows of one backbone forward
(``train.common.packing``), and the head reads each text's own states, so logits, loss and gradients are those of
the padded batch.

:func:`packed_forward` calls the whole classifier — PEFT wrapper, DDP, the architecture's own head code — on the
per-text layout ``(B, T)`` (each text's ids padded on the right), while the backbone (``base_model_prefix``: BERT's
``bert``, Llama's ``model``) runs the packed rows ``(R, L)`` instead and hands back each text's states ``(B, T, D)``
(its pooler, when it has one, recomputed from them). Every head then reads what it reads in a padded batch: the
first token (BERT, DistilBERT, RoBERTa, DeBERTa), the last non-padding token of the ids (Llama, Qwen...), or the
mean (``head_pooling: mean``, whose hook sees the per-text mask). :func:`packing_problem` checks that on the live
model at start-up (logits of :data:`~train.common.packing.PROBE_TEXTS` packed vs padded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lorasmith.classifiers.head_pooling import classification_backbone
from lorasmith.pooling import is_causal
from train.common.packing import (
    PROBE_TEXTS,
    attention_pair_cost,
    check_tolerance,
    first_position,
    pack_batch,
    packed_model_inputs,
    relative_difference,
    unpack,
    uses_varlen_attention,
)


class PackedClassifier:
    """How one classifier runs packed batches: its backbone, pad id and row width (``max_length``)."""

    def __init__(self, model: nn.Module, pad_id: int, max_width: int):
        self.backbone = classification_backbone(model)
        self.pad_id, self.max_width = pad_id, max_width
        self.causal = is_causal(self.backbone)
        self.first_position = first_position(self.backbone)
        self.attention_cost = attention_pair_cost(self.backbone.config)

    def forward(self, model: nn.Module, inputs: Mapping[str, Tensor]):
        """``model`` (the trainer's, possibly DDP-wrapped) on a padded batch (``input_ids`` / ``attention_mask``
        ``(B, W)``, optional ``token_type_ids``; no labels) -> (its outputs, ``logits`` ``(B, num_labels)`` in batch
        order, the token slots the packed forward used)."""
        config = self.backbone.config
        per_token = {"token_type_ids": (inputs["token_type_ids"], 0)} if "token_type_ids" in inputs else {}
        chunk, order = pack_batch(
            inputs["input_ids"], inputs["attention_mask"], self.pad_id, self.max_width,
            one_row=uses_varlen_attention(config), per_token=per_token,
            attention_cost=self.attention_cost,
        )  # fmt: skip
        mask = chunk["attention_mask"]  # (B, T): each text's tokens, on the right
        per_text = {
            "input_ids": torch.where(mask.bool(), unpack(chunk["input_ids"], chunk), self.pad_id),
            "attention_mask": mask,
        }
        if per_token:
            per_text["token_type_ids"] = unpack(chunk["token_type_ids"], chunk) * mask
        with self.packed_backbone(chunk):
            outputs = model(**per_text)
        inverse = torch.argsort(order)
        outputs["logits"] = outputs["logits"][inverse]  # sorted (longest first) -> batch order
        return outputs, chunk["input_ids"].numel()

    @contextlib.contextmanager
    def packed_backbone(self, chunk: Mapping[str, Tensor]):
        """While open, a call of the backbone (whatever it is passed) runs ``chunk``'s packed rows and returns the
        per-text layout (module docstring)."""
        backbone = self.backbone
        original = backbone.forward
        dtype = backbone.get_input_embeddings().weight.dtype
        inputs = packed_model_inputs(backbone.config, chunk, dtype, self.causal, self.first_position)
        if "token_type_ids" in chunk:
            inputs["token_type_ids"] = chunk["token_type_ids"]

        def forward(*args, **kwargs):
            outputs = original(**inputs)
            hidden = unpack(outputs["last_hidden_state"], chunk)  # (R, L, D) -> (B, T, D)
            outputs["last_hidden_state"] = hidden
            pooler = getattr(backbone, "pooler", None)
            if pooler is not None and outputs.get("pooler_output") is not None:
                outputs["pooler_output"] = pooler(hidden)
            return outputs

        backbone.forward = forward
        try:
            yield
        finally:
            del backbone.forward  # the class's forward again


def packing_problem(model: nn.Module, tokenizer, max_length: int) -> str | None:
    """None when the classifier ``model`` gives :data:`PROBE_TEXTS` the same logits packed as padded (dropout off;
    relative difference within :func:`~train.common.packing.check_tolerance`), else why not."""
    parameter = next(model.parameters())
    batch = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = {name: tensor.to(parameter.device) for name, tensor in batch.items()}
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(**batch).logits
            candidate, _ = PackedClassifier(model, tokenizer.pad_token_id, max_length).forward(model, batch)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as error:
        return f"this model cannot classify packed rows ({type(error).__name__}: {error})"
    finally:
        model.train(training)
    error = relative_difference(candidate["logits"], reference)
    if error > check_tolerance(parameter):
        attention = getattr(classification_backbone(model).config, "_attn_implementation", "?")
        return (
            f"this model classifies packed texts differently from padded ones (relative difference {error:.2g}): "
            f"its attention ignores position_ids or the block-diagonal 4D mask (attention implementation {attention})"
        )
    return None
