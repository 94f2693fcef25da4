"""The start-up plan every entrypoint prints (and ``--dry_run`` stops after).

``run_plan`` gives the rows every entrypoint shares (distribution, batches, precision, quantization,
parameters); an entrypoint adds its own (e.g. negatives per anchor) and prints them with ``print_plan``.
"""

from __future__ import annotations

from accelerate import PartialState

from train.common import launch
from train.common.packing import attention_pair_cost, padding_shares


def print_plan(title: str, plan: dict) -> None:
    """Print ``plan`` (name -> value) as an aligned block on the main process only."""
    if not PartialState().is_main_process:
        return
    width = max(len(k) for k in plan)
    lines = [f"== {title} =="] + [f"  {k.ljust(width)} : {v}" for k, v in plan.items()]
    print("\n".join(lines), flush=True)


def run_plan(training_args, model_args, world_size: int, parameters: tuple[int, int] | None = None) -> dict:
    """The shared plan rows: who runs, how big a step is, in which precision, and what trains.

    ``parameters`` is ``(trainable, total)`` from ``modeling.count_parameters`` once the model is built.
    global batch = per-device batch x gradient accumulation x world size (sequences per optimizer step).
    """
    per_device = training_args.per_device_train_batch_size
    accumulation = training_args.gradient_accumulation_steps
    plan = {
        "world size": f"{world_size} ({launch.distribution(training_args)}, {training_args.device.type})",
        "per-device batch": per_device,
        "gradient accumulation": accumulation,
        "global batch": per_device * accumulation * world_size,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "model dtype": model_args.dtype or "auto",
        "quantization": _quantization(model_args),
        "tuning": _tuning(model_args),
        "max length": f"{model_args.max_length} tokens"
        + (f" ({model_args.max_length_note})" if model_args.max_length_note else ""),
    }
    if parameters is not None:
        trainable, total = parameters
        plan["trainable parameters"] = f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
    return plan


def padding_row(token_ids, training_args, max_length: int, packing: bool, model_config) -> str:
    """The plan's ``padding`` row: the expected padding share of the training forwards (``packing.padding_shares``
    of the rows' token counts under the run's sampler, laid out for ``model_config``), packed and padded, and which
    one the run uses."""
    grouped = training_args.train_sampling_strategy == "group_by_length"
    padded, packed = padding_shares(
        [len(ids) for ids in token_ids], training_args.per_device_train_batch_size, max_length,
        training_args.seed, group_by_length=grouped, attention_cost=attention_pair_cost(model_config),
    )  # fmt: skip
    batches = "length-grouped batches" if grouped else "random batches"
    used = f"{packed:.2f} (packed rows; padded: {padded:.2f})" if packing else f"{padded:.2f} (padded rows)"
    return f"{used} of the token slots, expected over {batches} of the training rows"


def _tuning(model_args) -> str:
    """What trains: LoRA (its shape, targets, layers, the adapter it continues) and/or the full base weights."""
    parts = []
    if model_args.use_peft or model_args.adapter_path:
        parts.append(
            f"LoRA r={model_args.lora_r} alpha={model_args.lora_alpha} dropout={model_args.lora_dropout} "
            f"targets={model_args.lora_target_modules or 'peft default (all linear layers where it has none)'} layers={model_args.lora_layers or 'all'}"
            + (f" continuing {model_args.adapter_path}" if model_args.adapter_path else "")
        )
    if model_args.full_finetune:
        parts.append("full fine-tuning")
    return " + ".join(parts) or "nothing (set use_peft: true or full_finetune: true)"


def _quantization(model_args) -> str:
    if model_args.load_in_4bit:
        storage = model_args.bnb_4bit_quant_storage or "uint8"
        nested = ", nested" if model_args.use_bnb_nested_quant else ""
        return f"4-bit {model_args.bnb_4bit_quant_type} (storage {storage}{nested})"
    if model_args.load_in_8bit:
        return "8-bit"
    return "none"
