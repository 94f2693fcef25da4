"""What a finished embedding run leaves in ``output_dir`` (the ``lorasmith.run_folder`` contract).

- ``adapter/``: the LoRA adapter + tokenizer (LoRA-only runs), written through ``Trainer.save_model`` so that
  DeepSpeed consolidates the weights first (ZeRO-3 included);
- ``merged/``: the full model (adapter merged into an unquantized base, or the fully fine-tuned weights,
  gathered from their shards under ZeRO-3), loadable with ``transformers.AutoModel``, plus the sentence-transformers module files so that
  ``SentenceTransformer("output_dir/merged")`` pools and normalises exactly as training did;
- ``rotation.safetensors`` (runs with a Matryoshka rotation, ``rotation.py``; also a ``Dense`` module of ``merged/``),
- ``lorasmith.json`` (kind ``embedding``: pooling, normalisation, max length, prefixes, Matryoshka widths, rotation),
  ``README.md`` model card (with ``truncate_dim`` usage when the run trained Matryoshka widths).
``metrics.json`` and ``recipe.yaml`` are written by the entrypoint.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModel

from lorasmith.run_folder import (
    MERGED_DIR,
    ROTATION_NAME,
    write_manifest,
    write_model_card,
    write_rotation,
    write_sentence_transformers_files,
)
from lorasmith.tokenizer_inputs import appends_eos
from train.common.args import ModelArguments
from train.common.export import export_trained_model
from train.common.run import manifest_fields
from train.embed.instructions import Instructions, sentence_transformers_prompts
from train.embed.model import EmbeddingModel
from train.embed.sampling import MixCollator
from train.embed.trainer import ENCODER_PREFIX


def export_embedding_model(
    trainer, model_args: ModelArguments, *, export_merged: bool
) -> dict[str, str | None]:
    """Save adapter and/or merged model of ``trainer``'s model to ``trainer.args.output_dir``; call on EVERY
    process (the adapter save may be collective). Returns the manifest's ``adapter`` / ``merged`` entries."""
    model: EmbeddingModel = trainer.accelerator.unwrap_model(trainer.model)
    # sentence-transformers passes no position ids: with right padding a decoder's default ones are each text's own
    trainer.processing_class.padding_side = "right"

    def add_sentence_transformers_files(folder: Path) -> None:
        settings = embedding_settings(trainer)
        write_sentence_transformers_files(
            folder,
            settings["pooling"],
            settings["normalize"],
            settings["max_length"],
            model.hidden_size(),
            prompts=sentence_transformers_prompts(
                Instructions(settings["query_prefix"], settings["document_prefix"]), dataset_instructions(trainer)
            ),
            rotation=model.rotation,
        )

    return export_trained_model(
        trainer,
        model_args,
        AutoModel,
        export_merged=export_merged,
        module=model.encoder,
        prefix=ENCODER_PREFIX,
        complete_merged=add_sentence_transformers_files,  # published with merged/, never after it
    )


def embedding_settings(trainer) -> dict:
    """How texts become vectors in this run (the manifest's ``embedding`` entry): pooling, normalisation,
    max length, the prefixes of the recipe's task (a symmetric task's one instruction on both sides) and of each
    dataset of a multi-dataset run (``instructions``, None for one dataset), whether texts end with an appended EOS
    (``append_eos``; the saved tokenizers append it themselves), the Matryoshka widths trained
    (``matryoshka_dims``, None when off: any of them is a valid ``truncate_dim``) and the rotation file
    (``rotation``, None without a Matryoshka rotation)."""
    model: EmbeddingModel = trainer.accelerator.unwrap_model(trainer.model)
    collator = trainer.data_collator
    return {
        "pooling": model.pooling,
        "normalize": model.normalize,
        "max_length": collator.max_length,
        "query_prefix": collator.query_prefix,
        "document_prefix": collator.document_prefix,
        "append_eos": appends_eos(trainer.processing_class),
        "instructions": {name: instructions.as_manifest() for name, instructions in dataset_instructions(trainer).items()}
        or None,
        "matryoshka_dims": trainer.args.matryoshka_dims,
        "rotation": ROTATION_NAME if model.rotation is not None else None,
    }


def dataset_instructions(trainer) -> dict[str, Instructions]:
    """Each training dataset's prefixes by name (a multi-dataset run; empty for one dataset)."""
    collator = trainer.data_collator
    if not isinstance(collator, MixCollator):
        return {}
    return {
        name: Instructions(one.query_prefix, one.document_prefix)
        for name, one in zip(collator.names, collator.collators, strict=True)
    }


def write_embedding_manifest(trainer, model_args: ModelArguments, saved: dict) -> Path:
    """``lorasmith.json`` of kind ``embedding`` (how ``lorasmith.encoder.Embedder.load`` rebuilds the model), after the
    ``rotation.safetensors`` it names (runs with a Matryoshka rotation). Main process only."""
    model: EmbeddingModel = trainer.accelerator.unwrap_model(trainer.model)
    if model.rotation is not None:
        write_rotation(trainer.args.output_dir, model.rotation)
    manifest = {**manifest_fields("embedding", model_args, saved), "embedding": embedding_settings(trainer)}
    return write_manifest(trainer.args.output_dir, manifest)


def write_embedding_card(
    output_dir: str | Path,
    model_args: ModelArguments,
    task: str,
    recipe: dict,
    metrics: dict,
    matryoshka_dims: list[int] | None = None,
    extensions_text: str = "",
):
    """``README.md``: what was trained, how to embed with it (sentence-transformers and lorasmith, at a Matryoshka
    width when ``matryoshka_dims``), the extensions' paragraphs (``extensions_text``, e.g. the Matryoshka
    rotation's), metrics, recipe."""
    usage = f"""```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{Path(output_dir) / MERGED_DIR}")
embeddings = model.encode(["first text", "second text"])
```

Evaluate with lorasmith: `python -m eval.retrieval --model {output_dir} --data FILE --task pairs`
or `python -m eval.sts --model {output_dir} --data FILE`."""
    if matryoshka_dims:
        small = matryoshka_dims[-1]
        usage += f"""

Matryoshka widths trained: {", ".join(map(str, matryoshka_dims))}. Use the first `d` dimensions of any of them:
`SentenceTransformer("{Path(output_dir) / MERGED_DIR}", truncate_dim={small})` (encode with
`normalize_embeddings=True`, or compare with cosine similarity), or `--truncate_dim {small}` on every `eval.*` CLI."""
    if extensions_text:
        usage += "\n\n" + extensions_text
    write_model_card(
        output_dir,
        title=f"{Path(str(model_args.model_name_or_path)).name} fine-tuned for embeddings ({task})",
        base_model=str(model_args.model_name_or_path),
        task=f"embedding-{task}",
        recipe=recipe,
        metrics=metrics,
        usage=usage,
    )
