"""The start-up check of ``train.embed``'s packed forwards (``packing``): the live model must embed texts packed
several to a row (``train.common.packing``) as it embeds them padded one per row, or the run encodes padded chunks.
"""

from __future__ import annotations

import torch

from train.common.packing import (
    PROBE_TEXTS,
    check_tolerance,
    decide_packing,
    pack_chunk,
    pack_steps,
    relative_difference,
)


def resolve_packing(config, model, tokenizer, max_length: int) -> bool:
    """Whether this run packs (``config`` an ``EmbedConfig``, left as the recipe says): ``packing`` None (the
    default) -> True when the model embeds packed rows as padded ones (:func:`packing_problem`), False otherwise
    (logged); True on a model that does not is a ConfigError; False, or no mini-batches (``mini_batch_size`` 0),
    -> False without a check."""
    if not config.mini_batch_size:
        return False
    return decide_packing(config.packing, lambda: packing_problem(model, tokenizer, max_length), "train.embed")


def packing_problem(model, tokenizer, max_length: int, tolerance: float | None = None) -> str | None:
    """None when ``model`` (an ``EmbeddingModel``) embeds :data:`PROBE_TEXTS` packed as it embeds them one per
    padded row (``tokenizer``'s padding side, ``max_length``; dropout off for the check), else why not.

    Tolerance on ``|packed - padded| / |padded|`` per text: 1e-3 in float32 (rounding only), 5e-2 in 16-bit."""
    parameter = next(model.parameters())
    if tolerance is None:
        tolerance = check_tolerance(parameter)
    token_ids = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=max_length)["input_ids"]
    token_ids.sort(key=len, reverse=True)
    lengths = [len(ids) for ids in token_ids]
    padded = tokenizer.pad({"input_ids": token_ids}, return_tensors="pt").to(parameter.device)
    padded = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
    left = tokenizer.padding_side == "left"
    packed = [
        pack_chunk(padded["input_ids"], lengths, first, rows, left, tokenizer.pad_token_id)
        for first, rows in pack_steps(lengths, len(lengths) * lengths[0], lengths[0])  # short texts share a row
    ]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference, candidate = model([padded]).float(), model(packed).float()
    except (TypeError, ValueError, RuntimeError) as error:
        return f"this model cannot encode packed rows ({type(error).__name__}: {error})"
    finally:
        model.train(training)
    error = relative_difference(candidate, reference)
    if error > tolerance:
        attention = getattr(model.base_model.config, "_attn_implementation", "?")
        return (
            f"this model embeds packed texts differently from padded ones (relative difference {error:.2g} > "
            f"{tolerance:g}): its attention ignores position_ids or the block-diagonal 4D mask (attention "
            f"implementation {attention})"
        )
    return None
