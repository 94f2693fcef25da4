"""Saving what was trained: the LoRA adapter and a merged full-precision model, for every entrypoint.

``output_dir/adapter``: PEFT adapter (+ ``modules_to_save`` such as classification heads) and tokenizer.
``output_dir/merged``: base weights with the adapter merged in, loadable with plain ``transformers``.
A quantized base is never merged in its 4/8-bit form (rounding): the base is reloaded in ``dtype``
(float32 on CPU) and the saved adapter merged into that. Call on the main process only.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from peft import PeftModel

from train.common.args import ModelArguments
from train.common.modeling import load_model

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


def save_adapter(model: PeftModel, tokenizer, output_dir: str | Path) -> Path:
    """Write the adapter and tokenizer to ``output_dir/adapter``; returns that folder."""
    folder = Path(output_dir) / ADAPTER_DIR
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def merge_saved_adapter(
    model_args: ModelArguments, adapter_dir: str | Path, output_dir: str | Path, tokenizer, model_class, **load_kwargs
) -> Path:
    """Reload the base model unquantized, merge the adapter saved in ``adapter_dir``, save to ``output_dir/merged``."""
    full_precision = dataclasses.replace(model_args, load_in_4bit=False, load_in_8bit=False, adapter_path=None)
    if full_precision.dtype in (None, "auto") or not torch.cuda.is_available():
        full_precision = dataclasses.replace(full_precision, dtype="float32")
    base = load_model(full_precision, model_class, **load_kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return save_full_model(merged, tokenizer, output_dir)


def save_full_model(model: torch.nn.Module, tokenizer, output_dir: str | Path) -> Path:
    """Save a full model to ``output_dir/merged``; a PEFT model is merged on a copy (the live model is untouched)."""
    folder = Path(output_dir) / MERGED_DIR
    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_trained_model(
    model: torch.nn.Module, tokenizer, output_dir: str | Path, model_args: ModelArguments, *,
    export_merged: bool, model_class, **load_kwargs,
) -> dict[str, str | None]:
    """Save adapter and/or merged model as the run calls for; returns the manifest's ``adapter``/``merged`` entries.

    - LoRA only: ``adapter/`` always, ``merged/`` when ``export_merged``.
    - full fine-tuning (with or without LoRA): ``merged/`` only — the base weights changed, an adapter alone
      would not reproduce the model.
    """
    if isinstance(model, PeftModel) and not model_args.full_finetune:
        adapter = save_adapter(model, tokenizer, output_dir)
        if export_merged:
            merge_saved_adapter(model_args, adapter, output_dir, tokenizer, model_class, **load_kwargs)
        return {"adapter": ADAPTER_DIR, "merged": MERGED_DIR if export_merged else None}
    save_full_model(model, tokenizer, output_dir)
    return {"adapter": None, "merged": MERGED_DIR}
