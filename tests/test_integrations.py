"""The integration points lorasmith relies on, with the INSTALLED versions (seconds).

The rest of the suite can pass while a user's install is broken at a point only a benchmark or a user's own
code reaches (transformers 5.24 + peft 0.21.2: ``add_adapter`` refuses the peft, so sentence-transformers' LoRA
path fails). Each test runs one ``lorasmith.integrations`` check and fails with the check's message, which names
the incompatible pair, e.g. ``transformers 5.24.0 + peft 0.21.2: add_adapter refuses this peft: ...``.
A failure here means constraints.txt (the lock) was not used, or the lock needs a hold: see README, "Refresh the lock".
"""

from __future__ import annotations

import shutil

import pytest

from lorasmith import integrations


def passes(check, *args, **kwargs):
    """Run a check; on IntegrationError fail with its message only (it names the pair), no traceback."""
    try:
        return check(*args, **kwargs)
    except integrations.IntegrationError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback around the message


@pytest.fixture(scope="module")
def merged_dir(tiny_bert_dir, tmp_path_factory):
    """A merged/ folder written the way an embedding run writes it: the HF model + tokenizer, then
    ``lorasmith.run_folder.write_sentence_transformers_files`` (mean pooling, normalised, a query prompt)."""
    from lorasmith.run_folder import write_sentence_transformers_files

    folder = tmp_path_factory.mktemp("run") / "merged"
    shutil.copytree(tiny_bert_dir, folder)
    write_sentence_transformers_files(folder, "mean", True, 64, 32, prompts={"query": "query: "})
    return folder


def test_transformers_peft_add_adapter(tiny_bert_dir):
    from transformers import AutoModel

    passes(integrations.check_peft_add_adapter, AutoModel.from_pretrained(tiny_bert_dir))


def test_peft_get_peft_model_and_merge():
    passes(integrations.check_peft_model)


def test_transformers_trainer_with_accelerate():
    passes(integrations.check_trainer)


def test_trl_sft_trainer():
    passes(integrations.check_trl_sft)


def test_sentence_transformers_loads_our_merged_folder(merged_dir):
    """sentence-transformers rebuilds Transformer -> mean Pooling -> Normalize from our files, keeps the prompt,
    and embeds exactly as our mean pooling of the HF model does."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = passes(integrations.check_sentence_transformers, merged_dir)
    assert [type(module).__name__ for module in model] == ["Transformer", "Pooling", "Normalize"]
    assert model.prompts.get("query") == "query: "
    texts = ["the cat likes the map.", "a dog reads a good book."]
    tokenizer, encoder = AutoTokenizer.from_pretrained(merged_dir), AutoModel.from_pretrained(merged_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    actual = torch.as_tensor(model.encode(texts, convert_to_numpy=True))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_sentence_transformers_lora_add_adapter(merged_dir):
    """The path bench/embed_stsb.py compares against: SentenceTransformer(...).add_adapter(LoraConfig(...))."""
    passes(integrations.check_sentence_transformers, merged_dir, lora=integrations.BERT_LORA_TARGETS)


def test_deepspeed_imports():
    passes(integrations.check_deepspeed)


def test_bitsandbytes_imports_and_quantizes():
    passes(integrations.check_bitsandbytes)


def test_gguf_accepted_by_transformers():
    passes(integrations.check_gguf)


def test_failure_names_the_pair(monkeypatch):
    """The message a drifted install prints: both distributions with their installed versions, then what broke."""
    from transformers.integrations import peft as hf_peft

    def refuse(self, *args, **kwargs):
        raise ValueError("The version of PEFT you are using is not compatible, please use a version >= 99.0")

    monkeypatch.setattr(hf_peft.PeftAdapterMixin, "add_adapter", refuse)
    monkeypatch.setattr(hf_peft, "MIN_PEFT_VERSION", "99.0")
    with pytest.raises(integrations.IntegrationError) as failure:
        integrations.check_peft_add_adapter()
    message = str(failure.value)
    assert message.startswith(
        f"transformers {integrations.version('transformers')} + peft {integrations.version('peft')}: "
    )
    assert "requires peft >= 99.0" in message and "please use a version >= 99.0" in message
    assert integrations.unavailable(integrations.check_peft_add_adapter) == " ".join(message.split())
