"""Predict with a sequence classifier trained by ``train.seq_classify`` (or any HF sequence-classification folder).

    clf = SequenceClassifier.load("outputs/seqcls_quickstart")
    clf.predict([{"text": "It was good."}, {"text": "Not a fan, don't recommend."}])   # ['positive', 'negative']
    clf.predict_proba(rows)                                                                # (N, L), rows sum to 1

What is loaded from a lorasmith output folder (manifest ``lorasmith.json``, kind ``seq_classifier``):
``merged/`` when present (a plain transformers model with its head), otherwise the base model
``AutoModelForSequenceClassification(base_model)`` plus the PEFT adapter in ``adapter/`` — the adapter carries
the trained head through PEFT ``modules_to_save``. Label names, input columns, multi-label flag, threshold and
``max_length`` come from the manifest, and ``head_pooling: mean`` hooks the model again
(``lorasmith.classifiers.head_pooling``). A folder without a manifest is read as a plain transformers classifier
(label names from ``config.id2label``, one input column ``text``).

Inputs are built as in training (``lorasmith.tokenizer_inputs.text_inputs``). Without a ``max_length`` in the
manifest, texts are truncated at the tokenizer's own limit (``model_max_length``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState

from lorasmith.classifiers.base import check_input_rows
from lorasmith.classifiers.head_pooling import pool_mean_into_first_position
from lorasmith.errors import ConfigError
from lorasmith.run_folder import load_trained_model, read_manifest
from lorasmith.tokenizer_inputs import (
    DEFAULT_MAX_LENGTH,
    LongTextOptions,
    encode_long_texts,
    readable_length,
    text_inputs,
)

KIND = "seq_classifier"


def probabilities_from_logits(logits, multi_label: bool) -> np.ndarray:
    """(N, L) logits -> (N, L) probabilities: softmax (rows sum to 1) or, multi-label, an independent sigmoid."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)).numpy()


def pool_window_logits(
    logits: torch.Tensor, document_index: torch.Tensor, num_documents: int, pooling: str
) -> torch.Tensor:
    """(W, L) window logits -> (B, L) document logits: the ``mean`` or ``max`` over each document's windows.

    ``document_index`` (W,) gives every window's document in ``[0, B)``; each document has >= 1 window.
    Differentiable (the loss of ``long_documents: chunks`` is computed on the pooled logits).
    """
    index = document_index.to(logits.device).unsqueeze(1).expand_as(logits)
    pooled = logits.new_zeros((num_documents, logits.shape[1]))
    reduce = "mean" if pooling == "mean" else "amax"
    return pooled.scatter_reduce(0, index, logits, reduce=reduce, include_self=False)


def decide(probabilities: np.ndarray, multi_label: bool, threshold: float) -> np.ndarray:
    """Single-label: (N,) argmax ids. Multi-label: (N, L) 0/1 indicators, 1 where probability >= ``threshold``."""
    if multi_label:
        return (probabilities >= threshold).astype(np.int64)
    return probabilities.argmax(axis=-1)


