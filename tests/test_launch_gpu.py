"""GPU-only launches: accelerate's FSDP cannot run on CPU (v1 raises, v2 silently becomes DDP), and QLoRA's
bitsandbytes kernels and NCCL need CUDA. These run the tiny trainer under ``fsdp.yaml`` / ``fsdp_qlora.yaml`` /
``zero3.yaml`` with a 4-bit base on every visible GPU (at most 2) and skip without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from multiproc import REPO, run_multiprocess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FSDP and QLoRA over NCCL)"),
]

QLORA = ["--load_in_4bit", "true", "--bnb_4bit_quant_storage", "bfloat16", "--dtype", "bfloat16", "--bf16", "true"]
CASES = {
    "fsdp": ["--dtype", "bfloat16", "--bf16", "true"],
    "fsdp_qlora": QLORA,
    "zero3": QLORA,
}


@pytest.mark.parametrize("config", list(CASES))
def test_tiny_trainer_trains_checkpoints_and_resumes_on_gpus(tiny_llama_dir, tmp_path, config):
    processes = min(2, torch.cuda.device_count())
    output_dir = tmp_path / config
    args = ["tests/scripts/tiny_trainer.py", "--model_name_or_path", str(tiny_llama_dir), "--use_peft", "true",
            "--lora_target_modules", "all-linear", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--output_dir", str(output_dir), *CASES[config]]  # fmt: skip
    config_file = REPO / "accelerate_configs" / f"{config}.yaml"

    result = run_multiprocess(args, num_processes=processes, config_file=config_file)
    distribution = "fsdp" if config.startswith("fsdp") else "deepspeed-zero3"
    assert f": {processes} ({distribution}, cuda)" in result.stdout
    state = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert len([e for e in state["log_history"] if "loss" in e]) == 4

    extended = run_multiprocess([*args, "--max_steps", "6"], num_processes=processes, config_file=config_file)
    assert f"resuming from {output_dir / 'checkpoint-4'}" in extended.stdout
    assert (output_dir / "checkpoint-6" / "lorasmith_checkpoint.json").exists()


def test_4bit_fsdp_without_matching_storage_is_refused_before_loading(tiny_llama_dir, tmp_path):
    args = ["tests/scripts/tiny_trainer.py", "--model_name_or_path", str(tiny_llama_dir), "--use_peft", "true",
            "--load_in_4bit", "true", "--dtype", "bfloat16", "--bf16", "true", "--output_dir", str(tmp_path)]  # fmt: skip
    result = run_multiprocess(args, num_processes=1, config_file=REPO / "accelerate_configs" / "fsdp_qlora.yaml",
                              expect_success=False)  # fmt: skip
    assert result.returncode != 0
    assert "4-bit + FSDP needs bnb_4bit_quant_storage equal to the model dtype (bfloat16)" in result.stderr
