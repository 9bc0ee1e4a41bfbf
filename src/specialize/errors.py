"""The one error tree of specialize.

Every error a user can cause is a `SpecializeError` whose message says what went wrong, where (file and line,
config key, path) and how to fix it. The library raises these and never prints or exits; the CLI renders them as a
single `error: ...` line and exits non-zero, so a user mistake never shows a traceback.
"""

from __future__ import annotations


class SpecializeError(Exception):
    """Base of every error specialize raises on purpose."""

    exit_code = 1


class ConfigError(SpecializeError):
    """The run config (YAML file or `--set` override) is invalid."""

    exit_code = 2


class DataError(SpecializeError):
    """A data file is missing, unreadable or has invalid rows.

    Attributes:
        problems: every problem found, each already naming its file and line, so that all of them can be shown
            at once instead of one per attempt.
    """

    exit_code = 3

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class ModelNotFoundError(SpecializeError):
    """The base model is neither in the catalogue nor a model directory on disk."""

    exit_code = 4


class ResourceError(SpecializeError):
    """Not enough memory or disk for what was asked; the message gives needed versus available."""

    exit_code = 5


class TrainingError(SpecializeError):
    """Training cannot go on (NaN or diverging loss); the message says which setting to change."""

    exit_code = 6


class EvalError(SpecializeError):
    """Evaluation cannot be done as configured."""

    exit_code = 7


class NotFoundError(SpecializeError):
    """Something the user named (a run, an API key, a served request) does not exist."""

    exit_code = 8


class RunNotFoundError(NotFoundError):
    """A run id names no run in the registry."""


class ExportError(SpecializeError):
    """A finished run cannot be exported as asked (format, architecture, output folder)."""

    exit_code = 9


class RewardError(SpecializeError):
    """A reward could not score an answer: it raised, returned something other than a number, or its judge or
    model could not be reached; the message names the reward and the row."""

    exit_code = 10


class PromotionError(SpecializeError):
    """A run may not be moved behind an alias: the gate refused it, or there is nothing to roll back to."""

    exit_code = 11
