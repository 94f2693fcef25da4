"""Packed forwards of ``train.sft_classify`` (``packing``): the prompt-completion rows of a batch share rows of one
forward (``train.common.packing``: per-row positions, block-diagonal causal attention or FlashAttention's varlen
rows), so the loss — TRL's, on the answer tokens, per token — and its gradients are those of the padded batch.

The labels are packed with the ids. A causal LM's loss pairs the state at each position with the next position's
label; in a packed row the position after a text's last token is the next text's first, so every text's first
label is set to -100 (it is never a target in the padded batch either: the shift drops it). Padding is -100.
Label scoring (``lorasmith.classifiers.prompt``) reads its own padded batches and is unchanged.

Only the answer is scored. TRL's fused LM head projects every position onto the vocabulary where Triton does not
run (a CPU: for SmolLM2-135M the head is a fifth of each token's forward, and it runs three times per step), though
the loss reads a handful of answer positions. :meth:`PackedCausalLM.answer_inputs` hands it only the states that
predict an answer token (``shift_labels``, TRL's pre-shifted targets): the same loss, gradients and logged entropy
and token accuracy, for the head's cost on a few positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from train.common.packing import (
    PROBE_TEXTS,
    attention_pair_cost,
    check_tolerance,
    pack_batch,
    packed_model_inputs,
    relative_difference,
    unpack,
    uses_varlen_attention,
)

IGNORE = -100  # the label of a position without a target


class PackedCausalLM:
    """How one causal LM runs packed SFT batches: its config, pad id and row width (``max_length``)."""

    def __init__(self, model: nn.Module, pad_id: int, max_width: int):
        self.config = model.config
        self.dtype = model.get_input_embeddings().weight.dtype
        self.pad_id, self.max_width = pad_id, max_width
        self.attention_cost = attention_pair_cost(self.config)
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT
        self.backbone = causal_lm.base_model  # the transformer whose states TRL's fused LM head scores

    def pack(self, inputs: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """A padded batch (``input_ids`` / ``attention_mask`` / ``labels`` ``(B, W)``, as TRL's collator gives it) ->
        (the model inputs of its packed rows: ``input_ids`` / ``position_ids`` / ``labels`` ``(R, L)`` and the 4D
        attention mask, absent under varlen attention; the packed chunk, ``train.common.packing``)."""
        labels = inputs.get("labels", inputs["input_ids"])
        chunk, _ = pack_batch(
            inputs["input_ids"], inputs["attention_mask"], self.pad_id, self.max_width,
            one_row=uses_varlen_attention(self.config), per_token={"labels": (labels, IGNORE)},
            attention_cost=self.attention_cost,
        )  # fmt: skip
        packed_labels = chunk["labels"].masked_fill(chunk["position_ids"] == 0, IGNORE)
        model_inputs = packed_model_inputs(self.config, chunk, self.dtype, causal=True)
        if model_inputs["attention_mask"] is None:  # varlen: TRL then counts tokens from the positions
            del model_inputs["attention_mask"]
        return {**model_inputs, "labels": packed_labels}, chunk

    @contextmanager
    def answer_inputs(self, inputs: Mapping[str, Tensor]) -> Iterator[dict[str, Tensor]]:
        """The packed model inputs of a padded batch (:meth:`pack`) for TRL's fused LM head, scoring answers only:
        the ``(R, L)`` labels become ``shift_labels`` ``(1, N)``, the batch's N answer targets in row order, and
        while the context is open the backbone returns only the ``(1, N, H)`` states that predict them (a forward
        hook; TRL scores ``shift_labels`` against the states as they come, without shifting)."""
        model_inputs, _ = self.pack(inputs)
        targets = model_inputs.pop("labels")[:, 1:]  # (R, L - 1): the label each position predicts
        answers = targets != IGNORE

        def keep_answer_states(module, args, output):
            output.last_hidden_state = output.last_hidden_state[:, :-1][answers].unsqueeze(0)
            return output

        handle = self.backbone.register_forward_hook(keep_answer_states)
        try:
            yield {**model_inputs, "shift_labels": targets[answers].unsqueeze(0)}
        finally:
            handle.remove()


def packing_problem(model: nn.Module, tokenizer, max_length: int) -> str | None:
    """None when the causal LM ``model`` gives every token of :data:`PROBE_TEXTS` the same next-token logits packed
    as padded (dropout off; relative difference within ``check_tolerance``), else why not."""
    parameter = next(model.parameters())
    batch = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = {name: batch[name].to(parameter.device) for name in ("input_ids", "attention_mask")}
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            padded = model(**batch).logits  # (n, W, V)
            packed, chunk = PackedCausalLM(model, tokenizer.pad_token_id, max_length).pack(batch)
            packed.pop("labels")
            candidate = unpack(model(**packed).logits, chunk)  # (n, T, V), longest text first
    except (TypeError, ValueError, RuntimeError) as error:
        return f"this model cannot run packed rows ({type(error).__name__}: {error})"
    finally:
        model.train(training)
    order = torch.argsort(batch["attention_mask"].sum(dim=1), descending=True, stable=True)
    reference = torch.zeros_like(candidate)
    for k, row in enumerate(order.tolist()):  # each text's own logits, from the left of its padded row
        tokens = batch["attention_mask"][row].bool()
        reference[k, : int(tokens.sum())] = padded[row][tokens]
    candidate = candidate * chunk["attention_mask"].unsqueeze(-1)
    error = relative_difference(candidate, reference)
    if error > check_tolerance(parameter):
        attention = getattr(model.config, "_attn_implementation", "?")
        return (
            f"this model scores packed texts differently from padded ones (relative difference {error:.2g}): its "
            f"attention ignores position_ids or the block-diagonal 4D mask (attention implementation {attention})"
        )
    return None
