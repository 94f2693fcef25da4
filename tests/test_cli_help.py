"""Every command's --help: lorasmith's own options first, in groups, each once in its snake_case spelling with its
real default; ``--config`` listed; the trainer passthrough summarised (``--help_all`` lists it); options that cannot
apply to a command are neither listed nor accepted. And the ``lorasmith`` command runs the same programs."""

import re
import subprocess
import sys
from pathlib import Path

import multiproc
import pytest

import data_utils.check
import eval.classify
import eval.matrix
import eval.probe
import eval.retrieval
import eval.sts
import train.embed
import train.mine
import train.seq_classify
import train.sft_classify
import train.sweep
from lorasmith.errors import ConfigError
from lorasmith.recipe_parser import parse_recipe

TRAINERS = {"train.embed": train.embed, "train.seq_classify": train.seq_classify, "train.sft_classify": train.sft_classify}
TOOLS = {
    "train.mine": train.mine, "train.sweep": train.sweep, "data_utils.check": data_utils.check,
    "eval.retrieval": eval.retrieval, "eval.sts": eval.sts, "eval.classify": eval.classify, "eval.probe": eval.probe,
    "eval.matrix": eval.matrix,
}  # fmt: skip
# Options that cannot apply to each trainer: never listed, refused with a message saying so.
FOREIGN = {
    "train.embed": ["--push_to_hub", "--neftune_noise_alpha", "--label_smoothing_factor", "--text_columns", "--labels"],
    "train.seq_classify": ["--push_to_hub", "--hub_model_id", "--score_range"],
    "train.sft_classify": ["--router_aux_loss_coef", "--pad_token", "--long_documents", "--max_chunks", "--push_to_hub"],
}
OWN_GROUPS = ["Data", "Reading files", "Model", "LoRA / quantization"]
LAST_GROUPS = ["Training", "Launch & outputs", "Trainer passthrough"]


def listed_options(help_text: str) -> list[str]:
    """The options the help lists, in order (an option line starts with two spaces and --)."""
    return re.findall(r"^  (--[\w-]+)", help_text, re.MULTILINE)


def groups(help_text: str) -> list[str]:
    """The group titles: a line ``Title:`` followed by an option line or the group's description."""
    return re.findall(r"^([A-Z][\w /&,-]+):\n  (?=-|\d)", help_text, re.MULTILINE)


@pytest.mark.parametrize("module", TRAINERS)
def test_a_trainer_help_lists_config_then_its_own_groups_then_the_trainer(module):
    help_text = TRAINERS[module].make_parser().format_help()
    assert help_text.startswith(f"usage: python -m {module} --config RECIPE [--key value ...]")
    options = listed_options(help_text)
    assert "  -h, --help " in help_text and options[:2] == ["--config", "--help_all"]
    titles = groups(help_text)
    assert titles[0] == "Recipe" and titles[-3:] == LAST_GROUPS
    assert [t for t in titles if t in OWN_GROUPS] == OWN_GROUPS and titles.index("LoRA / quantization") < titles.index("Training")
    entrypoint_group = titles[titles.index("LoRA / quantization") + 1]
    assert entrypoint_group in {"Contrastive training", "Sequence classification", "Prompt classification"}
    # passthrough: summarised in one line, listed by --help_all after every lorasmith option
    assert "--adam_beta1" not in options and re.search(r"\d+ more options of .*--help_all lists them", help_text)
    everything = TRAINERS[module].make_parser().format_help(show_passthrough=True)
    all_options = listed_options(everything)
    assert all_options[: len(options)] == options and "--adam_beta1" in all_options[len(options):]
    assert len(options) < 110 < len(all_options)
    for foreign in FOREIGN[module]:
        assert foreign not in all_options, foreign


