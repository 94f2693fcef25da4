"""``ContrastiveTrainer``: ``transformers.Trainer`` with the contrastive objective, embedding evaluation,
telemetry, and checkpoints that hold the LoRA adapter.

What changes compared with ``Trainer`` (everything else — DDP, DeepSpeed, schedulers, gradient accumulation,
resume, TensorBoard/W&B — is the ecosystem's):

- ``compute_loss``: one forward of :class:`~train.embed.model.EmbeddingModel` per step over the batch's
  chunks (packed forwards, ``packing.py``; or length-sorted mini-batches, ``mini_batch_size``, cut by the
  trainer's own :class:`~train.embed.collator.LengthSortedChunker`), the embeddings put back in text order, an
  :class:`~train.embed.batch.EmbeddedBatch` per task, the objective's loss. That loss is this process's
  *share* of the big-batch loss (mean over processes = big-batch loss), which is exactly how ``Trainer`` logs
  (all-gather + mean) and how DDP averages gradients. The model takes no ``**kwargs`` so
  ``model_accepts_loss_kwargs`` is False: Trainer neither multiplies the loss by the world size
  (``average_tokens_across_devices``) nor skips the division by the gradient-accumulation steps.
- ``training_step`` with ``gradient_cache``: the step runs through ``cached.gradient_cache_step`` (embed every
  chunk without autograd, full-batch loss and its gradient w.r.t. the embeddings, re-encode and backpropagate
  chunk by chunk; DDP synchronises on the last chunk only, DeepSpeed steps after it). It returns the loss
  ``Trainer.training_step`` would (divided by the accumulation steps); without the cache it is Trainer's own.
- ``log``: every training log also carries, averaged over the logging window, the objective's global
  telemetry (top-1 in-batch accuracy, negatives per anchor after masking, masked false negatives, each loss
  component), ``pairs_per_second`` (anchors of the global batch counted per step / wall time of the window)
  and the real vs padded token counts summed over processes; with several datasets, ``loss/<name>`` per dataset.
- ``get_train_dataloader`` (several datasets, ``sampling.py``): batches of one dataset each, the same dataset on
  every process at every step; ``batch_task`` gives each batch its dataset's task.
- ``evaluate``: embeds the eval set with ``lorasmith.encoder.Embedder`` on the live encoder and returns
  ``eval_spearman`` / ``eval_ndcg@10`` ... so ``metric_for_best_model`` picks the best checkpoint; with
  ``matryoshka_dims`` also the main metric at each narrower width (``eval_spearman@64``).
- checkpoints: a LoRA-only run saves the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``,
  usable as ``adapter_path``) instead of the whole wrapper; resume and best-model reload read it back.
  ``Trainer`` has no public hook for this (it sees the wrapper, not the ``PeftModel`` inside, and ``save_model``
  hands the DeepSpeed-consolidated state dict only to ``_save``), so ``_save``, ``_load_from_checkpoint`` and
  ``_load_best_model`` are overridden; ``tests/test_trainer_private_hooks.py`` fails if transformers renames
  them, changes their parameters or stops calling them.
- the chunker's running totals (padded chunks; packing needs none) decide how the next step is cut, so each
  process saves them next to its RNG state
  (``chunker_state_<process>.json``, ``_save_rng_state``) and loads them back where Trainer restores the RNG on
  resume (``_load_rng_state``): a resumed run cuts, and so computes, its steps as the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict

import torch
from accelerate.utils import DistributedType
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from lorasmith.encoder import Embedder
from train.embed.batch import EmbeddedBatch
from train.embed.cached import gradient_cache_step
from train.embed.collator import token_slots
from train.embed.evaluation import embedding_metrics
from train.embed.model import EmbeddingModel, in_text_order
from train.embed.objective import ContrastiveObjective, ObjectiveOutput
from train.embed.sampling import DatasetLosses, SingleDatasetBatches, mix_dataloader
from train.embed.tasks import EmbedTask

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ENCODER_PREFIX = "encoder."


def embedded_batch(
    task: EmbedTask, anchor: torch.Tensor, candidates: torch.Tensor, inputs: dict
) -> EmbeddedBatch:
    """The :class:`EmbeddedBatch` of one collated batch: ``anchor (B, D)``, ``candidates (M, D)`` and the
    collator's ids / scores (``batch.py`` describes the two shapes)."""
    if not task.aligned:
        return EmbeddedBatch(
            anchor, candidates, inputs["anchor_ids"], inputs["candidate_ids"], inputs["positive_ids"]
        )
    return EmbeddedBatch.aligned(
        anchor,
        candidates,
        inputs["anchor_ids"],
        inputs["candidate_ids"],
        scores=inputs.get("scores"),
        positive_is_anchor=task.positive_is_anchor,
    )


