"""Instructions (train/embed/instructions.py): prefixes or templates ending with {text}, per dataset in a
multi-dataset run, one instruction on both sides of a symmetric task; recorded, applied by eval, and exported as
sentence-transformers prompts that reproduce training's embeddings."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_embed_train import FAST, data_files

from lorasmith.encoder import Embedder
from lorasmith.errors import ConfigError
from train.embed import main
from train.embed.instructions import Instructions, prefix_of, sentence_transformers_prompts
from train.embed.tasks import EMBED_TASKS

QA = "Instruct: Given a question, retrieve the answer\nQuery: "
TAGS = "Instruct: Given a title, retrieve its tags\nQuery: "


def test_a_template_becomes_its_prefix_and_text_after_it_is_refused():
    assert prefix_of(QA + "{text}", "query_prefix") == QA
    assert prefix_of("query: ", "query_prefix") == "query: " and prefix_of(None, "query_prefix") == ""
    with pytest.raises(ConfigError, match=r"\{text\} must come last, once"):
        prefix_of("Q: {text} A:", "query_prefix")


def test_symmetric_tasks_share_one_instruction_and_refuse_a_document_prefix():
    assert Instructions.resolve("same: ", None, EMBED_TASKS["scored_pairs"]) == Instructions("same: ", "same: ")
    assert Instructions.resolve(QA, None, EMBED_TASKS["pairs"]) == Instructions(QA, "")
    with pytest.raises(ConfigError, match="train_data 'sts': document_prefix does not apply to task scored_pairs"):
        Instructions.resolve(None, "d: ", EMBED_TASKS["scored_pairs"], where="train_data 'sts': ")
    prompts = sentence_transformers_prompts(Instructions(QA, ""), {"qa": Instructions(QA, ""), "so": Instructions(TAGS, "")})
    assert prompts == {"query": QA, "qa": QA, "so": TAGS}


@pytest.fixture(scope="module")
def mixed_run(tiny_bert_dir, tmp_path_factory):
    """Two datasets, each with its own query instruction (one as a template), documents bare."""
    folder = tmp_path_factory.mktemp("instructions")
    data = data_files(folder)
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_bert_dir), "task": "pairs", "query_prefix": QA + "{text}",
        "train_data": {"qa": data["pairs"], "so": {"data": data["tags"], "task": "tags", "query_prefix": TAGS}},
    }, sort_keys=False))  # fmt: skip
    trainer = main(["--config", str(recipe), "--output_dir", str(folder / "out"), "--use_peft", "true", *FAST])
    return trainer, folder / "out"


def test_each_dataset_trains_with_its_own_instruction_and_documents_stay_bare(mixed_run):
    trainer, _ = mixed_run
    collators = dict(zip(trainer.data_collator.names, trainer.data_collator.collators, strict=True))
    rows = [{"text": "a title", "tags": ["python"]}]
    assert collators["so"].texts(EMBED_TASKS["tags"].roles(rows)) == [TAGS + "a title", "python"]
    pairs = [{"anchor": "a question", "positive": "an answer"}]
    assert collators["qa"].texts(EMBED_TASKS["pairs"].roles(pairs)) == [QA + "a question", "an answer"]


def test_the_run_records_its_instructions_and_exports_prompts_that_reproduce_them(mixed_run):
    from sentence_transformers import SentenceTransformer

    _, out = mixed_run
    manifest = json.loads((out / "lorasmith.json").read_text())["embedding"]
    assert manifest["query_prefix"] == QA and manifest["document_prefix"] == ""
    assert manifest["instructions"] == {"qa": {"query_prefix": QA, "document_prefix": ""},
                                        "so": {"query_prefix": TAGS, "document_prefix": ""}}  # fmt: skip
    st_config = json.loads((out / "merged" / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": QA, "qa": QA, "so": TAGS}
    ours = Embedder.load(out, show_progress=False)
    queries = ["how do I sort a list", "what is a tuple"]
    st = SentenceTransformer(str(out / "merged"), device="cpu")
    for prompt_name, prefix in (("query", QA), ("so", TAGS)):
        expected = ours.encode(queries, prefix=prefix)
        torch.testing.assert_close(torch.from_numpy(st.encode(queries, prompt_name=prompt_name)), expected, atol=1e-5, rtol=0)


def test_a_symmetric_run_puts_its_instruction_on_both_sides_in_training_and_in_eval_sts(tiny_bert_dir, tmp_path):
    data = data_files(tmp_path)
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--task", "scored_pairs", "--train_data", data["scored_pairs"],
            "--query_prefix", "same: ", "--use_peft", "true", "--output_dir", str(tmp_path / "out"), *FAST]  # fmt: skip
    trainer = main(argv)
    pair = [{"sentence1": "a cat", "sentence2": "a dog", "score": 0.5}]
    assert trainer.data_collator.texts(EMBED_TASKS["scored_pairs"].roles(pair)) == ["same: a cat", "same: a dog"]
    embedder = Embedder.load(tmp_path / "out", show_progress=False)
    assert embedder.symmetric_prefix == "same: "
