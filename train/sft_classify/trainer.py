"""``PromptClassificationTrainer``: TRL's ``SFTTrainer`` with label-scoring evaluation and a supervision guard.

Differences from ``SFTTrainer`` (everything else — collation, completion-only labels, loss, PEFT, checkpoints —
is TRL's):

- every evaluation also classifies the evaluation rows by label scoring (``lorasmith.classifiers.prompt``) and adds
  ``eval_accuracy``, ``eval_f1_macro``, ... to the metrics, so ``metric_for_best_model: f1_macro`` picks the best
  checkpoint. Rows are sharded across processes and gathered: N processes report what one process reports.
  The full report (per class, confusion matrix) of the last evaluation is kept in ``last_report``;
- a batch without a single supervised (answer) token raises instead of training on a silent zero loss;
- with ``packed`` (``packing``, ``sft_classify.packing``) each training batch runs as packed rows whose LM head
  scores the answer positions only (same loss and gradients, little padding); TRL's own ``packing`` (of the
  dataset into full rows, which changes how many examples a step holds) stays off. Training logs carry
  ``padding_share`` and the tokens and examples per second (``train.common.telemetry``);
- on a machine without CUDA the adapter weights stay in float32: TRL casts them to bf16 for a quantized base
  (the QLoRA paper's choice on GPUs), but bf16 arithmetic is emulated on most CPUs and ~25-100x slower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch
from trl import SFTTrainer

from eval.metrics.classification import classification_metrics, metric_names
from lorasmith.classifiers.prompt import PromptClassifier
from lorasmith.errors import DataError
from lorasmith.prompts import PromptSpec
from lorasmith.run_folder import scalar_metrics
from train.common.run import replace_args
from train.common.telemetry import ForwardTelemetry
from train.sft_classify.packing import PackedCausalLM


class PromptClassificationTrainer(ForwardTelemetry, SFTTrainer):
    """``SFTTrainer`` for prompt classification.

    Args (besides ``SFTTrainer``'s):
        prompt_spec: how rows are rendered (the same spec built the tokenized datasets).
        scoring_rows: evaluation rows ``{text column: text}`` to classify at each evaluation (may be empty).
        scoring_labels: their gold label ids, (N,) in ``prompt_spec.label_names`` order.
        packed: packs every batch (``sft_classify.packing``); None runs TRL's padded batches.
    """

    def __init__(
        self,
        *args,
        prompt_spec: PromptSpec,
        scoring_rows: Sequence[Mapping[str, str]] = (),
        scoring_labels: Sequence[int] = (),
        packed: PackedCausalLM | None = None,
        **kwargs,
    ):
        kwargs["args"] = replace_args(kwargs["args"], packing=False)  # TRL's dataset packing: never (class docstring)
        super().__init__(*args, **kwargs)
        self.packed = packed
        self.prompt_spec = prompt_spec
        self.scoring_rows = list(scoring_rows)
        self.scoring_labels = list(scoring_labels)
        self.last_report: dict | None = None
        if not torch.cuda.is_available():
            for parameter in self.model.parameters():
                if parameter.requires_grad and parameter.dtype == torch.bfloat16:
                    parameter.data = parameter.data.float()

    def classifier(self) -> PromptClassifier:
        """The model being trained as a ``PromptClassifier`` (DeepSpeed: the engine, whose forward gathers shards)."""
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        return PromptClassifier.from_model(model, self.processing_class, self.prompt_spec)

    def classification_report(self) -> dict:
        """``classification_metrics`` of label scoring on ``scoring_rows`` (identical on every process)."""
        probabilities = self.classifier().predict_proba(
            self.scoring_rows, self.args.per_device_eval_batch_size
        )
        return classification_metrics(
            self.scoring_labels, probabilities.argmax(axis=1), self.prompt_spec.label_names, probabilities
        )

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        if self.scoring_rows:
            self.last_report = self.classification_report()
            output.metrics.update(
                {
                    f"{metric_key_prefix}_{key}": value
                    for key, value in scalar_metrics(self.last_report).items()
                }
            )
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if labels is not None and not bool((labels[:, 1:] != -100).any()):
            raise DataError(
                "a batch has no supervised answer token (every label is -100), so its loss would be a silent 0: "
                "the dataset must come from train.sft_classify.data.build_sft_rows, which keeps every answer"
            )
        real_tokens, examples = inputs["attention_mask"].sum(), inputs["input_ids"].shape[0]
        counted = self._total_train_tokens
        model_inputs = nullcontext(inputs)
        if self.packed is not None and not return_outputs:  # outputs (logits) keep the batch's padded layout
            if self.label_smoother is None:
                model_inputs = self.packed.answer_inputs(inputs)
            else:  # TRL's label smoothing reads full logits: the packed labels, every position scored
                model_inputs = nullcontext(self.packed.pack(inputs)[0])
        with model_inputs as inputs:
            slots = inputs["input_ids"].numel()
            loss = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        if self.model.training:
            # TRL counts a batch's tokens from its 2D attention_mask; a packed batch's is 4D
            self._total_train_tokens = counted + self.accelerator.gather_for_metrics(real_tokens).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            self.record_forward(real_tokens.item(), slots, examples)
        return loss


def reported_metrics(label_names: Sequence[str]) -> list[str]:
    """The metric names an evaluation of :class:`PromptClassificationTrainer` logs (without ``eval_``): the label
    scoring report's scalars and the loss."""
    return [*metric_names(label_names, multi_label=False, probabilities=True), "loss"]


def generation_report(trainer: PromptClassificationTrainer, rows: list[dict], gold: list[int]) -> dict:
    """Free-generation comparison: accuracy counting unmapped answers as wrong, and their share."""
    answers = trainer.classifier().generate_labels(rows, trainer.args.per_device_eval_batch_size)
    names = trainer.prompt_spec.label_names
    correct = sum(answer == names[label] for answer, label in zip(answers, gold, strict=True))
    return {"accuracy": correct / len(rows), "unmapped_rate": sum(a is None for a in answers) / len(rows)}