class LockstepEmbedder(Embedder):
    """Every process encodes every batch (no sharding): under ZeRO-3 each forward all-gathers parameters, a
    collective that every process must join, so the processes must run the same forwards."""

    def encode(self, texts, batch_size=64, prefix="", *, show_progress=None, shard=None):
        return super().encode(texts, batch_size, prefix, show_progress=show_progress, shard=False)


class ContrastiveTrainer(Trainer):
    """``Trainer`` for :class:`EmbeddingModel` with a :class:`ContrastiveObjective`.

    Args (besides Trainer's): ``objective``; ``task`` (the recipe's task record); ``lora_only`` (checkpoints hold
    the adapter alone; False for full fine-tuning, with or without LoRA, whose checkpoints hold every weight).
    Embedding settings (pooling, prefixes, eval task, ks) come from ``args`` (an ``EmbedConfig``).
    """

    def __init__(
        self,
        *args,
        objective: ContrastiveObjective,
        task: EmbedTask,
        lora_only: bool,
        train_batches: SingleDatasetBatches | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.task = task
        self.lora_only = lora_only
        self.train_batches = train_batches  # several datasets: train_dataset is a DatasetMix (sampling.py)
        self._dataset_losses = DatasetLosses(self.train_dataset.names) if train_batches else None
        self._window: dict[str, float] = defaultdict(float)
        self._window_steps = 0
        self._window_start: float | None = None
        self.chunker = self.data_collator.chunker()  # cuts every batch of this process, in step order

    # ---- training ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """This process's share of the big-batch loss of ``inputs`` (see module docstring)."""
        self._start_window()
        embeddings = in_text_order(model(self._chunks(inputs)), inputs["text_order"])  # (B + M, D)
        output = self._objective_of(embeddings, inputs)
        self._record(output, inputs)
        if not return_outputs:
            return output.loss
        b = inputs["anchor_ids"].shape[0]
        return output.loss, {"anchor": embeddings[:b], "candidates": embeddings[b:]}

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's step, or with ``gradient_cache`` the cached step (module docstring); returns the loss
        divided by the gradient-accumulation steps, detached (what Trainer adds up for logging)."""
        if not self.args.gradient_cache:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        self._start_window()
        unwrapped = self.accelerator.unwrap_model(model)
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        backward_kwargs = {"scale_wrt_gas": False} if deepspeed else {}  # Trainer divides, as in its own step

        def encode(chunk, module=model):
            with self.compute_loss_context_manager():
                return module([chunk])

        def loss_of(embeddings):
            with self.compute_loss_context_manager():
                return self._objective_of(embeddings, inputs)

        def backward(surrogate, last: bool) -> None:
            if deepspeed and not last:  # the engine's backward without its optimizer step
                self.accelerator.deepspeed_engine_wrapped.backward(surrogate, sync_gradients=False, **backward_kwargs)
            else:
                self.accelerator.backward(surrogate, **backward_kwargs)

        scale = 1 / self.current_gradient_accumulation_steps
        output = gradient_cache_step(
            self._chunks(inputs),
            inputs["text_order"],
            encode=encode,
            encode_without_grad=lambda chunk: encode(chunk, unwrapped),
            loss_of=loss_of,
            backward=backward,
            no_sync=lambda: self.accelerator.no_sync(model),
            loss_scale=scale,
        )
        self._record(output, inputs)
        return output.loss.detach() * scale

    def _chunks(self, inputs: dict) -> list[dict]:
        """The batch's chunks, cut by this process's chunker (its padded token slots go to the window)."""
        chunks = self.data_collator.chunks(inputs, self.chunker)
        self._window["padded_tokens"] += token_slots(chunks)
        return chunks

    def _objective_of(self, embeddings: torch.Tensor, inputs: dict) -> ObjectiveOutput:
        """The objective on ``(B + M, D)`` embeddings in text order (anchors, then candidates)."""
        b = inputs["anchor_ids"].shape[0]
        return self.objective(embedded_batch(self.batch_task(inputs), embeddings[:b], embeddings[b:], inputs))

    def batch_task(self, inputs: dict) -> EmbedTask:
        """The task of a batch: its dataset's (several datasets, ``inputs["dataset"]``), else the recipe's."""
        return self.train_dataset.tasks[int(inputs["dataset"])] if "dataset" in inputs else self.task

    def get_train_dataloader(self):
        """Several datasets: single-dataset batches (``sampling.SingleDatasetBatches``); else Trainer's own."""
        if self.train_batches is None:
            return super().get_train_dataloader()
        loader = mix_dataloader(self.train_dataset, self.train_batches, self.data_collator, self.args)
        return self.accelerator.prepare(loader)

    def _start_window(self) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def _record(self, output: ObjectiveOutput, inputs: dict) -> None:
        """Add one micro-batch's numbers to the logging window."""
        self._window_steps += 1
        if "dataset" in inputs:
            self._dataset_losses.add(int(inputs["dataset"]), output.value)
        for name, value in output.components.items():
            self._window[f"loss/{name}"] += value
        for name, value in output.telemetry.items():
            self._window[name] += value
        self._window["real_tokens"] += float(inputs["real_tokens"])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs (those with ``loss``) get the window's telemetry; called on every process."""
        if "loss" in logs and self._window_steps:
            logs.update(self._window_telemetry())
            if self._dataset_losses is not None:
                logs.update(self._dataset_losses.pop())
        super().log(logs, start_time)

    def _window_telemetry(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._window_start
        window, steps = self._window, self._window_steps
        tokens = torch.tensor(
            [window.pop("real_tokens"), window.pop("padded_tokens")], device=self.args.device
        )
        real, padded = self.accelerator.reduce(
            tokens, reduction="sum"
        ).tolist()  # per process -> all processes
        telemetry = {name: value / steps for name, value in window.items()}
        telemetry.update(
            pairs_per_second=window["global_batch_size"] / elapsed,
            real_tokens=real,
            padded_tokens=padded,
            padding_share=1 - real / max(padded, 1),
        )
        self._window, self._window_steps, self._window_start = defaultdict(float), 0, time.perf_counter()
        return telemetry

    # ---- evaluation ----

    @property
    def zero3(self) -> bool:
        """True under DeepSpeed ZeRO-3 (parameters are partitioned across processes)."""
        plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        return plugin is not None and plugin.zero_stage == 3

    def full_parameters(self):
        """Context in which the encoder can run a plain forward: under ZeRO-3 before the DeepSpeed engine exists
        (the "before" evaluation) the partitioned parameters are gathered on every process; otherwise nothing."""
        if self.zero3 and self.deepspeed is None:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def embedder(self) -> Embedder:
        """An ``Embedder`` on the live encoder (its train/eval mode is restored after each encode)."""
        model: EmbeddingModel = self.accelerator.unwrap_model(self.model)
        return (LockstepEmbedder if self.zero3 else Embedder).from_model(
            model.encoder,
            self.processing_class,
            pooling=model.pooling,
            normalize=model.normalize,
            max_length=self.data_collator.max_length,
            query_prefix=self.data_collator.query_prefix,
            document_prefix=self.data_collator.document_prefix,
            show_progress=False,
            rotation=model.rotation,
        )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Embedding metrics of the eval set as ``{prefix}_{metric}`` (e.g. ``eval_spearman``, ``eval_ndcg@10``),
        logged and passed to the callbacks like Trainer's own evaluation. Runs on every process (the encoding
        is sharded across them, every process gets the same numbers)."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        start = time.perf_counter()
        with self.full_parameters():
            metrics = embedding_metrics(
                self.embedder(),
                self.args.eval_task,
                dataset,
                self.args.eval_ks,
                self.args.embed_batch_size,
                dims=self.args.matryoshka_dims,
            )
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
        self.log(dict(metrics))  # Trainer.log adds "epoch" to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        if not self._window_steps:
            self._window_start = None  # evaluation time does not count against pairs_per_second
        return metrics

    # ---- checkpoints ----

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """LoRA-only runs: the PEFT adapter + tokenizer (``state_dict``, when Trainer consolidated one under
        DeepSpeed, is the wrapper's; its ``encoder.`` prefix is stripped). Other runs: Trainer's own save of the
        wrapper's state dict."""
        if not self.lora_only:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        encoder = self.accelerator.unwrap_model(self.model).encoder
        if state_dict is not None:
            state_dict = {k.removeprefix(ENCODER_PREFIX): v for k, v in state_dict.items()}
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            encoder.save_pretrained(output_dir, state_dict=state_dict)
            self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_adapter(self, checkpoint: str) -> bool:
        """Load a checkpoint's adapter weights into the live encoder; False when the checkpoint has none."""
        path = os.path.join(checkpoint, ADAPTER_WEIGHTS)
        encoder = self.accelerator.unwrap_model(self.model).encoder
        if not (self.lora_only and isinstance(encoder, PeftModel) and os.path.isfile(path)):
            return False
        result = set_peft_model_state_dict(encoder, load_file(path, device="cpu"))
        if result.unexpected_keys:
            raise RuntimeError(
                f"{checkpoint}: adapter weights do not fit this model: {result.unexpected_keys[:3]}"
            )
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_adapter(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _chunker_state_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"chunker_state_{self.args.process_index}.json")

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.chunker is not None:
            with open(self._chunker_state_file(output_dir), "w") as stream:
                json.dump(self.chunker.state_dict(), stream)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if self.chunker is not None and checkpoint and os.path.isfile(self._chunker_state_file(checkpoint)):
            with open(self._chunker_state_file(checkpoint)) as stream:
                self.chunker.load_state_dict(json.load(stream))

    def _load_best_model(self):
        if self.is_deepspeed_enabled or not self._load_adapter(self.state.best_model_checkpoint):
            super()._load_best_model()
