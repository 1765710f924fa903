"""The result objects of effort and confidence, attached to the status objects in `results`.

Kept apart from `results` so that the modules computing them (`effort`, `confidence`) can read
statuses without an import cycle. The attached fields are left out of the JSON when not asked for,
so `status --format json` without `--effort` prints what it always printed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


def absent(value: Any) -> bool:
    return value is None


def optional_field(description: str) -> Any:
    """A field that is absent from the JSON while None (not computed), rather than null."""
    return Field(None, exclude_if=absent, description=description)


class Effort(BaseModel):
    """The work that went into a KR (or a group of KRs) this cycle.

    `runs`: runs counted for it; `people`: distinct MLflow users (`mlflow.user`) among them;
    `run_hours`: the sum of end minus start (a running run up to now); `improving_runs`: runs
    that raised its progress when they came in, in start order.
    """

    runs: int = 0
    people: int = 0
    run_hours: float = 0.0
    improving_runs: int = 0


class GroupEffort(Effort):
    """Effort of an owner's or a team's KRs: each run once, however many of the KRs it counts for."""

    id: str


class ExperimentEffort(BaseModel):
    experiment_id: str
    name: str
    runs: int
    run_hours: float


class Unaligned(BaseModel):
    """The cycle's runs that count for no KR (no `okr.krs` tag) and their share of all its runs."""

    runs: int
    run_hours: float
    runs_share: float
    hours_share: float
    top_experiments: list[ExperimentEffort]


class CycleEffort(BaseModel):
    """All the cycle's runs outside the okr/ experiments, and the effort by owner and team."""

    runs: int
    people: int
    run_hours: float
    owners: list[GroupEffort]
    teams: list[GroupEffort]


class Confidence(BaseModel):
    """The chance that a metric KR reaches its target by the cycle's end at its current pace.

    From a least-squares line through the KR's `okr.value` history this cycle: `slope` per day,
    the value the line projects for the cycle's last moment and its standard error, and
    `probability` = P(value at the end is at or past the target) under the line's Student-t
    prediction interval. None of these are given with fewer than `MIN_POINTS` points.
    """

    probability: float
    projected: float
    standard_error: float
    slope_per_day: float
    points: int
