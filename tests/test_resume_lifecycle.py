"""Run lifecycle without launching anything: which checkpoint a re-run resumes from, the recipe guard on
``output_dir``, the signal callback, and the start-up checks that refuse known-bad launches."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import TrainerControl

from lorasmith import run_folder
from lorasmith.errors import ConfigError
from train.common import launch, resume, run
from train.common.signals import StopOnSignal

RECIPE = {"task": "pairs", "model_name_or_path": "minilm", "learning_rate": 2e-5, "max_steps": 10, "lora_r": 8}


def training_args(output_dir: Path, **overrides) -> SimpleNamespace:
    values = dict(output_dir=str(output_dir), resume_from_checkpoint=None, per_device_train_batch_size=4,
                  gradient_accumulation_steps=1)
    return SimpleNamespace(**{**values, **overrides})


def run_args(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"overwrite_output_dir": False, "global_batch_size": None, **overrides})


def save_checkpoint(output_dir: Path, step: int, recipe: dict, *, complete: bool = True) -> Path:
    """A checkpoint folder as the Trainer leaves it; ``complete`` runs the real marker callback on it."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        marker = resume.MarkCompleteCheckpoints()
        args = training_args(output_dir)
        marker.on_train_begin(args, None, None)
        marker.on_save(args, SimpleNamespace(global_step=step), None)
    return folder


def test_rerun_resumes_from_newest_complete_checkpoint_and_moves_half_written_one_aside(tmp_path):
    save_checkpoint(tmp_path, 2, RECIPE)
    save_checkpoint(tmp_path, 4, RECIPE)
    half_written = save_checkpoint(tmp_path, 6, RECIPE, complete=False)

    resume_from = resume.prepare_output_dir(training_args(tmp_path), run_args(), RECIPE)

    assert resume_from == str(tmp_path / "checkpoint-4")
    assert not half_written.exists()
    moved = tmp_path / run_folder.INCOMPLETE_DIR / "checkpoint-6"
    assert (moved / "adapter_model.safetensors").read_bytes() == b"weights"  # moved, not deleted
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text()) == RECIPE


def test_marker_records_step_world_and_global_batch(tmp_path):
    folder = save_checkpoint(tmp_path, 3, RECIPE)
    marker = json.loads((folder / run_folder.MARKER_NAME).read_text())
    assert (marker["step"], marker["world_size"], marker["global_batch_size"]) == (3, 1, 4)
    assert marker["fingerprint"] == resume.recipe_fingerprint(RECIPE)


def test_fresh_output_dir_starts_from_scratch_and_writes_recipe(tmp_path):
    output_dir = tmp_path / "new"
    assert resume.prepare_output_dir(training_args(output_dir), run_args(), RECIPE) is None
    assert yaml.safe_load((output_dir / "recipe.yaml").read_text()) == RECIPE


def test_restart_keys_may_change_between_runs(tmp_path):
    save_checkpoint(tmp_path, 4, RECIPE)
    extended = {**RECIPE, "max_steps": 20, "logging_steps": 1, "output_dir": "elsewhere"}
    assert resume.prepare_output_dir(training_args(tmp_path), run_args(), extended) == str(tmp_path / "checkpoint-4")


def test_global_batch_recipes_may_split_the_batch_differently(tmp_path):
    recipe = {**RECIPE, "global_batch_size": 32, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}
    save_checkpoint(tmp_path, 4, recipe)
    resplit = {**recipe, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8}
    assert resume.prepare_output_dir(training_args(tmp_path), run_args(), resplit) == str(tmp_path / "checkpoint-4")


def test_another_recipes_run_is_refused_with_the_differing_keys(tmp_path):
    save_checkpoint(tmp_path, 4, RECIPE)
    other = {**RECIPE, "learning_rate": 1e-4}
    with pytest.raises(ConfigError, match=r"learning_rate: 2e-05 -> 0.0001") as error:
        resume.prepare_output_dir(training_args(tmp_path), run_args(), other)
    assert "--overwrite_output_dir" in str(error.value)
    assert (tmp_path / "checkpoint-4").is_dir()
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text()) == RECIPE  # untouched


