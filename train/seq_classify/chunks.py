"""``long_documents: chunks`` in ``train.seq_classify``: every document as overlapping windows, logits pooled per
document, the loss on the pooled logits.

A split tokenized with chunks (``seqcls_data.tokenize_split``) holds per row ``input_ids``: its W_i windows (each
an id list with the tokenizer's special tokens, see ``lorasmith.tokenizer_inputs.document_windows``) and
``labels``. ``WindowCollator`` flattens a batch of B documents into one padded batch of W = sum W_i windows plus
``document_index`` (W,); ``pooled_forward`` runs the model on the windows and pools their (W, L) logits into
(B, L) with ``lorasmith.classifiers.sequence.pool_window_logits`` — the same function the predictor uses, so
``SequenceClassifier`` reproduces the trainer's logits. ``per_device_train_batch_size`` counts documents: a batch
holds up to ``per_device_train_batch_size x max_chunks`` windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from lorasmith.classifiers.sequence import pool_window_logits

DOCUMENT_INDEX = "document_index"


class WindowCollator:
    """Features ``{"input_ids": [[ids], ...], "labels": y}`` of B documents -> a padded batch of their windows:
    ``input_ids`` / ``attention_mask`` (W, T), ``document_index`` (W,) in ``[0, B)``, ``labels`` (B,) or (B, L)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        windows = [ids for feature in features for ids in feature["input_ids"]]
        document_index = [i for i, feature in enumerate(features) for _ in feature["input_ids"]]
        batch = dict(self.tokenizer.pad({"input_ids": windows}, return_tensors="pt"))
        batch[DOCUMENT_INDEX] = torch.tensor(document_index, dtype=torch.long)
        labels = [feature["labels"] for feature in features]
        batch["labels"] = torch.tensor(
            labels, dtype=torch.float32 if isinstance(labels[0], list) else torch.long
        )
        return batch


def pooled_forward(model, inputs: dict, pooling: str) -> SequenceClassifierOutput:
    """The model on a ``WindowCollator`` batch (without ``labels``): (B, L) document logits pooled from the
    (W, L) window logits by ``pooling`` (mean / max)."""
    inputs = dict(inputs)
    document_index = inputs.pop(DOCUMENT_INDEX)
    num_documents = int(document_index.max()) + 1
    window_logits = model(**inputs).logits
    return SequenceClassifierOutput(
        logits=pool_window_logits(window_logits, document_index, num_documents, pooling)
    )
