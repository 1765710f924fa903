"""The exceptions mlflow-okr raises. The CLI maps them to exit codes."""

from __future__ import annotations


class OkrError(Exception):
    """Base class of every error mlflow-okr raises on purpose."""


class SpecError(OkrError):
    """An okrs.yaml file is not valid; each problem names file, line and key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class InputError(OkrError):
    """A command got an argument it cannot use (unknown id, bad value).

    `parameter` names the function argument at fault (`expect`, `cycle`), so that the CLI can
    name its option; the message itself names no command-line flag.
    """

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


class NotPublishedError(InputError):
    """No cycle has been published to the MLflow backend with `mlflow-okr apply`."""


class CheckFailed(OkrError):
    """A check ran and found a problem (drift, a missed grade, a broken ledger)."""


class ConcurrentChange(OkrError):
    """Another writer changed the same record between this command's read and its write."""