@pytest.mark.parametrize("module", [*TRAINERS, *TOOLS])
def test_every_option_is_listed_once_in_snake_case_with_no_none_default(module):
    parser = {**TRAINERS, **TOOLS}[module].make_parser()
    help_text = parser.format_help(show_passthrough=True)
    options = listed_options(help_text)
    assert len(options) == len(set(options)), "an option listed twice"
    assert not [o for o in options if "-" in o[2:]], "dash-case spelling listed"
    assert "(default: None)" not in help_text and "Default: None" not in help_text
    assert not [o for o in options if o.startswith("--no_") and f"--{o[5:]}" in options], "a --no_ complement listed"


def test_defaults_shown_are_the_real_ones():
    flat = " ".join(train.embed.make_parser().format_help().split())
    assert "--lora_r N LoRA R value. (default: 16) --" in flat
    assert "--temperature X Temperature of every loss that does not set its own (0.05 = scale 20). Default: 0.05. --" in flat
    assert "--use_cpu [true|false] Whether or not to use cpu." in flat and "(default: true) --dataloader" in flat  # CPU
    assert "--max_length N Truncate inputs to this many tokens. Default: 256, or the model's limit when that is smaller. LoRA / quantization:" in flat


def test_the_other_spelling_is_an_alias_and_a_foreign_key_says_it_does_not_apply(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: pairs\nmodel_name_or_path: minilm\n")
    _, model, *_ = parse_recipe(train.embed.make_parser(), ["--config", str(recipe), "--lora-r", "4"])
    assert model.lora_r == 4
    recipe.write_text("task: pairs\nneftune_noise_alpha: 5\n")
    with pytest.raises(ConfigError, match="'neftune_noise_alpha' does not apply to python -m train.embed"):
        parse_recipe(train.embed.make_parser(), ["--config", str(recipe)])
    with pytest.raises(ConfigError, match="'push_to_hub' does not apply"):
        parse_recipe(train.sft_classify.make_parser(), ["--config", str(recipe), "--push_to_hub", "true"])


def test_a_packaged_recipe_is_found_by_name_with_its_sample_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of the project here: the name and the data paths resolve in the package
    data, model, run, config = parse_recipe(train.embed.make_parser(), ["--config", "quickstart"])
    assert model.model_name_or_path == "minilm" and config.output_dir == "outputs/embed-quickstart"
    assert data.train_data.endswith("data_utils/samples/tags.jsonl")
    assert Path(data.train_data).is_absolute() and Path(data.train_data).is_file()
    with pytest.raises(ConfigError, match=r"no packaged recipe has that name \(packaged: .*quickstart"):
        parse_recipe(train.embed.make_parser(), ["--config", "quikstart"])


def test_the_lorasmith_command_prints_its_help_without_library_warnings(tmp_path):
    """Run from a directory holding a ``train`` package of another project: the command still runs ours."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "__init__.py").write_text("raise ImportError('the wrong train package')\n")
    env = multiproc.test_env()
    result = subprocess.run([sys.executable, "-m", "lorasmith", "embed", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lorasmith embed --config RECIPE") and result.stderr == ""
    listing = subprocess.run([sys.executable, "-m", "lorasmith", "recipes"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=True).stdout  # fmt: skip
    assert re.search(r"^  quickstart +embed/quickstart\.yaml", listing, re.MULTILINE)
    unknown = subprocess.run([sys.executable, "-m", "lorasmith", "embedd"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert unknown.returncode == 2 and "unknown command 'embedd'" in unknown.stderr


@pytest.mark.slow
def test_the_lorasmith_command_runs_under_accelerate_launch_on_two_processes(tmp_path):
    """``accelerate launch -m lorasmith embed --config quickstart``: 2 ranks over gloo (the plan says so), one run
    folder, finished."""
    result = multiproc.run_multiprocess(["-m", "lorasmith", "embed", "--config", "quickstart", "--max_steps", "2",
                                         "--eval_before_training", "false", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert re.search(r"world size +: 2 \(ddp, cpu\)", result.stdout), result.stdout[-2000:]
    assert '"complete": true' in (tmp_path / "out" / "lorasmith_run.json").read_text()