class SequenceClassifier:
    """A sequence-classification model with its tokenizer, label names and decision rule.

    Attributes:
        label_names: names in id order (column ``j`` of ``predict_proba`` is ``label_names[j]``).
        text_columns: keys every input row must have, in encoding order.
        multi_label: sigmoid per label + threshold instead of softmax + argmax.
        threshold: multi-label decision threshold.
        long_text: how texts longer than ``max_length`` are read (head_tail, chunks), as the model was trained;
            None = the tokenizer's truncation at the end.
    """

    def __init__(
        self,
        model,
        tokenizer,
        label_names: Sequence[str],
        text_columns: Sequence[str],
        *,
        multi_label: bool = False,
        threshold: float = 0.5,
        max_length: int = DEFAULT_MAX_LENGTH,
        long_text: LongTextOptions | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.text_columns = list(text_columns)
        self.multi_label = multi_label
        self.threshold = threshold
        self.max_length = max_length
        self.long_text = long_text if long_text is not None and not long_text.cuts_end else None
        self._input_names = _forward_inputs(model)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> SequenceClassifier:
        """Load from a lorasmith output folder (merged model, else base + adapter) or a plain HF classifier folder,
        onto ``device`` (default: this process's, ``PartialState().device``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(path)
        manifest = read_manifest(folder)
        if manifest is None:
            if not (folder / "config.json").is_file():
                raise ConfigError(
                    f"{folder} is neither a lorasmith output folder (no lorasmith.json) nor a model folder"
                )
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            multi_label = model.config.problem_type == "multi_label_classification"
            return cls(
                model.to(device or PartialState().device),
                tokenizer,
                labels,
                ["text"],
                multi_label=multi_label,
                max_length=readable_length(tokenizer, model),
            )
        if manifest.get("kind") != KIND:
            raise ConfigError(
                f"{folder} holds a {manifest.get('kind')!r} model, not a sequence classifier ({KIND})"
            )
        model, tokenizer = _load_model(folder, manifest)
        if manifest.get("head_pooling") == "mean":  # the head was trained on the mean of the token states
            pool_mean_into_first_position(model)
        return cls(
            model.to(device or PartialState().device),
            tokenizer,
            manifest["labels"],
            manifest["text_columns"],
            multi_label=bool(manifest.get("multi_label")),
            threshold=float(manifest.get("threshold", 0.5)),
            max_length=int(manifest.get("max_length") or readable_length(tokenizer, model)),
            long_text=LongTextOptions(**manifest["long_text"]) if manifest.get("long_text") else None,
        )

    def logits(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> np.ndarray:
        """(N, L) raw scores of the head for ``rows`` (dicts holding every column in ``text_columns``)."""
        self._check_rows(rows)
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            if self.long_text is not None:
                chunks.append(self._long_text_logits([row[self.text_columns[0]] for row in batch], device))
                continue
            texts, pairs = text_inputs(
                {name: [row[name] for row in batch] for name in self.text_columns},
                self.text_columns,
                self.tokenizer.sep_token or self.tokenizer.eos_token,
            )
            encoded = self.tokenizer(
                texts, pairs, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            )
            inputs = {k: v.to(device) for k, v in encoded.items() if k in self._input_names}
            with torch.inference_mode():
                chunks.append(self.model(**inputs).logits.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.label_names)), dtype=np.float32)

    def _long_text_logits(self, texts: list[str], device) -> np.ndarray:
        """(B, L) logits of single-column texts read by head_tail (one sequence each) or chunks (all windows of the
        batch in one forward, pooled per text as in training)."""
        encoding = encode_long_texts(self.tokenizer, texts, self.max_length, self.long_text)
        windows = [ids for sequences in encoding.sequences for ids in sequences]
        document_index = torch.tensor(
            [i for i, sequences in enumerate(encoding.sequences) for _ in sequences]
        )
        padded = self.tokenizer.pad({"input_ids": windows}, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in padded.items() if k in self._input_names}
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        pooled = pool_window_logits(logits, document_index, len(texts), self.long_text.chunk_pooling)
        return pooled.cpu().numpy()

    def predict_proba(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> np.ndarray:
        """(N, L) probabilities: softmax (rows sum to 1), or an independent sigmoid per label for multi-label."""
        return probabilities_from_logits(self.logits(rows, batch_size), self.multi_label)

    def predict(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> list[str] | list[list[str]]:
        """One label name per row, or for multi-label the (possibly empty) list of names at or above the threshold."""
        decisions = decide(self.predict_proba(rows, batch_size), self.multi_label, self.threshold)
        if self.multi_label:
            return [[self.label_names[j] for j in np.flatnonzero(row)] for row in decisions]
        return [self.label_names[i] for i in decisions]

    def _check_rows(self, rows: Sequence[Mapping[str, str]]) -> None:
        check_input_rows(rows, self.text_columns, "the model's input columns")


def _load_model(folder: Path, manifest: dict):
    """(model, tokenizer) from ``merged/`` if present, else base model + adapter (which carries the head)."""
    from transformers import AutoModelForSequenceClassification

    labels = list(manifest["labels"])

    def head_kwargs(tokenizer) -> dict:
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            "problem_type": "multi_label_classification"
            if manifest.get("multi_label")
            else "single_label_classification",
            "pad_token_id": tokenizer.pad_token_id,
        }

    return load_trained_model(
        folder, manifest, AutoModelForSequenceClassification, dtype=torch.float32, base_kwargs=head_kwargs
    )


def _forward_inputs(model) -> set[str]:
    """Names the model's forward accepts among the tokenizer's outputs (DistilBERT takes no token_type_ids)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters) & {"input_ids", "attention_mask", "token_type_ids"}
