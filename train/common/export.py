"""Saving what was trained: the LoRA adapter and a merged full-precision model, for every entrypoint.

``output_dir/adapter``: PEFT adapter (+ ``modules_to_save`` such as classification heads) and tokenizer.
``output_dir/merged``: base weights with the adapter merged in, loadable with plain ``transformers``.
A quantized base is never merged in its 4/8-bit form (rounding): the base is reloaded in ``dtype``
(float32 on CPU) and the saved adapter merged into that. ``export_trained_model`` runs on every process (the
weights may have to be gathered); the helpers it calls write on the main process only.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from peft import PeftModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from eval.artifacts import ADAPTER_DIR, MERGED_DIR  # the output folder contract, defined once
from train.common.args import ModelArguments
from train.common.modeling import load_model


def merge_saved_adapter(
    model_args: ModelArguments,
    adapter_dir: str | Path,
    output_dir: str | Path,
    tokenizer,
    model_class,
    **load_kwargs,
) -> Path:
    """Reload the base model unquantized, merge the adapter saved in ``adapter_dir``, save to ``output_dir/merged``."""
    full_precision = dataclasses.replace(
        model_args, load_in_4bit=False, load_in_8bit=False, adapter_path=None
    )
    if full_precision.dtype in (None, "auto") or not torch.cuda.is_available():
        full_precision = dataclasses.replace(full_precision, dtype="float32")
    base = load_model(full_precision, model_class, **load_kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return save_full_model(merged, tokenizer, output_dir)


def save_full_model(
    model: torch.nn.Module,
    tokenizer,
    output_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a full model to ``output_dir/merged``; a PEFT model is merged on a copy (the live model is untouched).

    ``state_dict`` (keys as in ``model.state_dict()``) replaces the model's own tensors: the gathered weights
    of a model whose live parameters are ZeRO-3 shards (:func:`gathered_state_dict`); PEFT models excluded.
    """
    folder = Path(output_dir) / MERGED_DIR
    if isinstance(model, PeftModel):
        if state_dict is not None:
            raise ValueError("a PEFT model is merged from its own weights, not from a state_dict")
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    return folder


def gathered_state_dict(trainer, prefix: str = "") -> dict[str, torch.Tensor] | None:
    """The complete weights of ``trainer``'s model under DeepSpeed ZeRO-3, else None (the live model has them).

    Call on EVERY process: the shards are gathered layer by layer onto the main process (accelerate's
    ``get_state_dict``; ``zero3_save_16bit_model: true`` is checked at start-up by
    ``launch.check_full_model_export``). Keys starting with ``prefix`` are kept, without it (e.g. ``"encoder."``
    for the transformer inside an embedding model); other processes get an empty dict.
    """
    if not is_deepspeed_zero3_enabled():
        return None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}  # None off the main process
    return {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}


def export_trained_model(
    trainer,
    model_args: ModelArguments,
    model_class,
    *,
    export_merged: bool,
    module: torch.nn.Module | None = None,
    prefix: str = "",
    **load_kwargs,
) -> dict:
    """Save what ``trainer`` trained to its ``output_dir``; call on EVERY process (saving gathers ZeRO-3 shards).

    ``module`` is the transformer to export (default: the unwrapped trained model); ``prefix`` its key prefix in
    the trained model's state dict (e.g. ``"encoder."`` when the trainer wraps it in an embedding model).

    - LoRA only: ``adapter/`` through ``Trainer.save_model`` (DeepSpeed consolidates the shards first), and
      ``merged/`` from that adapter when ``export_merged`` (``model_class`` + ``load_kwargs`` reload the base);
    - full fine-tuning (with or without LoRA): ``merged/`` only — the base weights changed, an adapter alone
      would not reproduce the model; under ZeRO-3 from the gathered shards.

    Returns the manifest's ``adapter`` / ``merged`` entries (folder names, or None). A log-only run
    (``save_model: false``, flagged on the training arguments by ``run.prepare_output_dir``) saves nothing.
    """
    if not getattr(trainer.args, "lorasmith_save_model", True):
        return {"adapter": None, "merged": None}
    output_dir = Path(trainer.args.output_dir)
    tokenizer = trainer.processing_class
    module = module if module is not None else trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(module, PeftModel) and not model_args.full_finetune:
        trainer.save_model(str(output_dir / ADAPTER_DIR))
        if is_deepspeed_zero3_enabled():  # the merge reloads the base on one process, not as a ZeRO-3 model
            unset_hf_deepspeed_config()
        if export_merged and trainer.args.should_save:
            merge_saved_adapter(
                model_args, output_dir / ADAPTER_DIR, output_dir, tokenizer, model_class, **load_kwargs
            )
        saved = {"adapter": ADAPTER_DIR, "merged": MERGED_DIR if export_merged else None}
    else:
        weights = gathered_state_dict(trainer, prefix)  # ZeRO-3 shards, gathered; None otherwise
        if trainer.args.should_save:
            save_full_model(module, tokenizer, output_dir, weights)
        saved = {"adapter": None, "merged": MERGED_DIR}
    trainer.accelerator.wait_for_everyone()
    return saved
