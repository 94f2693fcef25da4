"""train.embed building blocks: the collator's batch layout per task, the recipe fields, the model wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorasmith import recipe_parser
from lorasmith.errors import ConfigError
from train.embed import make_parser
from train.embed.batch import PAD_ID, text_ids
from train.embed.collator import ContrastiveCollator
from train.embed.resolve import resolve_task_defaults
from train.embed.tasks import EMBED_TASKS
from train.embed.trainer import embedded_batch


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def test_tags_batch_has_distinct_tags_as_candidates_and_each_texts_tag_ids(tokenizer):
    rows = [
        {"text": "the cat likes the map", "tags": ["cat", "map"]},
        {"text": "a dog reads", "tags": ["dog", "cat"]},
    ]
    collator = ContrastiveCollator(tokenizer, EMBED_TASKS["tags"], 32, query_prefix="q: ", document_prefix="d: ")
    batch = collator(rows)

    assert batch["candidate_ids"].shape[0] == 3  # cat, map, dog: the shared tag appears once
    assert batch["candidate_ids"].tolist() == text_ids(["cat", "map", "dog"]).tolist()  # ids of the raw tags
    cat, map_, dog = batch["candidate_ids"].tolist()
    assert batch["positive_ids"].tolist() == [[cat, map_], [dog, cat]]
    decoded = tokenizer.decode(token_rows(batch)[2], skip_special_tokens=True)  # text 2 = candidate 0
    assert decoded.startswith("d :")  # document prefix on tags (the tokenizer splits ':')
    masks = [chunk["attention_mask"] for chunk in collator.chunks(batch)]
    assert [mask.shape[0] for mask in masks] == [2, 3]  # role chunks: anchors, candidates
    assert int(batch["real_tokens"]) == int(sum(mask.sum() for mask in masks)) == int(batch["lengths"].sum())


def token_rows(batch) -> list[list[int]]:
    """Every text's unpadded token ids, in text order (anchors, then candidates)."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    return [rows[j] for j in batch["text_order"].argsort().tolist()]


def test_tags_with_different_tag_counts_pad_positive_ids(tokenizer):
    rows = [{"text": "a", "tags": ["x"]}, {"text": "b", "tags": ["x", "y", "z"]}]
    batch = ContrastiveCollator(tokenizer, EMBED_TASKS["tags"], 32)(rows)
    assert batch["positive_ids"].shape == (2, 3)
    assert batch["positive_ids"][0, 1:].tolist() == [PAD_ID, PAD_ID]


def test_triplet_candidates_are_positives_then_row_major_negatives(tokenizer):
    rows = [
        {"anchor": "a1", "positive": "p1", "negatives": ["n11", "n12"]},
        {"anchor": "a2", "positive": "p2", "negatives": ["n21", "n22"]},
    ]
    batch = ContrastiveCollator(tokenizer, EMBED_TASKS["triplets"], 32)(rows)
    assert batch["candidate_ids"].tolist() == text_ids(["p1", "p2", "n11", "n12", "n21", "n22"]).tolist()
    d = 4
    embedded = embedded_batch(EMBED_TASKS["triplets"], torch.zeros(2, d), torch.zeros(6, d), batch)
    assert embedded.pair_index.tolist() == [0, 1]
    assert embedded.positive_ids[:, 0].tolist() == text_ids(["p1", "p2"]).tolist()


def test_simcse_views_share_ids_and_symmetric_tasks_put_one_instruction_on_both_sides(tokenizer):
    rows = [{"text": "the cat likes the map"}, {"text": "a dog reads"}]
    collator = ContrastiveCollator(tokenizer, EMBED_TASKS["simcse_unsup"], 32, query_prefix="q: ")
    batch = collator(rows)
    assert collator.query_prefix == collator.document_prefix == "q: "
    assert collator.texts(EMBED_TASKS["simcse_unsup"].roles(rows))[0] == "q: the cat likes the map"
    assert token_rows(batch)[:2] == token_rows(batch)[2:]
    embedded = embedded_batch(EMBED_TASKS["simcse_unsup"], torch.zeros(2, 4), torch.zeros(2, 4), batch)
    assert embedded.positive_ids[:, 0].tolist() == batch["anchor_ids"].tolist()


