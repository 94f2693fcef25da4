"""User-facing errors raised at the boundary (data files, recipes, CLI flags).

A leaf: every layer (``data_utils``, ``train``, ``eval``) imports these without loading data or models.

Entrypoints catch these, print ``str(error)`` as one short paragraph without a traceback and
exit with code 2 (see ``lorasmith.process.run_main``). Messages are for people: they name the
file, the 1-based row as a spreadsheet user counts it (the header is not a row), the column and
what was expected, and list the columns that do exist when one is missing.
"""

from __future__ import annotations

from collections.abc import Iterable


class LorasmithError(ValueError):
    """Base class of every error that is the user's input, not a bug in lorasmith. ``exit_code``: the
    process's exit status when it ends a command (``lorasmith.process.run_main``)."""

    exit_code = 2


class ConfigError(LorasmithError):
    """A recipe or a command-line flag is invalid (unknown key, bad combination, bad value)."""


class OutputError(LorasmithError):
    """An output could not be written (disk full, permissions) — nothing half-written was published."""


class NothingLearned(LorasmithError):
    """Training ran to its end but cannot have learned anything (no optimizer step, an adapter still all
    zero): its outputs are kept for inspection and the run is not marked complete. Exit code 3."""

    exit_code = 3


class TrainingDiverged(LorasmithError):
    """Training diverged (a step's loss was inf / NaN, or its weights exploded, on some process): the run stopped
    before saving that step, kept the checkpoints already written and exported nothing. Exit code 4."""

    exit_code = 4


class DataError(LorasmithError):
    """A data source cannot be read or does not match the task's schema.

    Args:
        problem: what is wrong, in words ("score is not a number: 'abc'").
        source: the file, folder, glob or dataset id that was read.
        row: 1-based data row (the header is not counted), when the problem is in one row.
        column: the column involved, if any.
        expected: what would have been accepted ("a number between 0 and 5").
        available: the columns that do exist, listed when a column is missing.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        row: int | None = None,
        column: str | None = None,
        expected: str | None = None,
        available: Iterable[str] | None = None,
    ):
        self.problem = problem
        self.source = source
        self.row = row
        self.column = column
        self.expected = expected
        self.available = list(available) if available is not None else None
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.source is not None:
            where.append(f"{self.source}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        message = (", ".join(where) + ": " if where else "") + self.problem
        if self.expected:
            message += f" (expected {self.expected})"
        if self.available is not None:
            message += f". Columns present: {', '.join(self.available) or '(none)'}"
        return message
