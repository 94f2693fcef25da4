"""Leaf helpers every layer may import (``data_utils``, ``train``, ``eval``, ``bench``, tests).

``lorasmith.errors``: the user-error classes (exit code 2, no traceback).
``lorasmith.process``: process-level conventions shared by every CLI: the exit code of a user error and the
world-size check. Nothing here imports the project's other packages.
"""
