"""Trained classifier folders behind one interface, whatever the training method.

    clf = load_classifier("outputs/seqcls_quickstart")     # kind from lorasmith.json
    clf.predict_proba([{"text": "It was good."}])           # (N, L)

- ``lorasmith.classifiers.base``: the ``Classifier`` protocol and the input-row check (a leaf).
- ``lorasmith.classifiers.sequence``: ``SequenceClassifier``, a sequence-classification head (``train.seq_classify``).
- ``lorasmith.classifiers.prompt``: ``PromptClassifier``, a causal LM scored by label likelihood (``train.sft_classify``).

``CLASSIFIER_TYPES`` maps each implementation's own ``KIND`` (the manifest's ``kind``) to its class; adding an
implementation is one entry there.
"""

from __future__ import annotations

from pathlib import Path

from lorasmith.classifiers import prompt, sequence
from lorasmith.classifiers.base import Classifier
from lorasmith.errors import ConfigError
from lorasmith.run_folder import MANIFEST_NAME, read_manifest

CLASSIFIER_TYPES = {
    sequence.KIND: sequence.SequenceClassifier,
    prompt.KIND: prompt.PromptClassifier,
}


def load_classifier(path: str | Path) -> Classifier:
    """The classifier saved in the lorasmith output folder ``path``, chosen by its manifest's ``kind``."""
    manifest = read_manifest(path)
    if manifest is None:
        raise ConfigError(f"{path} is not a lorasmith output folder (no {MANIFEST_NAME})")
    kind = manifest.get("kind")
    if kind not in CLASSIFIER_TYPES:
        raise ConfigError(
            f"{path} holds a model of kind {kind!r}; eval.classify evaluates "
            f"{' and '.join(CLASSIFIER_TYPES)} folders (embedding models: eval.probe)"
        )
    return CLASSIFIER_TYPES[kind].load(path)
