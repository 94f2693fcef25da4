"""Training throughput of the two classifiers (packed batches, the default) against the trainers a user would
otherwise pick, on the same rows, model, LoRA, batch, seed and padded layout. Run it alone (2 cores: about 10 min).

    python bench/classify_throughput.py [--data-root ../shared/data] [--parts sst2 imdb sft]

Rows of the table:

- ``sst2`` / ``imdb``: ``train.seq_classify`` (the entrypoint, packing on) vs a plain ``transformers.Trainer`` with
  ``DataCollatorWithPadding`` on the same tokenized rows: the packaged MiniLM + LoRA r=8 on
  query/key/value/dense (dropout 0.05) + the head, max length 256, batch 32 (SST-2 train, short sentences) / 16
  (IMDb train_1k, reviews, most cut at 256 tokens);
- ``sft``: ``train.sft_classify`` (packing on) vs a plain ``trl.SFTTrainer`` given the same rows as a conversational
  prompt-completion dataset (the same token sequences, tests/test_prompts.py), with its default collator and with
  ``padding_free=True``: the packaged SmolLM2-135M-Instruct + LoRA r=8 on the attention and MLP projections, the
  answer-only loss, max length 192, batch 16.

examples/s = rows / the trainer's ``train_runtime`` (every step, the optimizer's included). padding share = padding
token slots / all token slots of the training forwards (ours: the logged ``padding_share``; theirs: counted on the
batches their collator builds; TRL's padding-free row is one unpadded row). loss = the run's mean training loss:
the same objective on the same batches, so equal up to rounding and dropout. Targets: padding share <= 0.10 and
>= 1.5x the plain trainer's examples/s on SST-2, for both classifiers.

Data (never copied into the repository; sampled rows go to a temporary folder): ``sst2/train.tsv``
(``label<TAB>sentence``), ``imdb/train_1k.jsonl``. Exits 0 with a note when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from eval.report import format_table  # noqa: E402

SEED = 42
SEQ_TARGETS = ["query", "key", "value", "dense"]
SFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SYSTEM = "You are a sentiment classifier for movie reviews. Answer with one word: positive or negative."
TEMPLATE = "Review: {text}\nIs this review positive or negative?"
ANSWERS = {"0": "negative", "1": "positive"}
# part -> rows of data, batch, max length
PARTS = {"sst2": (3200, 32, 256), "imdb": (480, 16, 256), "sft": (128, 16, 192)}


def sample_sst2(data_root: Path, rows: int, target: Path) -> Path:
    import pandas as pd

    frame = pd.read_csv(data_root / "sst2" / "train.tsv", sep="\t", quoting=3, keep_default_na=False)
    frame = frame.sample(n=rows, random_state=SEED).rename(columns={"sentence": "text"})
    frame[["text", "label"]].to_csv(target, index=False)
    return target


def sample_imdb(data_root: Path, rows: int, target: Path) -> Path:
    import pandas as pd

    frame = pd.read_json(data_root / "imdb" / "train_1k.jsonl", lines=True).head(rows)
    frame[["text", "label"]].to_csv(target, index=False)
    return target


class CountingCollator:
    """A collator that also counts real tokens and token slots of the batches it builds (the plain trainers')."""

    def __init__(self, collate):
        self.collate, self.real, self.slots = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        if "attention_mask" in batch:
            self.real += int(batch["attention_mask"].sum())
            self.slots += batch["attention_mask"].numel()
        else:  # TRL's padding-free batch: one row, no padding
            self.real += batch["input_ids"].numel()
            self.slots += batch["input_ids"].numel()
        return batch

    @property
    def padding_share(self) -> float:
        return 1 - self.real / max(self.slots, 1)


def plain_arguments(config_class, folder: Path, batch: int, steps: int, learning_rate: float, **extra):
    return config_class(
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=batch, learning_rate=learning_rate,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=SEED,
        dataloader_num_workers=0, **extra,
    )  # fmt: skip


def ours_row(name: str, trainer, rows: int) -> list:
    history = [entry for entry in trainer.state.log_history if "padding_share" in entry]
    result = next(entry for entry in trainer.state.log_history if "train_runtime" in entry)
    share = sum(entry["padding_share"] for entry in history) / len(history)
    return [name, rows / result["train_runtime"], share, result["train_loss"]]


def seq_classify(data: Path, folder: Path, rows: int, batch: int, max_length: int) -> list[list]:
    """train.seq_classify (packed) vs transformers' Trainer (padded batches), same rows and settings."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    import data_utils
    from train.common.args import ModelArguments
    from train.common.modeling import load_tokenizer, resolve_model_source
    from train.seq_classify import main

    steps = rows // batch
    recipe = {
        "model_name_or_path": "minilm", "train_data": str(data), "use_peft": True, "lora_r": 8, "lora_alpha": 16,
        "lora_dropout": 0.05, "lora_target_modules": SEQ_TARGETS, "max_length": max_length,
        "per_device_train_batch_size": batch, "max_steps": steps, "learning_rate": 5e-4, "eval_strategy": "no",
        "save_strategy": "no", "load_best_model_at_end": False, "logging_steps": 1, "report_to": "none", "export_merged": False,
        "disable_tqdm": True, "seed": SEED, "output_dir": str(folder / "ours"),
    }  # fmt: skip
    (folder / "seq.yaml").write_text(yaml.safe_dump(recipe))
    ours = main(["--config", str(folder / "seq.yaml")])

    model_args = ModelArguments(model_name_or_path="minilm")
    tokenizer = load_tokenizer(model_args)
    dataset = data_utils.load(str(data), task="labeled", label_names=["0", "1"])
    dataset = dataset.map(lambda row: tokenizer(row["text"], truncation=True, max_length=max_length),
                          remove_columns=["text"]).rename_column("label", "labels")  # fmt: skip
    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_source("minilm", None).path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=SEQ_TARGETS))
    collator = CountingCollator(DataCollatorWithPadding(tokenizer))
    trainer = Trainer(model=model, args=plain_arguments(TrainingArguments, folder / "plain", batch, steps, 5e-4),
                      train_dataset=dataset, data_collator=collator)  # fmt: skip
    result = trainer.train()
    plain = ["transformers Trainer, padded", rows / result.metrics["train_runtime"], collator.padding_share,
             result.training_loss]  # fmt: skip
    return [ours_row("train.seq_classify, packed", ours, rows), plain]


def sft_classify(data: Path, folder: Path, rows: int, batch: int, max_length: int) -> list[list]:
    """train.sft_classify (packed) vs TRL's SFTTrainer (default collator, and padding-free)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import data_utils
    from lorasmith.prompts import PromptSpec, render, resolve_format
    from train.common.args import ModelArguments
    from train.common.modeling import load_model, load_tokenizer
    from train.sft_classify import main
    from train.sft_classify.data import label_rows

    steps = rows // batch
    recipe = {
        "model_name_or_path": "smollm2", "train_data": str(data), "labels": ANSWERS, "system_message": SYSTEM,
        "template": TEMPLATE, "use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": SFT_TARGETS,
        "max_length": max_length, "per_device_train_batch_size": batch, "max_steps": steps, "learning_rate": 2e-4,
        "activation_checkpointing": False, "eval_strategy": "no", "save_strategy": "no",
        "load_best_model_at_end": False, "logging_steps": 1, "report_to": "none", "export_merged": False,
        "disable_tqdm": True, "seed": SEED, "output_dir": str(folder / "ours-sft"),
    }  # fmt: skip
    (folder / "sft.yaml").write_text(yaml.safe_dump(recipe))
    table = [ours_row("train.sft_classify, packed", main(["--config", str(folder / "sft.yaml")]), rows)]

    model_args = ModelArguments(model_name_or_path="smollm2")
    tokenizer = load_tokenizer(model_args)
    labeled = data_utils.load(str(data), task="labeled", label_names=["0", "1"])
    spec = PromptSpec(TEMPLATE, ANSWERS, SYSTEM, resolve_format("auto", tokenizer), max_length=max_length)
    examples = [render(spec, row, str(label), tokenizer.eos_token)
                for row, label in zip(label_rows(labeled, spec), labeled["label"], strict=True)]  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=SFT_TARGETS)
    for name, padding_free in (("TRL SFTTrainer, default collator", False), ("TRL SFTTrainer, padding_free", True)):
        arguments = plain_arguments(  # padding-free refuses a max_length it cannot enforce: the rows fit it already
            SFTConfig, folder / f"plain-{padding_free}", batch, steps, 2e-4, max_length=None if padding_free else max_length,
            completion_only_loss=True, activation_checkpointing=False, bf16=False, padding_free=padding_free,
        )  # fmt: skip
        trainer = SFTTrainer(model=load_model(model_args, AutoModelForCausalLM), args=arguments,
                             train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                             peft_config=lora)  # fmt: skip
        trainer.data_collator = CountingCollator(trainer.data_collator)
        result = trainer.train()
        table.append([name, rows / result.metrics["train_runtime"], trainer.data_collator.padding_share,
                      result.training_loss])  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every part's rows (e.g. 0.25 to try it)")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    data_root = Path(args.data_root)
    if not (data_root / "sst2" / "train.tsv").is_file():
        print(f"no benchmark data under {data_root} (sst2/train.tsv): nothing to measure")
        return
    folder = Path(tempfile.mkdtemp(prefix="classify_throughput_"))
    results: dict[str, list[list]] = {}
    for part in args.parts:
        rows, batch, max_length = PARTS[part]
        rows = max(batch * 2, int(rows * args.scale) // batch * batch)
        sample = sample_imdb if part == "imdb" else sample_sst2
        data = sample(data_root, rows, folder / f"{part}.csv")
        run = sft_classify if part == "sft" else seq_classify
        (folder / part).mkdir()
        results[part] = run(data, folder / part, rows, batch, max_length)

    headers = ["trainer", "examples/s", "padding share", "mean train loss", "speed-up"]
    for part, table in results.items():
        rows, batch, max_length = PARTS[part]
        baseline = table[1][1]
        print(f"\n{part}: batch {batch}, max length {max_length}, {len(table)} trainers on the same rows")
        print(format_table(headers, [[*row, f"{row[1] / baseline:.2f}x"] for row in table], digits=3))
    print("\ntargets: padding share <= 0.10; >= 1.5x the plain trainer (sst2, sft)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
