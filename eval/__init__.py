"""Evaluation CLIs (``python -m eval.<name>``) and their metrics (``eval.metrics``)."""

import lorasmith  # noqa: F401  (first: lorasmith.console silences library noise before peft is imported)
