"""Saving what was trained: the LoRA adapter and a merged full-precision model, for every entrypoint.

``output_dir/adapter``: PEFT adapter (+ ``modules_to_save`` such as classification heads) and tokenizer.
``output_dir/merged``: base weights with the adapter merged in, loadable with plain ``transformers``.
A quantized base is never merged in its 4/8-bit form (rounding): the base is reloaded in ``dtype``
(float32 on CPU) and the saved adapter merged into that. ``export_trained_model`` runs on every process (the
weights may have to be gathered); the helpers it calls write on the main process only.

Invariant: ``adapter/`` and ``merged/`` exist only complete. Each is written to ``<name>.partial/`` and renamed
into place once everything in it is written (``run_folder.publish_folder``); an older complete folder is replaced only
then. A crash (disk full, kill) leaves at most a ``.partial`` folder, which the next export removes first.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from lorasmith.errors import OutputError
from lorasmith.run_folder import ADAPTER_DIR, MERGED_DIR, partial_folder, publish_folder
from train.common.args import ModelArguments
from train.common.modeling import load_model


def merge_saved_adapter(
    model_args: ModelArguments,
    adapter_dir: str | Path,
    folder: str | Path,
    tokenizer,
    model_class,
    **load_kwargs,
) -> Path:
    """Reload the base model unquantized, merge the adapter saved in ``adapter_dir``, save it to ``folder``."""
    full_precision = dataclasses.replace(
        model_args, load_in_4bit=False, load_in_8bit=False, adapter_path=None
    )
    if full_precision.dtype in (None, "auto") or not torch.cuda.is_available():
        full_precision = dataclasses.replace(full_precision, dtype="float32")
    base = load_model(full_precision, model_class, **load_kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return save_full_model(merged, tokenizer, folder)


def save_full_model(
    model: torch.nn.Module,
    tokenizer,
    folder: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a full model to ``folder``; a PEFT model is merged on a copy (the live model is untouched).

    ``state_dict`` (keys as in ``model.state_dict()``) replaces the model's own tensors: the gathered weights
    of a model whose live parameters are ZeRO-3 shards (:func:`gathered_state_dict`); PEFT models excluded.
    """
    folder = Path(folder)
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
    complete_merged: Callable[[Path], None] | None = None,
    **load_kwargs,
) -> dict:
    """Save what ``trainer`` trained to its ``output_dir``; call on EVERY process (saving gathers ZeRO-3 shards).

    ``module`` is the transformer to export (default: the unwrapped trained model); ``prefix`` its key prefix in
    the trained model's state dict (e.g. ``"encoder."`` when the trainer wraps it in an embedding model);
    ``complete_merged(folder)`` adds files to the merged folder before it is published (main process).

    - LoRA only: ``adapter/`` through ``Trainer.save_model`` (DeepSpeed consolidates the shards first), and
      ``merged/`` from that adapter when ``export_merged`` (``model_class`` + ``load_kwargs`` reload the base);
    - full fine-tuning (with or without LoRA): ``merged/`` only — the base weights changed, an adapter alone
      would not reproduce the model; under ZeRO-3 from the gathered shards.

    Both are written under their ``.partial`` names and published together at the end (module docstring).
    Returns the manifest's ``adapter`` / ``merged`` entries (folder names, or None). A log-only run
    (``save_model: false``, flagged on the training arguments by ``run.resolve_training_args``) saves nothing.

    Raises:
        OutputError: a folder could not be written (disk full, permissions); nothing was published.
    """
    if not getattr(trainer.args, "lorasmith_save_model", True):
        return {"adapter": None, "merged": None}
    output_dir = Path(trainer.args.output_dir)
    tokenizer = trainer.processing_class
    module = module if module is not None else trainer.accelerator.unwrap_model(trainer.model)
    lora_only = isinstance(module, PeftModel) and not model_args.full_finetune
    names = [ADAPTER_DIR, MERGED_DIR] if lora_only and export_merged else [ADAPTER_DIR] if lora_only else [MERGED_DIR]
    folders = {name: partial_folder(output_dir / name) for name in names}
    if trainer.args.should_save:
        for partial in folders.values():  # what a crashed export left behind: incomplete by construction
            shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    try:
        if lora_only:
            trainer.save_model(str(folders[ADAPTER_DIR]))
            if is_deepspeed_zero3_enabled():  # the merge reloads the base on one process, not as a ZeRO-3 model
                unset_hf_deepspeed_config()
            if export_merged and trainer.args.should_save:
                merge_saved_adapter(
                    model_args, folders[ADAPTER_DIR], folders[MERGED_DIR], tokenizer, model_class, **load_kwargs
                )
        else:
            weights = gathered_state_dict(trainer, prefix)  # ZeRO-3 shards, gathered; None otherwise
            if trainer.args.should_save:
                save_full_model(module, tokenizer, folders[MERGED_DIR], weights)
        if trainer.args.should_save:
            if complete_merged is not None and MERGED_DIR in folders:
                complete_merged(folders[MERGED_DIR])
            for name, partial in folders.items():
                publish_folder(partial, output_dir / name)
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
        raise OutputError(
            f"could not write the exported model to {output_dir}: {reason}. Nothing was published (the incomplete "
            f"files are in {', '.join(p.name for p in folders.values())}, removed by the next export); free space "
            "or fix the folder, then run the same command again: it resumes from the last checkpoint and exports"
        ) from error
    trainer.accelerator.wait_for_everyone()
    return {"adapter": ADAPTER_DIR if lora_only else None, "merged": MERGED_DIR if MERGED_DIR in folders else None}
