"""Bad inputs end as one clear message and exit 2, before any model weight is read (tracebacks and
valid-looking but wrong inputs).

Three classes, each with its own mechanism:
1. recipe values (``recipe_parser.parse_recipe`` + ``recipe_checks``): YAML syntax, keys written twice, wrong types and
   ranges, values argparse cannot read; the message names the file and line (or the command line) and the key;
2. checks on the model's config and a meta skeleton (``modeling.check_model_fit``, ``load_tokenizer``) and on what
   the evaluation reports (``launch.check_best_metric``), made before weights are loaded;
3. the eval CLIs' environment (``eval.cli``): ``--device``, ``--output`` / ``--output-dir`` checked before work.

Every entrypoint test patches ``PreTrainedModel.from_pretrained`` to fail the test: no weights may be read.
"""

import re
import shutil

import pytest
import torch
import yaml
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

import eval.cli
import eval.sts
import lorasmith.encoder
import train.embed
import train.seq_classify
import train.sft_classify
from data_utils import sample_path
from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from lorasmith.recipe_parser import parse_recipe

ENTRYPOINTS = {"embed": train.embed, "seq_classify": train.seq_classify, "sft_classify": train.sft_classify}


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model weights are loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def write_recipe(folder, defaults: dict, **values):
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({**defaults, **values}, sort_keys=False))
    return path


def embed_recipe(folder, model_dir, **values):
    return write_recipe(folder, dict(
        task="pairs", train_data=str(sample_path("pairs.jsonl")), eval_data=str(sample_path("pairs_eval.jsonl")),
        model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_target_modules=["query", "value"],
        max_length=32, output_dir=str(folder / "out"), report_to="none",
    ), **values)  # fmt: skip


def labeled_recipe(folder, model_dir, defaults: dict, **values):
    return write_recipe(folder, dict(
        train_data=str(sample_path("labeled_sentiment.csv")),
        eval_data=str(sample_path("labeled_sentiment_eval.csv")), text_columns=["text"],
        model_name_or_path=str(model_dir), use_peft=True, lora_r=4, output_dir=str(folder / "out"), report_to="none",
        **defaults,
    ), **values)  # fmt: skip


def seqcls_recipe(folder, model_dir, **values):
    return labeled_recipe(folder, model_dir, {"lora_target_modules": ["query", "value"], "max_length": 32}, **values)


def sft_recipe(folder, model_dir, **values):
    return labeled_recipe(folder, model_dir, {"lora_target_modules": ["q_proj", "v_proj"], "max_length": 96}, **values)