def test_checkpoints_of_another_recipe_are_refused_even_when_recipe_yaml_was_rewritten(tmp_path):
    save_checkpoint(tmp_path, 4, RECIPE)
    other = {**RECIPE, "lora_r": 16}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(other))  # an entrypoint that saved its recipe first
    with pytest.raises(ConfigError, match=r"(?s)lora_r: 8 -> 16.*checkpoint-4"):
        resume.prepare_output_dir(training_args(tmp_path), run_args(), other)


def test_overwrite_output_dir_moves_the_previous_run_aside(tmp_path):
    save_checkpoint(tmp_path, 4, RECIPE)
    (tmp_path / "metrics.json").write_text('{"after": 1}')
    (tmp_path / "notes.txt").write_text("the user's own file")
    other = {**RECIPE, "learning_rate": 1e-4}

    assert resume.prepare_output_dir(training_args(tmp_path), run_args(overwrite_output_dir=True), other) is None

    (previous,) = (tmp_path / run_folder.PREVIOUS_RUNS_DIR).iterdir()
    assert sorted(p.name for p in previous.iterdir()) == ["checkpoint-4", "metrics.json", "recipe.yaml"]
    assert yaml.safe_load((previous / "recipe.yaml").read_text()) == RECIPE
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text()) == other
    assert resume.checkpoints(tmp_path) == []


def test_explicit_resume_checkpoint_must_exist(tmp_path):
    args = training_args(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-9"))
    with pytest.raises(ConfigError, match="checkpoint-9 is not a folder"):
        resume.prepare_output_dir(args, run_args(), RECIPE)


def test_sigterm_requests_a_checkpoint_and_a_stop_at_the_step_end():
    previous = signal.getsignal(signal.SIGTERM)
    callback = StopOnSignal()
    try:
        control, state = TrainerControl(), SimpleNamespace(global_step=7, is_world_process_zero=True)
        callback.on_step_end(None, state, control)
        assert not (control.should_save or control.should_training_stop)

        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process survives
        callback.on_step_end(None, state, control)
        assert control.should_save and control.should_training_stop and callback.stopped

        control.should_save = control.should_evaluate = True  # what the epoch-end flow would ask
        callback.on_epoch_end(None, state, control)
        assert not (control.should_save or control.should_evaluate)
    finally:
        callback.on_train_end(None, None, None)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert run.stopped_by_signal(SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[callback])))


@pytest.mark.parametrize(
    ("global_batch", "per_device", "world", "accumulation"), [(64, 8, 8, 1), (64, 8, 2, 4), (64, 4, 1, 16)]
)
def test_global_batch_size_sets_gradient_accumulation(global_batch, per_device, world, accumulation):
    args = SimpleNamespace(per_device_train_batch_size=per_device, gradient_accumulation_steps=1)
    steps = launch.global_batch_accumulation(args, run_args(global_batch_size=global_batch), world)
    assert steps == accumulation
    assert per_device * steps * world == global_batch


def test_training_args_are_resolved_into_a_new_object_and_the_parsed_one_is_kept(tmp_path):
    """Global batch, no eval data and a log-only run are applied to a copy; init=False fields and lorasmith's
    flags survive a later replace_args."""
    from trl import SFTConfig

    from train.common.args import RunArguments

    parsed = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, eval_strategy="steps", eval_steps=5,
                       load_best_model_at_end=True, save_strategy="steps", report_to="none", use_cpu=True)
    plain = RunArguments(global_batch_size=32, save_model=False)
    resolved = run.resolve_training_args(parsed, plain, 2, has_eval_data=False)
    assert resolved is not parsed
    assert (resolved.gradient_accumulation_steps, resolved.eval_strategy, resolved.save_strategy) == (4, "no", "no")
    assert not resolved.load_best_model_at_end and resolved.lorasmith_save_model is False
    assert (parsed.gradient_accumulation_steps, parsed.eval_strategy, parsed.load_best_model_at_end) == (1, "steps", True)
    assert not hasattr(parsed, "lorasmith_save_model")
    later = run.replace_args(resolved, learning_rate=1e-3)
    assert later.lorasmith_save_model is False and later.gradient_accumulation_steps == 4


