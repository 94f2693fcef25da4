"""Exports under DeepSpeed ZeRO-3 hold the trained weights, not the shards.

The tiny test models would stay whole under ZeRO-3 (DeepSpeed keeps parameters smaller than
``stage3_param_persistence_threshold``, 1e5 elements by default, on every process), so these runs use a DeepSpeed
config with the threshold at 0: every parameter is partitioned, as in a 7B model. The reference is DeepSpeed's
own consolidation of the final checkpoint's shards (``zero_to_fp32``); the exported ``adapter/`` or ``merged/``
must equal it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from multiproc import run_multiprocess
from safetensors.torch import load_file
from test_launch_entrypoints import COMMON, RECIPES
from transformers import AutoModel, AutoModelForSequenceClassification

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("LORASMITH_SKIP_DEEPSPEED") == "1", reason="LORASMITH_SKIP_DEEPSPEED=1"
    ),
]

STEPS = 3


def partitioning_zero3_config(folder: Path) -> Path:
    """An accelerate config for ZeRO-3 whose DeepSpeed config partitions every parameter, however small."""
    deepspeed = {
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
    }
    (folder / "ds_zero3.json").write_text(json.dumps(deepspeed))
    accelerate = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": str(folder / "ds_zero3.json"), "zero3_init_flag": True},
        "num_machines": 1,
        "num_processes": 2,
        "machine_rank": 0,
        "rdzv_backend": "static",
        "use_cpu": False,
    }
    path = folder / "accelerate_zero3.yaml"
    path.write_text(yaml.safe_dump(accelerate))
    return path


def consolidated_checkpoint(output_dir: Path) -> dict:
    """fp32 weights of the final checkpoint, gathered from its ZeRO-3 shards by DeepSpeed (no process group)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(output_dir / f"checkpoint-{STEPS}"))


@pytest.mark.parametrize(
    ("entrypoint", "tuning", "prefix"),
    [
        ("embed", "full", "encoder."),
        ("embed", "lora", "encoder."),  # evaluated during training too: every process encodes in lockstep
        ("seq_classify", "full", ""),
        ("sft_classify", "lora", ""),
    ],
)
def test_export_under_zero3_equals_the_consolidated_checkpoint(
    tiny_bert_dir, tiny_llama_dir, tmp_path, entrypoint, tuning, prefix
):
    recipe = {
        **COMMON,
        **RECIPES[entrypoint](tiny_bert_dir, tiny_llama_dir),
        "max_steps": STEPS,
        "save_steps": STEPS,
    }
    if tuning == "full":
        recipe.update(use_peft=False, full_finetune=True)
    if entrypoint == "embed" and tuning == "lora":
        recipe.update(eval_data=recipe["train_data"], eval_strategy="steps", eval_steps=STEPS)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    output_dir = tmp_path / "out"
    result = run_multiprocess(
        ["-m", f"train.{entrypoint}", "--config", str(path), "--output_dir", str(output_dir)],
        config_file=partitioning_zero3_config(tmp_path),
    )
    assert ": 2 (deepspeed-zero3, cpu)" in result.stdout

    reference = consolidated_checkpoint(output_dir)
    if tuning == "lora":  # the adapter file; PEFT drops the adapter name from the keys it saves
        exported = load_file(output_dir / "adapter" / "adapter_model.safetensors")
        reference = {
            name.removeprefix(prefix).replace(".default.", "."): tensor
            for name, tensor in reference.items()
            if ".lora_" in name
        }
        assert set(exported) == set(reference)
    else:  # the merged folder as users load it
        model_class = AutoModel if entrypoint == "embed" else AutoModelForSequenceClassification
        exported = model_class.from_pretrained(output_dir / "merged").state_dict()
        reference = {
            name.removeprefix(prefix): tensor for name, tensor in reference.items() if name.startswith(prefix)
        }
        assert set(reference) <= set(exported), sorted(set(reference) - set(exported))[:5]
    assert len(reference) > 4
    for name, tensor in reference.items():
        assert exported[name].shape == tensor.shape, name  # a shard would be empty or flat
        assert (exported[name].float() - tensor).abs().max() < 1e-6, name