def fails(entrypoint: str, argv, capsys) -> str:
    """Run an entrypoint's main through run_main; assert exit 2 without a traceback; return the message."""
    assert run_main(ENTRYPOINTS[entrypoint].main, list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---- 1. recipe values ----


def test_wrong_ranges_on_the_command_line_are_listed_together(tmp_path, tiny_bert_dir, capsys, no_weights):
    recipe = embed_recipe(tmp_path, tiny_bert_dir)
    argv = ["--config", recipe, "--per_device_train_batch_size", "-3", "--lora_r", "0", "--learning_rate", "-1"]
    err = fails("embed", argv, capsys)
    assert "command line: per_device_train_batch_size is -3; expected a value >= 1" in err
    assert "command line: lora_r is 0; expected a value >= 1" in err
    assert "command line: learning_rate is -1.0; expected a value > 0" in err


def test_wrong_types_in_the_recipe_name_file_line_and_key(tmp_path, tiny_bert_dir, capsys, no_weights):
    recipe = seqcls_recipe(tmp_path, tiny_bert_dir, lora_alpha=[8, 16], num_train_epochs=None, seed=True)
    lines = recipe.read_text().splitlines()
    line_of = {key: 1 + next(i for i, text in enumerate(lines) if text.startswith(f"{key}:")) for key in ("lora_alpha", "seed")}
    err = fails("seq_classify", ["--config", recipe], capsys)
    assert f"{recipe} line {line_of['lora_alpha']}: lora_alpha is [8, 16]; expected an integer" in err
    assert "num_train_epochs is null; expected a number" in err
    assert f"{recipe} line {line_of['seed']}: seed is true; expected an integer" in err


def test_max_length_zero_empty_tag_delimiter_and_malformed_lora_layers(tmp_path, tiny_llama_dir, capsys, no_weights):
    recipe = sft_recipe(tmp_path, tiny_llama_dir, max_length=0, tag_delimiter="", lora_layers="first2")
    err = fails("sft_classify", ["--config", recipe], capsys)
    assert "max_length is 0; expected a value >= 1" in err
    assert "tag_delimiter is ''; expected a non-empty text" in err
    assert "lora_layers is 'first2'; expected 'last', 'lastN' (N >= 1) or layer indices like '0,5'" in err


def test_values_argparse_cannot_read_say_where_they_were_written(tmp_path, tiny_bert_dir, capsys):
    recipe = embed_recipe(tmp_path, tiny_bert_dir, weight_decay="abc")
    err = fails("embed", ["--config", recipe], capsys)
    assert f"{recipe} line" in err and "weight_decay: 'abc' is not a number" in err
    err = fails("seq_classify", ["--config", seqcls_recipe(tmp_path, tiny_bert_dir), "--use_peft", "maybe"], capsys)
    assert "command line: use_peft:" in err and "usage:" not in err


def test_a_single_value_for_a_list_field_is_a_one_item_list(tmp_path, tiny_bert_dir):
    recipe = embed_recipe(tmp_path, tiny_bert_dir, eval_ks=10)
    *_, config = parse_recipe(train.embed.make_parser(), ["--config", str(recipe)])
    assert config.eval_ks == [10]


def test_yaml_syntax_error_gives_file_line_and_column(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("task: pairs\nlora_r: 4\ncolumns: {anchor: question\n")
    err = fails("embed", ["--config", recipe], capsys)
    assert f"{recipe}, line 4, column 1: invalid YAML" in err
    recipe.write_text("task: pairs\n  lora_r: 4\n")
    err = fails("sft_classify", ["--config", recipe], capsys)
    assert f"{recipe}, line 2, column 9: invalid YAML: mapping values are not allowed here" in err


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path, capsys):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("task: pairs\nlora_r: 4\nlearning_rate: 1.0e-4\nlora_r: 16\n")
    assert f"{recipe}: key 'lora_r' is written twice (lines 2 and 4)" in fails("embed", ["--config", recipe], capsys)
    recipe.write_text("columns:\n  anchor: q\n  anchor: question\n")
    assert "key 'anchor' is written twice (lines 2 and 3)" in fails("seq_classify", ["--config", recipe], capsys)


# ---- 2. checks on the model's config, before its weights ----


def test_max_length_above_the_position_table(tmp_path, tiny_bert_dir, capsys, no_weights):
    err = fails("embed", ["--config", embed_recipe(tmp_path, tiny_bert_dir), "--max_length", "600"], capsys)
    assert "max_length 600 is above this model's limit of 512 positions (max_position_embeddings 512)" in err
    err = fails("seq_classify", ["--config", seqcls_recipe(tmp_path, tiny_bert_dir), "--max_length", "513"], capsys)
    assert "set max_length: 512 or less" in err


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_an_unset_max_length_fits_a_short_model_and_an_explicit_one_is_still_checked(
    tmp_path, tiny_bert_dir, model_type, capsys
):
    """64 usable positions (RoBERTa's table holds padding_idx + 1 more): unset -> 64, said in the plan; 256 -> refused."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    config_class, model_class = (BertConfig, BertModel) if model_type == "bert" else (RobertaConfig, RobertaModel)
    source = AutoModel.from_pretrained(tiny_bert_dir)  # for its tokenizer's vocabulary and padding id
    extra = source.config.pad_token_id + 1 if model_type == "roberta" else 0
    config = config_class(
        vocab_size=source.config.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64 + extra, pad_token_id=source.config.pad_token_id,
    )
    short = tmp_path / "short-model"
    model_class(config).save_pretrained(short)
    shutil.copytree(tiny_bert_dir, short, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    recipe = embed_recipe(tmp_path, short)
    values = yaml.safe_load(recipe.read_text())
    del values["max_length"]
    recipe.write_text(yaml.safe_dump(values))
    assert run_main(train.embed.main, ["--config", str(recipe), "--dry_run", "true"]) == 0
    assert re.search(r"max length +: 64 tokens \(unset: the model's limit of 64 positions\)", capsys.readouterr().out)
    err = fails("embed", ["--config", recipe, "--max_length", "256", "--dry_run", "true"], capsys)
    assert "max_length 256 is above this model's limit of 64 positions" in err


def test_an_unset_max_length_is_the_default_on_a_long_model(tmp_path, tiny_llama_dir, capsys):
    """A rotary decoder stating 256 positions and a 512-position encoder: unset -> 256 for both."""
    recipe = sft_recipe(tmp_path, tiny_llama_dir)
    values = {k: v for k, v in yaml.safe_load(recipe.read_text()).items() if k != "max_length"}
    recipe.write_text(yaml.safe_dump(values))
    assert run_main(train.sft_classify.main, ["--config", str(recipe), "--dry_run", "true"]) == 0
    assert re.search(r"max length +: 256 tokens \(unset: the default 256\)", capsys.readouterr().out)


def test_lora_targets_that_match_nothing_name_the_model_modules(tmp_path, tiny_bert_dir, tiny_llama_dir, capsys, no_weights):
    recipe = seqcls_recipe(tmp_path, tiny_bert_dir)
    err = fails("seq_classify", ["--config", recipe, "--lora_target_modules", "q_proj"], capsys)
    assert "lora_target_modules q_proj match no module" in err and "dense, key, query, value" in err
    err = fails("sft_classify", ["--config", sft_recipe(tmp_path, tiny_llama_dir), "--lora_target_modules", "query"], capsys)
    assert "match no module" in err and "q_proj" in err


def test_lora_layers_selecting_every_layer_are_refused(tmp_path, tiny_bert_dir, tiny_llama_dir, capsys, no_weights):
    err = fails("embed", ["--config", embed_recipe(tmp_path, tiny_bert_dir), "--lora_layers", "last3"], capsys)
    assert "lora_layers 'last3' selects all 2 of the model's 2 layers" in err
    err = fails("sft_classify", ["--config", sft_recipe(tmp_path, tiny_llama_dir), "--lora_layers", "0,-1"], capsys)
    assert "lora_layers '0,-1' selects all 2" in err


def test_model_folder_without_tokenizer_files(tmp_path, tiny_bert_dir, tiny_llama_dir, capsys, no_weights):
    for name, source in (("bert", tiny_bert_dir), ("llama", tiny_llama_dir)):
        (tmp_path / name).mkdir()
        for file in ("config.json", "model.safetensors"):
            shutil.copy(source / file, tmp_path / name / file)
    err = fails("embed", ["--config", embed_recipe(tmp_path, tmp_path / "bert")], capsys)
    assert f"{tmp_path / 'bert'} holds no tokenizer files" in err and "tokenizer_name_or_path" in err
    argv = ["--config", seqcls_recipe(tmp_path, tmp_path / "bert"), "--tokenizer_name_or_path", str(tiny_bert_dir)]
    with pytest.raises(AssertionError, match="a model was loaded"):  # the tokenizer given: the run goes on
        run_main(train.seq_classify.main, argv)


def adapter(model_class, model_dir, folder, task_type):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model_class.from_pretrained(model_dir), LoraConfig(task_type=task_type, target_modules=["query"], r=2))
    model.save_pretrained(folder)
    return folder


def test_adapter_path_missing_or_from_another_kind_of_run(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    seqcls_adapter = adapter(AutoModelForSequenceClassification, tiny_bert_dir, tmp_path / "seqcls", "SEQ_CLS")
    embed_adapter = adapter(AutoModel, tiny_bert_dir, tmp_path / "embed", "FEATURE_EXTRACTION")
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    err = fails("embed", ["--config", embed_recipe(tmp_path, tiny_bert_dir), "--adapter_path", tmp_path / "nope"], capsys)
    assert f"adapter_path {tmp_path / 'nope'} does not exist" in err
    err = fails("embed", ["--config", embed_recipe(tmp_path, tiny_bert_dir), "--adapter_path", seqcls_adapter], capsys)
    assert "does not fit this model: 3 of its 3 modules are not in" in err and "as SEQ_CLS" in err
    err = fails("seq_classify", ["--config", seqcls_recipe(tmp_path, tiny_bert_dir), "--adapter_path", embed_adapter], capsys)
    assert "does not fit this model" in err and "as FEATURE_EXTRACTION" in err


def test_misspelt_metric_for_best_model_with_a_suggestion(tmp_path, tiny_bert_dir, tiny_llama_dir, capsys, no_weights):
    err = fails("embed", ["--config", embed_recipe(tmp_path, tiny_bert_dir), "--metric_for_best_model", "ndcg10"], capsys)
    assert "metric_for_best_model 'ndcg10' is not a metric this run's evaluation reports: did you mean 'ndcg@10'" in err
    err = fails("seq_classify", ["--config", seqcls_recipe(tmp_path, tiny_bert_dir), "--metric_for_best_model", "f1-macro"], capsys)
    assert "did you mean 'f1_macro'" in err
    err = fails("sft_classify", ["--config", sft_recipe(tmp_path, tiny_llama_dir), "--metric_for_best_model", "eval_acuracy"], capsys)
    assert "did you mean 'accuracy'" in err


def test_a_document_prefix_on_a_symmetric_task_and_a_template_not_ending_in_text_are_refused(
    tmp_path, tiny_bert_dir, capsys, no_weights
):
    recipe = embed_recipe(
        tmp_path, tiny_bert_dir, task="scored_pairs", train_data=str(sample_path("sts.tsv")),
        eval_data=str(sample_path("sts_eval.tsv")),
    )  # fmt: skip
    err = fails("embed", ["--config", recipe, "--document_prefix", "passage: "], capsys)
    assert "document_prefix does not apply to task scored_pairs" in err and "query_prefix, put on both sides" in err
    err = fails("embed", ["--config", recipe, "--query_prefix", "Query: {text} (STS)"], capsys)
    assert "query_prefix: {text} must come last, once" in err


# ---- 3. eval CLIs: device and outputs, before any work ----


@pytest.fixture
def no_embedder(monkeypatch):
    monkeypatch.setattr(lorasmith.encoder.Embedder, "load", classmethod(lambda *a, **k: pytest.fail("model loaded")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tiny_bert_dir, capsys, no_embedder):
    argv = ["--model", str(tiny_bert_dir), "--data", str(sample_path("sts_eval.tsv"))]
    assert eval.sts.main([*argv, "--device", "cuda"]) == 2
    assert "--device cuda: this machine has no CUDA GPU" in capsys.readouterr().err
    assert eval.sts.main([*argv, "--device", "gpu0"]) == 2
    assert "--device gpu0: not a device name" in capsys.readouterr().err


def test_eval_output_that_cannot_be_written_is_refused_before_work(tmp_path, tiny_bert_dir, capsys, monkeypatch, no_embedder):
    import eval.retrieval

    argv = ["--model", str(tiny_bert_dir), "--data", str(sample_path("sts_eval.tsv"))]
    assert eval.sts.main([*argv, "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a folder: give a file path" in capsys.readouterr().err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    retrieval = ["--model", str(tiny_bert_dir), "--data", str(sample_path("pairs_eval.jsonl"))]
    assert eval.retrieval.main([*retrieval, "--output", str(blocker / "r.json")]) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setattr(eval.cli.os, "access", lambda path, mode: False)
    assert eval.sts.main([*argv, "--output", str(tmp_path / "new" / "r.json")]) == 2
    assert f"no permission to write {tmp_path}" in capsys.readouterr().err


def test_check_writable_accepts_new_files_and_folders(tmp_path):
    eval.cli.check_writable(str(tmp_path / "a" / "b.json"), "--output")
    eval.cli.check_writable(str(tmp_path), "--output-dir", folder=True)
    with pytest.raises(ConfigError, match="is a file"):
        (tmp_path / "f").write_text("x")
        eval.cli.check_writable(str(tmp_path / "f"), "--output-dir", folder=True)
