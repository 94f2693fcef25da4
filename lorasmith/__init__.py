"""Leaf helpers every layer may import (``data_utils``, ``train``, ``eval``, ``bench``, tests).

``lorasmith.errors``: the user-error classes (exit code 2, no traceback).
``lorasmith.process``: process-level conventions shared by every CLI: the exit code of a user error and the
world-size check.
``lorasmith.embedded_models``: the models shipped inside PyPI packages (``minilm``, ``smollm2``) by alias. Nothing here imports the project's other packages.
"""

from lorasmith.console import filter_library_logs

filter_library_logs()  # first: peft's import (anywhere below) logs bitsandbytes' optional-kernel warning
