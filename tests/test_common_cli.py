"""Recipe parsing and the outputs every entrypoint writes."""

import json

import pytest
import yaml
from transformers import TrainingArguments

from lorasmith.errors import ConfigError, DataError
from lorasmith.process import run_main
from lorasmith.recipe_parser import make_parser, parse_recipe
from lorasmith.run_folder import write_metrics, write_model_card, write_recipe
from train.common.args import DataArguments, ModelArguments, RunArguments
from train.common.run import recipe_dict


@pytest.fixture
def parser():
    return make_parser([DataArguments, ModelArguments, RunArguments, TrainingArguments], module="test")


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "task": "pairs", "columns": {"anchor": "question"}, "model_name_or_path": "minilm", "use_peft": True,
        "lora_r": 8, "output_dir": str(tmp_path / "out"), "learning_rate": 1e-4,
    }))
    return path


def test_recipe_gives_defaults_and_cli_overrides(parser, recipe):
    data, model, run, training = parse_recipe(parser, ["--config", str(recipe), "--lora_r", "4", "--dry_run", "true"])
    assert data.columns == {"anchor": "question"} and model.lora_r == 4 and model.use_peft and run.dry_run
    assert training.learning_rate == 1e-4
    assert training.use_cpu  # picked automatically: this machine has no CUDA


def test_unknown_key_suggests_the_closest_valid_name(parser, recipe):
    with pytest.raises(ConfigError, match=r"'lora_rank' \(did you mean .*'lora_r'"):
        parse_recipe(parser, ["--config", str(recipe), "--lora_rank", "4"])
    recipe.write_text(recipe.read_text() + "learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"'learning_rat' \(did you mean 'learning_rate'"):
        parse_recipe(parser, ["--config", str(recipe)])


def test_missing_recipe_is_a_config_error(parser, tmp_path):
    with pytest.raises(ConfigError, match="cannot read recipe .*nope.yaml"):
        parse_recipe(parser, ["--config", str(tmp_path / "nope.yaml")])


def test_run_main_turns_user_errors_into_exit_2(capsys):
    def main(argv):
        raise DataError("score is not a number: 'abc'", source="x.csv", row=3, column="score")

    assert run_main(main, []) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: x.csv, row 3, column 'score': score is not a number: 'abc'"
    assert "Traceback" not in err


def test_outputs_recipe_metrics_and_card(parser, recipe, tmp_path):
    data, model, run, training = parse_recipe(parser, ["--config", str(recipe)])
    out = tmp_path / "out"
    saved = recipe_dict(data, model, run, training)
    write_recipe(out, saved)
    assert yaml.safe_load((out / "recipe.yaml").read_text()) == saved
    assert saved["learning_rate"] == 1e-4 and saved["lora_r"] == 8 and "logging_steps" not in saved
    write_metrics(out, {"before": {"spearman": 0.5}})
    merged = write_metrics(out, {"after": {"spearman": 0.75}})
    assert json.loads((out / "metrics.json").read_text()) == merged == {
        "before": {"spearman": 0.5}, "after": {"spearman": 0.75}
    }
    write_model_card(out, title="t", base_model="minilm", task="pairs", recipe=saved, metrics=merged, usage="use it")
    card = (out / "README.md").read_text()
    assert "| spearman | 0.5000 | 0.7500 |" in card and "lora_r: 8" in card
    assert not list(out.glob(".*.tmp"))


def test_text_columns_accept_commas_or_spaces(parser, recipe):
    for flags in (["a,b"], ["a", "b"]):
        data, *_ = parse_recipe(parser, ["--config", str(recipe), "--task", "labeled", "--text_columns", *flags])
        assert data.load_options()["text_columns"] == ["a", "b"]
