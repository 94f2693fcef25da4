"""Classify with a causal LM by scoring every label's answer, not by parsing what it generates.

    clf = PromptClassifier.load("outputs/sft_quickstart")
    clf.predict([{"text": "Stopped working after two days."}])      # ['negative']
    clf.predict_proba(rows)                                          # (N, L), rows sum to 1

For each row, the prompt is rendered and every label's answer (verbalizer) appended exactly as in training
(``lorasmith.prompts.encode_choices``; chat template or plain prompt-completion). The score of label ``l`` is
the log-likelihood of its answer tokens (end-of-turn / EOS included, as trained):

    s_l = sum_t log p(answer_l[t] | prompt, answer_l[:t])

The **sum**, not the mean, of token log-probabilities: it is the true sequence likelihood, so the softmax over
labels is the model's probability of each complete answer renormalised over the label set. (A mean would favour
long answers whose later tokens are easy.) ``predict_proba`` = softmax over ``s``; ``predict`` = argmax.

All answers of a batch of rows go through one forward pass (``batch_size`` rows x L answers, left-padded, logits
only at the answer positions). Under a distributed launch every process scores a contiguous shard of the rows
and the results are gathered in order, so N processes return what one process returns.

What ``load`` reads from a lorasmith output folder (manifest ``lorasmith.json``, kind ``prompt_classifier``):
``merged/`` when present, else the base model (``base_model``, ``gguf_file``) plus the PEFT adapter in
``adapter/``; the tokenizer saved next to them; the prompt spec (system message, template, verbalizers, format,
max_length) and label names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState

from lorasmith.classifiers.base import check_input_rows
from lorasmith.distributed import split_and_gather
from lorasmith.errors import ConfigError, DataError
from lorasmith.prompts import PromptSpec, answer_tokens, encode_choices, encode_prompt, fit_row
from lorasmith.run_folder import load_trained_model, read_manifest

KIND = "prompt_classifier"


class PromptClassifier:
    """A causal LM, its tokenizer and a ``PromptSpec``; classifies rows by label log-likelihood.

    Attributes:
        label_names: names in id order (column ``j`` of ``predict_proba`` is ``label_names[j]``).
        text_columns: keys every input row must have (the template's placeholders).
        multi_label: always False (one answer per row).
    """

    multi_label = False

    def __init__(self, model, tokenizer, spec: PromptSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.label_names = spec.label_names
        self.text_columns = spec.text_columns
        self._answer_budget = answer_tokens(tokenizer, spec)

    @classmethod
    def from_model(
        cls, model, tokenizer, prompt_spec: PromptSpec | Mapping, label_names: Sequence[str] | None = None
    ) -> PromptClassifier:
        """Wrap a model in memory (e.g. the one being trained). ``label_names`` must match the spec's order."""
        spec = prompt_spec if isinstance(prompt_spec, PromptSpec) else PromptSpec.from_dict(prompt_spec)
        if label_names is not None and list(label_names) != spec.label_names:
            raise ConfigError(
                f"label_names {list(label_names)} differ from the prompt's labels {spec.label_names}"
            )
        return cls(model, tokenizer, spec)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> PromptClassifier:
        """Load a ``train.sft_classify`` output folder (merged model, else base + adapter).

        ``device`` defaults to this process's (``PartialState().device``); ``dtype`` to float32 on CPU (bf16 is
        emulated and slow there) and bfloat16 on a GPU.
        """
        folder = Path(path)
        manifest = read_manifest(folder)
        if manifest is None:
            raise ConfigError(f"{folder} is not a lorasmith output folder (no lorasmith.json)")
        if manifest.get("kind") != KIND:
            raise ConfigError(
                f"{folder} holds a {manifest.get('kind')!r} model, not a prompt classifier ({KIND})"
            )
        device = torch.device(device) if device is not None else PartialState().device
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        from transformers import AutoModelForCausalLM

        model, tokenizer = load_trained_model(folder, manifest, AutoModelForCausalLM, dtype=dtype)
        spec = PromptSpec.from_dict(manifest["prompt"])
        return cls.from_model(model.to(device).eval(), tokenizer, spec, manifest["labels"])

    def label_log_likelihoods(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> np.ndarray:
        """(N, L) float64 summed answer log-probabilities, computed on this process only (no sharding)."""
        self._check_rows(rows)
        scores = [
            self._score_batch(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)
        ]
        return np.concatenate(scores) if scores else np.zeros((0, len(self.label_names)))

    def predict_proba(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> np.ndarray:
        """(N, L) probabilities, softmax of the label log-likelihoods over labels (rows sum to 1).

        Under a distributed launch every process must call this with the same rows; each scores its shard.
        """
        self._check_rows(rows)
        scores = split_and_gather(
            list(rows), lambda shard: list(self.label_log_likelihoods(shard, batch_size))
        )
        scores = np.asarray(scores, dtype=np.float64).reshape(len(rows), len(self.label_names))
        scores -= scores.max(axis=1, keepdims=True)
        probabilities = np.exp(scores)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> list[str]:
        """The most likely label name per row."""
        return [self.label_names[i] for i in self.predict_proba(rows, batch_size).argmax(axis=1)]

    def generate_labels(self, rows: Sequence[Mapping[str, str]], batch_size: int = 16) -> list[str | None]:
        """Free-generation mode (for comparison): greedy answer per row, mapped back to a label name.

        An answer maps to the label whose answer text equals it (ignoring case and surrounding space); anything
        else is None. Sharded across processes like ``predict_proba``.
        """
        self._check_rows(rows)
        return split_and_gather(list(rows), lambda shard: self._generate_local(shard, batch_size))

    # -- internals -------------------------------------------------------------------------------------------

    def _fitted(self, row: Mapping[str, str]) -> dict:
        fitted = fit_row(self.tokenizer, self.spec, row, self._answer_budget)
        if fitted is None:
            raise DataError(
                f"the prompt does not fit max_length={self.spec.max_length} tokens even with empty inputs"
            )
        return fitted

    def _score_batch(self, rows: Sequence[Mapping[str, str]]) -> np.ndarray:
        """(B, L) summed log-probabilities of every label's answer; one forward over B x L sequences."""
        encoded = [encode_choices(self.tokenizer, self.spec, self._fitted(row)) for row in rows]
        sequences = [choice for choices in encoded for choice in choices.values()]  # row-major: (B * L)
        width = max(len(s.input_ids) for s in sequences)
        keep = max(len(s.completion_ids) for s in sequences) + 1  # logits from the last prompt token on
        device = _model_device(self.model)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        answer_mask = torch.zeros((len(sequences), keep - 1), dtype=torch.bool)  # over the last keep-1 tokens
        for i, sequence in enumerate(sequences):  # left padding: every answer ends at the last position
            input_ids[i, width - len(sequence.input_ids) :] = torch.tensor(sequence.input_ids)
            attention_mask[i, width - len(sequence.input_ids) :] = 1
            answer_mask[i, keep - 1 - len(sequence.completion_ids) :] = True
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # positions as without padding
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits  # (B * L, keep, V)
        self.model.train(was_training)
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts the last keep-1 tokens
        targets = input_ids[:, width - keep + 1 :].to(device)
        token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B * L, keep - 1)
        totals = (token_scores * answer_mask.to(device)).sum(dim=-1)
        return totals.double().cpu().numpy().reshape(len(rows), len(self.label_names))

    def _generate_local(self, rows: Sequence[Mapping[str, str]], batch_size: int) -> list[str | None]:
        by_answer = {answer.strip().lower(): name for name, answer in self.spec.verbalizers.items()}
        device = _model_device(self.model)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        labels: list[str | None] = []
        for start in range(0, len(rows), batch_size):
            prompts = [
                encode_prompt(self.tokenizer, self.spec, self._fitted(row))
                for row in rows[start : start + batch_size]
            ]
            width = max(map(len, prompts))
            input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
            attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=False,
                    max_new_tokens=self._answer_budget + 2,
                    pad_token_id=pad_id,
                )
            texts = self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            labels += [by_answer.get(text.strip().lower()) for text in texts]
        return labels

    def _check_rows(self, rows: Sequence[Mapping[str, str]]) -> None:
        check_input_rows(rows, self.text_columns, "the prompt's input columns")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device
