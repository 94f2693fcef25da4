"""``head_pooling: mean``: an encoder's classification head reads the mean of the token states, not [CLS].

Transformers' encoder heads read position 0 of the backbone's last hidden state — directly (RoBERTa, DeBERTa,
DistilBERT, ELECTRA) or through the backbone's own pooler (BERT: ``tanh(dense(h[:, 0]))``). A sentence-transformers
model (the packaged MiniLM) was trained to represent a text by the attention-masked mean of its token states;
its [CLS] state was never trained as a summary, so a small LoRA run must first teach [CLS] to gather the text.

:func:`pool_mean_into_first_position` hooks the backbone so that, in its output, position 0 of the last hidden
state holds the masked mean over the text's tokens (padding excluded) and a pooler output, when the backbone has
one, is recomputed from it. Every first-token head then reads the mean with its own weights, shapes and names:
the adapter, ``modules_to_save`` and checkpoints are those of the plain head. The hook is not part of the
weights: ``train.seq_classify`` records ``head_pooling`` in ``lorasmith.json`` and
``lorasmith.classifiers.sequence.SequenceClassifier.load`` hooks the reloaded model (adapter or ``merged/``) again.
Loaded by transformers alone (``pipeline``), ``merged/`` reads [CLS] again: its model card says so.

Decoders (Llama, Qwen...) classify from the last token, which already sees the whole (causal) text: the hook
refuses them.
"""

from __future__ import annotations

import torch

from lorasmith.errors import ConfigError
from lorasmith.pooling import is_causal, pool

HEAD_POOLINGS = ("model", "mean")  # model: the architecture's own (first token for encoders, last for decoders)


def classification_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone of a (possibly PEFT-wrapped) ``AutoModelForSequenceClassification`` (``base_model_prefix``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix, None)
    if backbone is None:
        raise ConfigError(f"{type(base).__name__} has no backbone {base.base_model_prefix!r} to pool")
    return backbone


def check_encoder(model: torch.nn.Module) -> None:
    """Raise ConfigError when ``model`` is a decoder (one of its attention modules is causal); works on a
    meta-device skeleton, before any weight is loaded."""
    if is_causal(model):
        raise ConfigError(
            f"head_pooling: mean is for encoders, whose head reads the first token; {type(model).__name__} is a "
            "decoder, whose head reads the last token (which already sees the whole text). Remove head_pooling"
        )


def pool_mean_into_first_position(model: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make ``model``'s first-token head read the masked mean of the last hidden states (module docstring).

    The backbone must be called with a 2D ``attention_mask`` (B, T) keyword, or none (every position counts), as
    transformers' heads call it. Returns the hook's handle (``.remove()`` restores the plain head).
    Raises ConfigError for a decoder (its head reads the last token).
    """
    check_encoder(model)
    backbone = classification_backbone(model)

    def replace_first_position(module, args, kwargs, output):
        hidden = output[0]  # last_hidden_state (B, T, H), in ModelOutput and tuple outputs alike
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        if attention_mask.dim() != 2:
            raise ValueError(
                f"head_pooling: mean needs a (batch, tokens) attention_mask; got shape {tuple(attention_mask.shape)}"
            )
        mean = pool(hidden, attention_mask.to(hidden.device), "mean")  # lorasmith.pooling: the one mean pooling
        hidden = torch.cat([mean.unsqueeze(1), hidden[:, 1:]], dim=1)
        pooler = getattr(module, "pooler", None)  # looked up now: PEFT may have wrapped it (modules_to_save)
        if isinstance(output, tuple):
            parts = [hidden, *output[1:]]
            if pooler is not None:
                parts[1] = pooler(hidden)
            return tuple(parts)
        output["last_hidden_state"] = hidden
        if pooler is not None:
            output["pooler_output"] = pooler(hidden)
        return output

    return backbone.register_forward_hook(replace_first_position, with_kwargs=True)
