"""Token states -> one vector per text. The ONLY pooling implementation in lorasmith (trainers import it).

Every mode reads positions from ``attention_mask`` alone, so it is correct for right padding (BERT,
most encoders) and left padding (decoder LLMs batched for generation) alike.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "cls", "last", "max")

# Our mode name <-> sentence-transformers' ``pooling_mode`` name (1_Pooling/config.json).
SENTENCE_TRANSFORMERS_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken", "max": "max"}


def validate_pooling_mode(mode: str) -> str:
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    return mode


def is_causal(model: torch.nn.Module) -> bool:
    """True for a decoder: one of its attention modules is causal (works on a meta-device skeleton too)."""
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


def wants_eos(append_eos: bool | None, model: torch.nn.Module, pooling: str) -> bool:
    """Whether texts end with the tokenizer's EOS token: ``append_eos`` when set, else on for a decoder pooled
    by its last token (the EOS state then summarises the whole text) and off for everything else."""
    return append_eos if append_eos is not None else (pooling == "last" and is_causal(model))


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of the first non-padding token of each row."""
    return attention_mask.to(torch.int32).argmax(dim=1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of the last non-padding token of each row."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` (B, T, H) over the tokens where ``attention_mask`` (B, T) is 1 -> (B, H).

    mode:
      * ``"mean"``: average of the non-padding token states (sums in fp32 for bf16/fp16 inputs);
      * ``"cls"``: state of the first non-padding token ([CLS] for BERT-style encoders);
      * ``"last"``: state of the last non-padding token (decoder LLMs, with an appended EOS: ``wants_eos``);
      * ``"max"``: element-wise max over the non-padding tokens.
    Output dtype = ``hidden.dtype``. Rows with no token at all are not supported (mask must have a 1
    in every row). Differentiable: the trainers back-propagate through it.
    """
    validate_pooling_mode(mode)
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, T, H) and attention_mask (B, T); got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":
        return hidden[batch, first_token_index(attention_mask)]
    if mode == "last":
        return hidden[batch, last_token_index(attention_mask)]
    mask = attention_mask.unsqueeze(-1).to(torch.bool)  # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).max(dim=1).values
    accumulate = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    summed = (hidden.to(accumulate) * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1).to(accumulate)
    return (summed / counts).to(hidden.dtype)
