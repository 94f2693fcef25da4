"""Text -> embedding for evaluation: one ``Embedder`` for every kind of model folder.

``Embedder.load(model)`` accepts, in this order of precedence:

1. an embedded model (``lorasmith.embedded_models``), e.g. ``"minilm"``: the packaged all-MiniLM-L6-v2 (mean
   pooling, normalized).
2. a lorasmith output folder (has ``lorasmith.json``, kind ``embedding``): ``merged/`` when present, else
   ``base_model`` (+ ``gguf_file``) with the PEFT adapter from ``adapter/``; pooling, normalisation,
   max length, query/document prefixes and the Matryoshka rotation (when the run fitted one) from the manifest.
3. a sentence-transformers folder (has ``modules.json``): pooling from ``1_Pooling/config.json``,
   normalisation when a Normalize module is listed, max length from ``sentence_bert_config.json``, a square
   linear ``Dense`` module as ``rotation`` (any other module is refused: it could not be reproduced).
4. any other HF model folder or hub id: mean pooling, normalized, max length the tokenizer's stated limit
   (512 when it states none), never beyond the model's learned position table (``tokenizer_inputs.readable_length``).

Explicit ``pooling`` / ``normalize`` / ``max_length`` / ``append_eos`` arguments override what the folder says. A
decoder pooled by its last token reads texts ending with the EOS token unless told otherwise
(``lorasmith.pooling.wants_eos``), as train.embed trains it.
``truncate_dim`` keeps the first ``d`` dimensions of every embedding (re-normalised when the embedder
normalises), as a Matryoshka-trained model is meant to be used at reduced width.
``Embedder.from_model`` wraps an in-memory model (trainers evaluating during training).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from tqdm.auto import tqdm

from lorasmith import tokenizer_inputs
from lorasmith.distributed import split_and_gather
from lorasmith.embedded_models import embedded_model_files
from lorasmith.errors import ConfigError
from lorasmith.pooling import is_causal, pool, validate_pooling_mode, wants_eos
from lorasmith.run_folder import MERGED_DIR, read_manifest, read_rotation, read_sentence_transformers_config
from lorasmith.tokenizer_inputs import DEFAULT_MAX_LENGTH, readable_length


def truncate(embeddings: torch.Tensor, dim: int | None, normalize: bool) -> torch.Tensor:
    """``(N, D) -> (N, dim)``: the first ``dim`` columns, rows L2-normalised again when ``normalize``
    (``dim`` None: unchanged)."""
    if dim is None:
        return embeddings
    embeddings = embeddings[:, :dim]
    return F.normalize(embeddings, p=2, dim=-1) if normalize else embeddings


class Embedder:
    """Batched, no-grad text encoder: ``encode(texts) -> (N, D)`` fp32 CPU tensor, rows L2-normalized
    when ``normalize``; ``D`` is ``truncate_dim`` when set (the first ``truncate_dim`` pooled dimensions,
    normalized after truncation).

    Attributes: ``model`` (HF model returning ``last_hidden_state``), ``tokenizer``, ``pooling`` (one of
    ``lorasmith.pooling.POOLING_MODES``), ``normalize``, ``max_length``, ``query_prefix``, ``document_prefix``,
    ``truncate_dim`` (None = the model's full width), ``rotation`` (``(D, D)`` fp32 or None: pooled vectors are
    multiplied by it before normalisation and truncation; a Matryoshka-rotation run's, or a sentence-transformers
    ``Dense`` module without bias or activation).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = DEFAULT_MAX_LENGTH,
        query_prefix: str = "",
        document_prefix: str = "",
        show_progress: bool = True,
        truncate_dim: int | None = None,
        rotation: torch.Tensor | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = validate_pooling_mode(pooling)
        self.normalize = normalize
        self.max_length = max_length
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.show_progress = show_progress
        width = model.get_input_embeddings().embedding_dim
        if truncate_dim is not None and not 1 <= truncate_dim <= width:
            raise ConfigError(
                f"truncate_dim must be between 1 and the model's embedding width {width}; got {truncate_dim}"
            )
        self.truncate_dim = truncate_dim
        if rotation is not None and tuple(rotation.shape) != (width, width):
            raise ConfigError(f"rotation must be ({width}, {width}) for this model; got {tuple(rotation.shape)}")
        self.rotation = None if rotation is None else rotation.detach().float().cpu()
        self.causal = is_causal(model)  # a decoder's positions come from the mask (left padding embeds alike)
        if tokenizer.pad_token is None:  # decoder LLMs: pad with EOS; pooling reads the attention mask
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def symmetric_prefix(self) -> str:
        """What goes before both texts of a symmetric comparison (STS): the prefix queries and documents share
        (a run trained with one instruction on both sides, E5's ``query: `` on both), else none."""
        return self.query_prefix if self.query_prefix == self.document_prefix else ""

    # ---- construction ----

    @classmethod
    def from_model(
        cls, model, tokenizer, pooling: str, normalize: bool, max_length: int, **options
    ) -> Embedder:
        """Wrap an in-memory model (left on its device and dtype; its train/eval mode is restored after
        each ``encode``). ``options``: query_prefix, document_prefix, show_progress, truncate_dim, rotation."""
        return cls(model, tokenizer, pooling=pooling, normalize=normalize, max_length=max_length, **options)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        *,
        show_progress: bool = True,
        truncate_dim: int | None = None,
        append_eos: bool | None = None,
        dtype: str | None = None,
        load_in_4bit: bool = False,
    ) -> Embedder:
        """Load ``model`` (see the module docstring for what it may be) in eval mode on ``device``
        (default: this process's, ``PartialState().device``) in ``dtype`` (float32, bfloat16, float16; default fp32
        on CPU, bf16 on GPU), with ``load_in_4bit`` as bitsandbytes nf4 with double quantization computing in that
        dtype (an adapter then stays unmerged on the 4-bit base, as in QLoRA training); ``truncate_dim``
        keeps the first dimensions (ConfigError when wider than the model's embeddings); ``append_eos`` (default:
        what the folder says, else ``lorasmith.pooling.wants_eos``) ends every text with the EOS token."""
        settings = _resolve_settings(str(model), prefer_adapter=load_in_4bit)
        overrides = {"pooling": pooling, "normalize": normalize, "max_length": max_length, "append_eos": append_eos}
        settings.update({key: value for key, value in overrides.items() if value is not None})
        device = torch.device(device) if device is not None else PartialState().device
        dtype = _torch_dtype(dtype) if dtype else torch.bfloat16 if device.type == "cuda" else torch.float32
        hf_model, tokenizer = _load_hf_model(settings, dtype, device if load_in_4bit else None)
        if not load_in_4bit:  # a quantized model is placed by its device_map
            hf_model.to(device)
        hf_model.eval()
        tokenizer.padding_side = "right"  # with default position ids, a padded text embeds as it does alone
        pooling = settings.get("pooling") or "mean"
        if wants_eos(settings.get("append_eos"), hf_model, pooling):
            tokenizer_inputs.append_eos(tokenizer)
        return cls(
            hf_model,
            tokenizer,
            pooling=pooling,
            normalize=True if settings.get("normalize") is None else settings["normalize"],
            max_length=settings.get("max_length") or readable_length(tokenizer, hf_model),
            query_prefix=settings.get("query_prefix") or "",
            document_prefix=settings.get("document_prefix") or "",
            show_progress=show_progress,
            truncate_dim=truncate_dim,
            rotation=settings.get("rotation"),
        )

    # ---- encoding ----

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dimension(self) -> int:
        """Width of the returned embeddings: ``truncate_dim``, else the model's hidden size."""
        return self.truncate_dim or self.model.get_input_embeddings().embedding_dim

    def tokenize(self, texts: Sequence[str]):
        """Tokenize exactly as ``encode`` does (truncation to ``max_length``, padding to the longest)."""
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    @torch.no_grad()
    def embed_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, D) fp32 CPU embeddings of one batch (``D`` = ``dimension``), no sorting or sharding."""
        batch = self.tokenize(texts)
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        positions = {"position_ids": tokenizer_inputs.positions_from_mask(attention_mask)} if self.causal else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **positions).last_hidden_state
        embeddings = pool(hidden, attention_mask, self.pooling).float()
        if self.rotation is not None:
            embeddings = embeddings @ self.rotation.to(embeddings.device)
        if self.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return truncate(embeddings, self.truncate_dim, self.normalize).cpu()

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        prefix: str = "",
        *,
        show_progress: bool | None = None,
        shard: bool | None = None,
    ) -> torch.Tensor:
        """Embed ``texts`` (each prefixed with ``prefix``) -> (N, D) fp32 CPU tensor in input order.

        Texts are sorted by decreasing length and cut into batches of ``batch_size`` (less padding). Under a
        distributed launch and unless ``shard`` is False, batch b runs on process ``b % num_processes`` (every
        process gets long and short batches) and the results are gathered (``split_and_gather``): every process
        returns the same tensor, equal to the one-process result because every batch is the very same batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = [prefix + text for text in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        state = PartialState()
        show = (self.show_progress if show_progress is None else show_progress) and state.is_main_process

        def embed(assigned: list[list[int]]) -> list[torch.Tensor]:
            progress = tqdm(assigned, desc="encode", unit="batch", disable=not show)
            return [self.embed_batch([texts[i] for i in batch]) for batch in progress]

        was_training = self.model.training
        self.model.eval()
        try:
            if shard is False or state.num_processes == 1:
                embedded = embed(batches)
            else:  # round-robin order: the contiguous shard of process p is batches[p::num_processes]
                batches = [
                    batch for p in range(state.num_processes) for batch in batches[p :: state.num_processes]
                ]
                embedded = split_and_gather(batches, embed)
        finally:
            self.model.train(was_training)
        embeddings = torch.empty(len(texts), self.dimension, dtype=torch.float32)
        if embedded:
            embeddings[torch.tensor([i for batch in batches for i in batch])] = torch.cat(embedded)
        return embeddings


def _resolve_settings(model: str, prefer_adapter: bool = False) -> dict:
    """Where the weights are and how to pool, from what ``model`` names (see module docstring); a lorasmith run
    with both loads ``merged/``, or with ``prefer_adapter`` (4-bit loading) its base and adapter, as QLoRA trained.

    Returns keys: path, adapter (or None), gguf_file (or None), pooling, normalize, max_length, append_eos,
    query_prefix, document_prefix (None = not stated by the source), rotation (absent or None: none).
    """
    settings = {"path": model, "adapter": None, "gguf_file": None}
    embedded = embedded_model_files(model)
    if embedded is not None:
        model, settings["gguf_file"] = str(embedded[0]), embedded[1]
        settings["path"] = model
    folder = Path(model)
    if not folder.is_dir():
        if model.startswith(("/", ".", "~")) or model.count("/") > 1:
            raise ConfigError(f"model folder not found: {model}")
        return settings  # a hub id ("org/name"): loaded by transformers (needs the hub or its cache)
    manifest = read_manifest(folder)
    if manifest is not None:
        return _settings_from_manifest(folder, manifest, prefer_adapter)
    try:
        st_config = read_sentence_transformers_config(folder)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if st_config is not None:
        settings["path"] = st_config.pop("transformer_path")
        settings.update(st_config)
    return settings


def _settings_from_manifest(folder: Path, manifest: dict, prefer_adapter: bool = False) -> dict:
    if manifest.get("kind") != "embedding":
        raise ConfigError(
            f"{folder} holds a {manifest.get('kind')} model, not an embedding model; evaluate it with "
            "python -m eval.classify"
        )
    embedding = manifest.get("embedding") or {}
    settings = {
        key: embedding.get(key)
        for key in ("pooling", "normalize", "max_length", "query_prefix", "document_prefix", "append_eos")
    }
    if embedding.get("rotation"):
        settings["rotation"] = read_rotation(folder / embedding["rotation"])
    has_adapter = bool(manifest.get("adapter")) and (folder / manifest["adapter"]).is_dir()
    if manifest.get("merged") and (folder / manifest["merged"]).is_dir() and not (prefer_adapter and has_adapter):
        settings.update(path=str(folder / manifest["merged"]), adapter=None, gguf_file=None)
    elif has_adapter:
        settings.update(
            path=manifest["base_model"],
            adapter=str(folder / manifest["adapter"]),
            gguf_file=manifest.get("gguf_file"),
        )
    else:
        raise ConfigError(
            f"{folder}/{MERGED_DIR} and the adapter folder named in lorasmith.json are both missing"
        )
    return settings


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if str(name) not in ("float32", "bfloat16", "float16") or not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be float32, bfloat16 or float16; got {name!r}")
    return dtype


def _load_hf_model(settings: dict, dtype: torch.dtype, quantize_on: torch.device | None = None):
    """(model, tokenizer): AutoModel (hidden states, no LM head) in ``dtype`` with the adapter merged in, or, with
    ``quantize_on`` (a device), quantized to 4-bit nf4 there with the adapter kept unmerged."""
    from transformers import AutoModel, AutoTokenizer, BitsAndBytesConfig

    gguf = {"gguf_file": settings["gguf_file"]} if settings.get("gguf_file") else {}
    if gguf and quantize_on is not None:
        raise ConfigError("a GGUF model is dequantized on load; load it without load_in_4bit")
    quantized = {} if quantize_on is None else {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        ),
        "device_map": {"": str(quantize_on)},
    }
    tokenizer_source = settings["adapter"] or settings["path"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **({} if settings["adapter"] else gguf))
        model = AutoModel.from_pretrained(settings["path"], dtype=dtype, **gguf, **quantized)
    except OSError as error:
        raise ConfigError(f"cannot load model {settings['path']}: {error}") from None
    if settings["adapter"]:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, settings["adapter"])
        model = model if quantized else model.merge_and_unload()
    return model, tokenizer
