"""Several training datasets in one run: train_data as a list or a map, one dataset per batch, the proportional and
round-robin schedules, the same dataset on every process, per-dataset losses in the logs, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from multiproc import run_multiprocess
from test_embed_train import FAST, data_files

from lorasmith.errors import ConfigError
from lorasmith.process import run_main
from train.embed import main
from train.embed.sampling import SingleDatasetBatches, train_sources

# ---- train_data as sources ----


def test_a_plain_source_stays_a_single_dataset_run():
    assert train_sources("data/pairs.jsonl", "pairs", None) is None


def test_a_list_is_named_after_its_files_with_the_recipe_task_and_columns():
    sources = train_sources(["a/nli.jsonl.gz", "b/qa.csv", "c/qa.csv"], "pairs", "anchor=q")
    assert [(s.name, s.data, s.task, s.columns) for s in sources] == [
        ("nli", "a/nli.jsonl.gz", "pairs", "anchor=q"),
        ("qa_1", "b/qa.csv", "pairs", "anchor=q"),
        ("qa_2", "c/qa.csv", "pairs", "anchor=q"),
    ]


def test_a_map_entry_may_set_its_own_task_and_columns_also_from_the_command_line():
    text = "{nli: nli.jsonl, so: {data: so.csv, task: tags, columns: {text: title}}}"
    sources = train_sources(text, "pairs", None)
    assert [(s.name, s.data, s.task, s.columns) for s in sources] == [
        ("nli", "nli.jsonl", "pairs", None),
        ("so", "so.csv", "tags", {"text": "title"}),
    ]


@pytest.mark.parametrize(
    ("train_data", "message"),
    [
        ([], "empty"),
        ({"a": {"task": "tags"}}, "expected a source or a mapping"),
        ({"a": {"data": "x", "colums": {}}}, "did you mean 'columns'"),
        ({"infonce": "x.jsonl"}, "loss names"),
        ([1, 2], "must be a source"),
    ],
)
def test_bad_train_data_is_a_config_error(train_data, message):
    with pytest.raises(ConfigError, match=message):
        train_sources(train_data, "pairs", None)


def test_a_dataset_whose_task_cannot_feed_the_loss_fails_before_loading(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sort_keys=False, data={"task": "scored_pairs", "loss": "cosent", "output_dir": str(tmp_path / "o"),
                                      "model_name_or_path": "missing", "train_data": {
                                          "sts": "sts.jsonl", "qa": {"data": "qa.jsonl", "task": "pairs"}}}))  # fmt: skip
    assert run_main(main, ["--config", str(recipe)]) == 2
    assert (
        "train_data 'qa' (task pairs): loss 'cosent' needs gold similarity scores" in capsys.readouterr().err
    )


# ---- the batch sampler ----


def batches_of(
    sampler: SingleDatasetBatches, sizes: list[int], epoch: int = 0
) -> list[tuple[int, list[list[int]]]]:
    sampler.epoch = epoch
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    flat = list(sampler)
    world = sampler.world_size
    steps = []
    for start in range(0, len(flat), world):
        group = flat[start : start + world]
        datasets = {max(k for k in range(len(sizes)) if offsets[k] <= i) for batch in group for i in batch}
        assert len(datasets) == 1, f"global step {start // world} mixes datasets {datasets}"
        steps.append((datasets.pop(), group))
    return steps


@pytest.mark.parametrize("world", [1, 2])
def test_every_global_batch_is_one_dataset_and_every_row_is_used_once(world):
    sizes = [10, 23, 7]
    sampler = SingleDatasetBatches(sizes, 3, world, sampling="proportional", seed=5)
    steps = batches_of(sampler, sizes)
    rows = [i for _, group in steps for batch in group for i in batch]
    assert len(rows) == len(set(rows))
    global_batch = 3 * world
    # a dataset loses only a remainder smaller than the number of processes
    for k, size in enumerate(sizes):
        used = sum(len(b) for kk, group in steps if kk == k for b in group)
        assert size - used == (size % global_batch if size % global_batch < world else 0)
    assert len(list(sampler)) == len(sampler) == len(steps) * world
    assert all(len(group) == world and min(map(len, group)) >= 1 for _, group in steps)


def test_proportional_draws_datasets_in_proportion_to_their_size_in_a_seeded_order():
    sizes = [40, 120, 20]
    sampler = SingleDatasetBatches(sizes, 4, 1, sampling="proportional", seed=1)
    schedule = sampler.schedule(0)
    assert Counter(schedule) == {0: 10, 1: 30, 2: 5}
    assert schedule == SingleDatasetBatches(sizes, 4, 1, sampling="proportional", seed=1).schedule(0)
    assert schedule != sampler.schedule(1) and schedule != sorted(schedule)
    assert sampler.shares() == pytest.approx([10 / 45, 30 / 45, 5 / 45])


def test_round_robin_takes_one_batch_of_each_dataset_in_turn():
    sampler = SingleDatasetBatches([8, 20, 4], 4, 1, sampling="round_robin", seed=1)
    assert sampler.schedule(0) == [0, 1, 2, 0, 1, 1, 1, 1]
    assert [k for k, _ in batches_of(sampler, [8, 20, 4])] == [0, 1, 2, 0, 1, 1, 1, 1]


def test_the_schedule_and_the_rows_depend_on_seed_and_epoch_never_on_the_rank():
    sizes = [12, 30]
    one = SingleDatasetBatches(sizes, 2, 2, seed=3)
    again = SingleDatasetBatches(sizes, 2, 2, seed=3)
    assert one.steps(0) == again.steps(0) and one.steps(1) == again.steps(1)
    assert one.steps(0) != one.steps(1)
    assert one.steps(0) != SingleDatasetBatches(sizes, 2, 2, seed=4).steps(0)


# ---- runs ----


def recipe(tmp_path: Path, model_dir, data: dict, **keys) -> Path:
    """Three datasets of three tasks (12 pairs, 12 tags, 12 triplets rows) in one map."""
    content = {
        "model_name_or_path": str(model_dir),
        "task": "pairs",
        "train_data": {
            "qa": data["pairs"],
            "so": {"data": data["tags"], "task": "tags"},
            "hard": {"data": data["triplets"], "task": "triplets"},
        },
        **keys,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_each_logged_step_is_one_dataset_in_the_sampler_schedule(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    argv = ["--config", str(recipe(tmp_path, tiny_bert_dir, data)), "--output_dir", str(tmp_path / "out"),
            "--use_peft", "true", *FAST, "--max_steps", "9", "--per_device_train_batch_size", "4",
            "--dataset_sampling", "proportional"]  # fmt: skip
    trainer = main(argv)
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    drawn = [[name for name in ("qa", "so", "hard") if f"loss/{name}" in entry] for entry in steps]
    assert all(len(names) == 1 for names in drawn)
    expected = trainer.train_batches.schedule(0)  # 3 global batches of each dataset: one epoch = 9 steps
    assert [names[0] for names in drawn] == [("qa", "so", "hard")[k] for k in expected]
    assert Counter(expected) == {0: 3, 1: 3, 2: 3}
    for entry, names in zip(steps, drawn, strict=True):  # one step per window: the dataset's loss is the loss
        assert entry[f"loss/{names[0]}"] == pytest.approx(entry["loss"], rel=1e-4)


MAX_STEPS, SAVE_STEPS, KILL_AT = 12, 3, 11  # 8 global steps per epoch: the kill and the resume are in epoch 2


def batch_log(prefix: Path, rank: int, steps: int) -> list[str]:
    return Path(f"{prefix}.rank{rank}").read_text().splitlines()[:steps]


@pytest.mark.slow
def test_two_processes_draw_the_same_dataset_and_kill_9_resume_repeats_the_batches(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    config = recipe(tmp_path, tiny_bert_dir, data, dataset_sampling="proportional")
    logs = {name: tmp_path / f"batches-{name}" for name in ("baseline", "killed", "resumed")}

    def launch(output_dir: Path, log: Path, **env: str):
        argv = ["tests/scripts/embed_batches.py", "--config", str(config), "--output_dir", str(output_dir),
                "--use_peft", "true", *FAST, "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "2",
                "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS)]  # fmt: skip
        return run_multiprocess(argv, env={"EMBED_BATCH_LOG": str(log), **env}, expect_success=not env)

    launch(tmp_path / "baseline", logs["baseline"])
    killed = launch(tmp_path / "interrupted", logs["killed"], EMBED_KILL_AT_STEP=str(KILL_AT))
    assert killed.returncode != 0
    resumed = launch(tmp_path / "interrupted", logs["resumed"])
    assert f"resuming from {tmp_path / 'interrupted' / 'checkpoint-9'}" in resumed.stdout

    for rank in (0, 1):
        baseline = batch_log(logs["baseline"], rank, MAX_STEPS)
        assert (
            batch_log(logs["killed"], rank, 9) + batch_log(logs["resumed"], rank, MAX_STEPS - 9) == baseline
        )
    datasets = [[line.split()[0] for line in batch_log(logs["baseline"], rank, MAX_STEPS)] for rank in (0, 1)]
    assert datasets[0] == datasets[1]  # every process draws the same dataset at every step
    assert len(set(datasets[0])) == 3

    def losses(run: str) -> list[float]:
        state = json.loads((tmp_path / run / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
        return [entry["loss"] for entry in state["log_history"] if "loss" in entry]

    assert losses("interrupted") == pytest.approx(losses("baseline"), rel=1e-5)