def test_indivisible_global_batch_is_refused_with_sizes_that_fit():
    args = SimpleNamespace(per_device_train_batch_size=6, gradient_accumulation_steps=1)
    with pytest.raises(ConfigError, match=r"not a multiple of .* 6 x world size 4.*\[1, 2, 4, 8, 16\]"):
        launch.global_batch_accumulation(args, run_args(global_batch_size=64), 4)


def quantized_model_args(**overrides):
    from train.common.args import ModelArguments

    return ModelArguments(model_name_or_path="x", load_in_4bit=True, dtype="bfloat16", **overrides)


@pytest.mark.parametrize(
    ("distributed_args", "name"),
    [
        (SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3), fsdp=False), "DeepSpeed ZeRO-3"),
        (SimpleNamespace(deepspeed_plugin=None, fsdp=True), "FSDP"),
    ],
)
def test_4bit_sharding_needs_matching_quant_storage(distributed_args, name):
    with pytest.raises(ConfigError, match=rf"4-bit \+ {name} needs bnb_4bit_quant_storage .* bfloat16"):
        launch.check_quantized_distribution(distributed_args, quantized_model_args())
    launch.check_quantized_distribution(distributed_args, quantized_model_args(bnb_4bit_quant_storage="bfloat16"))


def test_8bit_cannot_be_sharded_but_zero2_is_fine():
    from train.common.args import ModelArguments

    eight_bit = ModelArguments(model_name_or_path="x", load_in_8bit=True)
    with pytest.raises(ConfigError, match="8-bit bases cannot be sharded by DeepSpeed ZeRO-3"):
        launch.check_quantized_distribution(
            SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3), fsdp=False), eight_bit
        )
    launch.check_quantized_distribution(
        SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2), fsdp=False), quantized_model_args()
    )


def zero3_launch(save_16bit: bool):
    return SimpleNamespace(
        deepspeed_plugin=SimpleNamespace(zero_stage=3, zero3_save_16bit_model=save_16bit), fsdp=False
    )


def test_full_finetuning_under_zero3_is_refused_at_start_when_it_could_not_be_exported():
    from train.common.args import ModelArguments

    full = ModelArguments(model_name_or_path="x", full_finetune=True)
    with pytest.raises(ConfigError, match="set zero3_save_16bit_model: true"):
        launch.check_full_model_export(zero3_launch(save_16bit=False), full)
    with pytest.raises(
        ConfigError, match="LoRA together with full fine-tuning cannot be exported under DeepSpeed ZeRO-3"
    ):
        launch.check_full_model_export(
            zero3_launch(save_16bit=True),
            ModelArguments(model_name_or_path="x", full_finetune=True, use_peft=True),
        )
    launch.check_full_model_export(zero3_launch(save_16bit=True), full)  # gathered and saved at the end
    lora_only = ModelArguments(model_name_or_path="x", use_peft=True)
    launch.check_full_model_export(zero3_launch(save_16bit=False), lora_only)  # Trainer.save_model gathers
    zero2 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2), fsdp=False)
    launch.check_full_model_export(zero2, full)


def lora_model(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))


def test_reentrant_checkpointing_on_lora_without_input_grads_is_refused(tiny_llama_dir):
    model = lora_model(tiny_llama_dir)
    reentrant = SimpleNamespace(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ConfigError, match="use_reentrant: true .* no gradient"):
        launch.check_checkpointing_inputs(model, reentrant)
    launch.check_checkpointing_inputs(
        model, SimpleNamespace(activation_checkpointing=True, activation_checkpointing_kwargs=None)
    )
    model.enable_input_require_grads()
    launch.check_checkpointing_inputs(model, reentrant)


@pytest.mark.skipif(torch.cuda.is_available() or launch.cpu_supports_bf16(), reason="this CPU runs bf16 natively")
def test_bf16_on_a_cpu_without_bf16_is_refused():
    args = SimpleNamespace(bf16=True, fp16=False)
    with pytest.raises(ConfigError, match="bf16 requested on a CPU without bf16 support"):
        launch.check_precision(args)