def test_scored_pairs_carry_scores(tokenizer):
    rows = [
        {"sentence1": "a", "sentence2": "b", "score": 0.2},
        {"sentence1": "c", "sentence2": "d", "score": 1.0},
    ]
    batch = ContrastiveCollator(tokenizer, EMBED_TASKS["scored_pairs"], 32)(rows)
    embedded = embedded_batch(EMBED_TASKS["scored_pairs"], torch.zeros(2, 4), torch.zeros(2, 4), batch)
    assert embedded.scores.tolist() == pytest.approx([0.2, 1.0])


def parse(*argv):
    return recipe_parser.parse_recipe(make_parser(), list(argv))


def test_loss_accepts_yaml_on_the_command_line_and_best_metric_follows_the_eval_task():
    data_args, _, _, config = parse(
        "--task", "scored_pairs", "--loss", "{cosent: 1, angle: {weight: 1, temperature: 0.1}}"
    )
    assert config.loss == {"cosent": 1, "angle": {"weight": 1, "temperature": 0.1}}
    config = resolve_task_defaults(config, EMBED_TASKS["scored_pairs"], has_eval_data=True)
    assert (config.eval_task, config.metric_for_best_model, config.greater_is_better) == (
        "scored_pairs",
        "spearman",
        True,
    )

    _, _, _, config = parse("--task", "tags")
    config = resolve_task_defaults(config, EMBED_TASKS["tags"], has_eval_data=False)
    assert (config.eval_task, config.load_best_model_at_end, config.eval_strategy) == ("tags", False, "no")


def test_bad_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="pooling must be one of"):
        parse("--task", "pairs", "--pooling", "average")


def test_lora_with_activation_checkpointing_keeps_gradients_in_lora(tiny_bert_dir):
    from train.common.args import ModelArguments
    from train.embed.model import build_embedding_model

    model_args = ModelArguments(
        model_name_or_path=str(tiny_bert_dir), use_peft=True, lora_target_modules=["query", "value"]
    )
    model = build_embedding_model(model_args, "mean", True, gradient_checkpointing=True)
    model.activation_checkpointing_enable()
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones_like(ids)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # lora_B starts at 0: make lora_A's gradient non-zero too
    anchor, candidates = model(
        [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids.flip(0), "attention_mask": mask}]
    ).split(3)
    (anchor @ candidates.T).sum().backward()
    lora_grads = {name: p.grad for name, p in model.named_parameters() if "lora_" in name}
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads.values())
    assert torch.allclose(anchor.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in (Path(__file__).parents[1] / "configs" / "embed").glob("*.yaml"))
)
def test_every_embed_recipe_parses_and_loads_its_data(recipe, capsys, tiny_bert_dir):
    import yaml

    from lorasmith.process import run_main
    from train.embed import main

    argv = ["--config", f"configs/embed/{recipe}", "--dry_run", "true"]
    path = Path(__file__).parents[1] / "configs" / "embed" / recipe
    values = yaml.safe_load(path.read_text())
    if values["model_name_or_path"] not in ("minilm", "smollm2"):
        argv += ["--model_name_or_path", str(tiny_bert_dir)]  # a hub model cannot be fetched offline
    if not (Path(__file__).parents[1] / values["train_data"]).exists():  # a hub dataset: the same task's sample
        argv += ["--train_data", f"data_utils/samples/{values['task']}.jsonl", "--columns", "anchor=anchor,positive=positive"]
    if values.get("bf16") or values.get("dtype") == "bfloat16":
        argv += ["--bf16", "false", "--dtype", "float32"]  # a GPU recipe: bf16 is refused on this CPU
    assert run_main(main, argv) == 0
    assert "training rows" in capsys.readouterr().out
