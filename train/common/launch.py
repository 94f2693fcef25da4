"""Launch checks shared by every entrypoint: world size, precision, the global batch, and what the
distribution (DDP / FSDP / ZeRO) can shard and export.

All run before any model is loaded (``check_launch``) so that a bad launch or a bad combination costs seconds;
the one check that needs the model runs as a Trainer callback (``CheckTrainableInputs``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection

import torch
from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from lorasmith.errors import ConfigError
from lorasmith.process import check_world_size
from train.common.batching import gradient_accumulation_for


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX); plain AVX2 emulates it ~100x slower."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def check_precision(training_args) -> None:
    """Refuse bf16/fp16 on a CPU that would emulate them (measured ~100x slower than fp32 here)."""
    if torch.cuda.is_available():
        if training_args.bf16 and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "bf16 requested but this GPU does not support it: use fp16: true or bf16: false"
            )
        return
    if training_args.fp16:
        raise ConfigError("fp16 needs a GPU; on CPU set fp16: false (fp32 is the fast choice here)")
    if training_args.bf16 and not cpu_supports_bf16():
        raise ConfigError(
            f"bf16 requested on a CPU without bf16 support ({torch.backends.cpu.get_cpu_capability()}): it runs about "
            "100x slower than fp32. Set bf16: false (or --bf16 false) for CPU runs."
        )


def distribution(training_args) -> str:
    """How the launch distributes the model: ``deepspeed-zero<N>``, ``fsdp``, ``ddp`` or ``single``.

    Read from what ``accelerate launch`` exported (``ACCELERATE_USE_FSDP``, the DeepSpeed plugin that
    ``TrainingArguments`` built from ``ACCELERATE_USE_DEEPSPEED``) or from the recipe's ``deepspeed`` / ``fsdp``.
    """
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is not None:
        return f"deepspeed-zero{plugin.zero_stage}"
    if training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return "fsdp"
    return "ddp" if PartialState().num_processes > 1 else "single"


def sharded_forward(training_args) -> str | None:
    """``"DeepSpeed ZeRO-3"`` or ``"FSDP"`` when the launch shards the parameters (every forward gathers them,
    and none can run before the trainer wraps the model), else None."""
    kind = distribution(training_args)
    return {"deepspeed-zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP"}.get(kind)


def global_batch_accumulation(training_args, run_args, world_size: int) -> int:
    """The ``gradient_accumulation_steps`` that ``run_args.global_batch_size`` asks for (the recipe's own when
    it is unset).

    global = per_device_train_batch_size x gradient_accumulation_steps x world_size must hold exactly, so the
    optimizer sees the recipe's batch whatever the number of GPUs or nodes (and a resumed epoch continues at
    the exact sample after the world size changed). ConfigError when it does not divide.
    """
    if not run_args.global_batch_size:
        return training_args.gradient_accumulation_steps
    try:
        return gradient_accumulation_for(
            run_args.global_batch_size, training_args.per_device_train_batch_size, world_size
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_quantized_distribution(training_args, model_args) -> None:
    """Refuse quantized bases with FSDP / ZeRO-3 unless the 4-bit storage dtype matches the other weights.

    FSDP and ZeRO-3 flatten and shard parameters of one dtype: bitsandbytes' packed 4-bit weights are
    shardable only when stored in that dtype (``bnb_4bit_quant_storage``, as in PEFT's FSDP/ZeRO-3 QLoRA
    recipes); 8-bit weights cannot be sharded at all.
    """
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    kind = distribution(training_args)
    if kind not in ("fsdp", "deepspeed-zero3"):
        return
    name = "FSDP" if kind == "fsdp" else "DeepSpeed ZeRO-3"
    if model_args.load_in_8bit:
        raise ConfigError(
            f"8-bit bases cannot be sharded by {name}: use load_in_4bit with bnb_4bit_quant_storage, "
            "or ddp.yaml / zero2.yaml"
        )
    from train.common.modeling import quantization_config

    quant = quantization_config(model_args)
    if quant.bnb_4bit_quant_storage != quant.bnb_4bit_compute_dtype:
        dtype = str(quant.bnb_4bit_compute_dtype).removeprefix("torch.")
        raise ConfigError(
            f"4-bit + {name} needs bnb_4bit_quant_storage equal to the model dtype ({dtype}); got "
            f"{model_args.bnb_4bit_quant_storage or 'unset (uint8)'}. Add bnb_4bit_quant_storage: {dtype} to the recipe."
        )


def check_full_model_export(training_args, model_args) -> None:
    """Refuse, before training, a fully fine-tuned model under ZeRO-3 that could not be exported at the end.

    The export gathers ZeRO-3 shards with DeepSpeed's ``stage3_gather_16bit_weights_on_model_save``
    (``zero3_save_16bit_model`` in the accelerate config) and saves them with ``save_pretrained``: that needs
    the setting on, and a model without LoRA layers (LoRA + full fine-tuning is merged from the live model,
    which ZeRO-3 keeps in shards).
    """
    if not model_args.full_finetune or distribution(training_args) != "deepspeed-zero3":
        return
    if model_args.use_peft or model_args.adapter_path:
        raise ConfigError(
            "LoRA together with full fine-tuning cannot be exported under DeepSpeed ZeRO-3 (the adapter is merged "
            "from the live model, which ZeRO-3 keeps in shards): use zero2.yaml, or drop use_peft/adapter_path"
        )
    if not training_args.deepspeed_plugin.zero3_save_16bit_model:
        raise ConfigError(
            "full fine-tuning under DeepSpeed ZeRO-3 exports the gathered weights: set zero3_save_16bit_model: true "
            "under deepspeed_config in the accelerate config (accelerate_configs/zero3.yaml has it)"
        )


def check_launch(training_args, model_args=None) -> int:
    """Every start-up check that needs no model, in order; returns the world size.

    World size (vs ``$LORASMITH_EXPECT_WORLD_SIZE``), precision, quantization x distribution and the full-model
    export under ZeRO-3. It changes nothing; the global batch is checked where it is applied
    (``run.resolve_training_args``, called right after it by ``run.start``).
    """
    world_size = check_world_size()
    check_precision(training_args)
    if model_args is not None:
        check_quantized_distribution(training_args, model_args)
        check_full_model_export(training_args, model_args)
    return world_size


def check_best_metric(training_args, produced: Collection[str]) -> None:
    """Refuse a ``metric_for_best_model`` that the entrypoint's evaluation does not report (``produced``: its metric
    names, without the ``eval_`` prefix; ``loss`` counts only when listed). Trainer would fail with a KeyError at
    the first evaluation, after hours of training. No-op when nothing is evaluated or the metric is unset."""
    metric = training_args.metric_for_best_model
    if not metric or training_args.eval_strategy == IntervalStrategy.NO:
        return
    name = metric.removeprefix("eval_")
    if name in produced:
        return
    close = difflib.get_close_matches(name, list(produced), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"metric_for_best_model '{metric}' is not a metric this run's evaluation reports: {hint}"
        f"it reports {', '.join(produced)}"
    )


def check_checkpointing_inputs(model, training_args) -> None:
    """Refuse reentrant activation checkpointing on a frozen-embedding (LoRA) model without input grads.

    With ``use_reentrant: true`` a checkpointed block whose inputs do not require grad returns no gradient,
    so LoRA weights inside it silently never train. Non-reentrant checkpointing (transformers' default) is fine.
    """
    if not getattr(training_args, "activation_checkpointing", False):
        return
    kwargs = training_args.activation_checkpointing_kwargs or {"use_reentrant": False}
    if isinstance(kwargs, dict) and kwargs.get("use_reentrant", True) is False:
        return
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return
    if any(getattr(module, "_require_grads_hooks", None) for module in model.modules()):
        return
    raise ConfigError(
        "activation checkpointing with use_reentrant: true on a model with frozen input embeddings (LoRA) gives the "
        "adapters no gradient: drop use_reentrant from activation_checkpointing_kwargs (non-reentrant is the default), "
        "or call model.enable_input_require_grads()"
    )


class CheckTrainableInputs(TrainerCallback):
    """Run ``check_checkpointing_inputs`` on the model the Trainer is about to train (one of ``run.lifecycle_callbacks``)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            check_checkpointing_inputs(model, args)
