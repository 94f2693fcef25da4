"""lorasmith.prompts: templates, verbalizers, encoding identical to TRL's, the length guard."""

import pytest

from lorasmith.errors import ConfigError
from lorasmith.prompts import (
    PromptSpec,
    build_verbalizers,
    check_choices,
    default_template,
    encode_choices,
    encode_prompt,
    fit_row,
    render,
    resolve_format,
    shortened_lengths,
    template_columns,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = None
    return tokenizer


GEO = PromptSpec(
    template="Requirement: {requirement}\nSample data: {sample_data}\nIs condition met?",
    verbalizers={"0": "no", "1": "yes"},
    system_message="You evaluate geographical locations.",
)


def test_template_columns_in_order_and_errors():
    assert template_columns("{b} and {a}, again {b} {{literal}}") == ["b", "a"]
    assert default_template(["sentence1", "sentence2"]) == "sentence1: {sentence1}\nsentence2: {sentence2}"
    for bad in ("{}", "{0}", "{a.b}", "{a:>5}", "no placeholder"):
        with pytest.raises(ConfigError):
            template_columns(bad)


def test_verbalizers_from_map_or_names_and_must_differ():
    assert build_verbalizers(["0", "1"], {0: "negative", 1: "positive"}) == {"0": "negative", "1": "positive"}
    assert build_verbalizers(["neg", "pos"]) == {"neg": "neg", "pos": "pos"}
    with pytest.raises(ConfigError, match=r"no answer for \['1'\]"):
        build_verbalizers(["0", "1"], {0: "negative"})
    with pytest.raises(ConfigError, match="share an answer"):
        PromptSpec(template="{text}", verbalizers={"a": "yes", "b": " yes"})


def test_format_follows_the_tokenizer(tokenizer, plain_tokenizer):
    assert resolve_format("auto", tokenizer) == "chat"
    assert resolve_format("auto", plain_tokenizer) == "plain"
    with pytest.raises(ConfigError, match="chat template"):
        resolve_format("chat", plain_tokenizer)


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_encoding_matches_trl_prompt_completion(fmt, tokenizer, plain_tokenizer):
    """The ids and answer mask we train and score on are the ones TRL builds from the rendered example."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = tokenizer if fmt == "chat" else plain_tokenizer
    spec = PromptSpec(GEO.template, GEO.verbalizers, GEO.system_message, format=fmt)
    row = {"requirement": "on the seashore", "sample_data": "Boston, Aspen"}
    example = render(spec, row, "1", tok.eos_token)
    assert isinstance(example["prompt"], list if fmt == "chat" else str)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tok.name_or_path),
        args=SFTConfig(output_dir="/tmp/unused", bf16=False, use_cpu=True, report_to=[], max_length=None),
        train_dataset=Dataset.from_list([example]),
        processing_class=tok,
    )
    trl_row = trainer.train_dataset[0]
    ours = encode_choices(tok, spec, row)["1"]
    assert trl_row["input_ids"] == ours.input_ids
    assert trl_row["labels"] == [-100] * ours.completion_start + ours.completion_ids
    assert tok.decode(ours.completion_ids).startswith("yes")


def test_check_choices_rejects_indistinguishable_answers(tokenizer):
    spec = PromptSpec("{text}", {"a": "yes", "b": "no"})
    choices = encode_choices(tokenizer, spec, {"text": "the cat likes the map."})
    check_choices(choices)  # distinct answers pass
    clash = {"a": choices["a"], "b": choices["a"]}
    with pytest.raises(ConfigError, match="same answer tokens"):
        check_choices(clash)


def test_fit_row_cuts_longest_column_and_never_the_answer(tokenizer):
    spec = PromptSpec(GEO.template, GEO.verbalizers, GEO.system_message, max_length=120)
    row = {"requirement": "desert", "sample_data": " ".join(["the cat likes the map."] * 40)}
    budget = max(
        len(c.completion_ids)
        for c in encode_choices(tokenizer, spec, {"requirement": "", "sample_data": ""}).values()
    )
    fitted = fit_row(tokenizer, spec, row, budget)
    assert fitted["requirement"] == "desert"  # the short column survives
    assert len(fitted["sample_data"]) < len(row["sample_data"])
    assert len(encode_prompt(tokenizer, spec, fitted)) + budget <= 120
    for encoded in encode_choices(tokenizer, spec, fitted).values():
        assert len(encoded.input_ids) <= 120 and tokenizer.decode(encoded.completion_ids).startswith(
            ("yes", "no")
        )
    tight = PromptSpec(GEO.template, GEO.verbalizers, GEO.system_message, max_length=90)
    assert fit_row(tokenizer, tight, row, budget) is None


def test_shortened_lengths_takes_from_the_longest_first():
    assert shortened_lengths({"a": 5, "b": 100}, 50) == {"a": 5, "b": 50}
    assert shortened_lengths({"a": 40, "b": 40}, 20) == {"a": 30, "b": 30}
    assert sum(shortened_lengths({"a": 3, "b": 4}, 100).values()) == 0
