"""The classification model of ``train.seq_classify``: backbone + head, label map in the config, head kept trainable.

The head is found generically, so any backbone works (BERT ``classifier``; DistilBERT ``pre_classifier`` +
``classifier``; DeBERTa ``pooler`` + ``classifier``; Llama/Qwen ``score``):

- structural head: the children of ``AutoModelForSequenceClassification`` that are not the backbone
  (``base_model_prefix``) and hold parameters — found on a meta-device skeleton before any weight is loaded, so
  they can be left out of 4/8-bit quantization;
- plus every module whose weights the checkpoint did not contain (newly initialized, e.g. a pooler that a
  sentence-transformers export dropped).

Both go to PEFT ``modules_to_save``: trained in full precision and saved inside the adapter. (PEFT's own
SEQ_CLS default only saves modules named ``classifier``/``score``; a head under another name would silently be
re-initialized at every reload.)

With ``head_pooling: mean`` the backbone is hooked (``lorasmith.classifiers.head_pooling``) before PEFT wraps it, so the
head reads the mean of the token states; a decoder is refused on the skeleton, before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_utils import set_zero3_state

from lorasmith.classifiers.head_pooling import check_encoder, pool_mean_into_first_position
from lorasmith.errors import ConfigError
from train.common.args import ModelArguments
from train.common.modeling import apply_tuning, load_model, resolve_model_source

TASK_TYPE = "SEQ_CLS"


@dataclasses.dataclass
class ClassifierModel:
    """The model to train and what was decided while building it."""

    model: torch.nn.Module
    load_kwargs: dict  # from_pretrained kwargs that rebuild the same head (label map, problem type, pad id)
    head_modules: list[str]  # structural head: never quantized
    trained_modules: list[str]  # PEFT modules_to_save: head + newly initialized modules (+ the recipe's own)


def classifier_load_kwargs(
    config, label_names: Sequence[str], hf_problem_type: str, pad_token_id: int | None
) -> dict:
    """``from_pretrained`` kwargs giving the model ``num_labels``, ``id2label``/``label2id``, the problem type and,
    for decoders without one, a pad token id (the head reads the last non-pad token)."""
    kwargs = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "problem_type": hf_problem_type,
    }
    if getattr(config, "pad_token_id", None) is None:
        if pad_token_id is None:
            raise ConfigError(
                "the tokenizer has no pad, eos or unk token to pad batches with; set tokenizer_name_or_path"
            )
        kwargs["pad_token_id"] = pad_token_id
    return kwargs


def classification_skeleton(config, trust_remote_code: bool = False) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` of ``config`` on the meta device: its structure, no weights."""
    try:  # set_zero3_state keeps ZeRO-3's zero.Init (which cannot init meta) out of it
        with torch.device("meta"), set_zero3_state():
            return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as error:
        raise ConfigError(
            f"model type {config.model_type!r} has no sequence-classification head in transformers ({error}). "
            "Use an encoder (BERT, DistilBERT, RoBERTa, DeBERTa, MiniLM) or a decoder (Llama, Qwen, Mistral...)"
        ) from None


def head_module_names(skeleton: PreTrainedModel) -> list[str]:
    """Names of the head modules of a sequence-classification ``skeleton``: its children that hold parameters,
    except the backbone."""
    backbone = skeleton.base_model_prefix
    return [
        name
        for name, child in skeleton.named_children()
        if name != backbone and any(True for _ in child.parameters())
    ]


def newly_initialized_modules(model: PreTrainedModel, missing_keys: Sequence[str]) -> list[str]:
    """Modules (dotted paths) holding parameters that were not in the checkpoint."""
    parameters = dict(model.named_parameters())
    return sorted({key.rsplit(".", 1)[0] for key in missing_keys if key in parameters and "." in key})


def build_classifier(
    model_args: ModelArguments,
    label_names: Sequence[str],
    hf_problem_type: str,
    pad_token_id: int | None,
    gradient_checkpointing: bool = False,
    head_pooling: str = "model",
) -> ClassifierModel:
    """Load the backbone with a head for ``label_names`` and make it trainable as the recipe says (LoRA / full / QLoRA);
    ``head_pooling`` ``mean`` makes an encoder's head read the mean of the token states."""
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file)
    config = AutoConfig.from_pretrained(
        source.path, gguf_file=source.gguf_file, trust_remote_code=model_args.trust_remote_code
    )
    skeleton = classification_skeleton(config, model_args.trust_remote_code)
    head = head_module_names(skeleton)
    if head_pooling == "mean":
        check_encoder(skeleton)
    load_kwargs = classifier_load_kwargs(config, label_names, hf_problem_type, pad_token_id)
    model, info = load_model(
        model_args,
        AutoModelForSequenceClassification,
        skip_quantization=head,
        output_loading_info=True,
        **load_kwargs,
    )
    new = [
        name
        for name in newly_initialized_modules(model, info["missing_keys"])
        if name.split(".")[0] not in head
    ]
    if head_pooling == "mean":
        pool_mean_into_first_position(model)
    trained = list(dict.fromkeys([*head, *new, *(model_args.lora_modules_to_save or [])]))
    tuned_args = dataclasses.replace(
        model_args, lora_modules_to_save=list(trained)
    )  # a copy: PEFT extends it
    model = apply_tuning(model, tuned_args, TASK_TYPE, gradient_checkpointing=gradient_checkpointing)
    return ClassifierModel(model, load_kwargs, head, trained)
