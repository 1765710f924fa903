"""The ledger's records: hypotheses, their events and evidence, and evaluations of them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlflow_okr.engine import relative_change
from mlflow_okr.errors import InputError
from mlflow_okr.ledger.guardrails import GuardrailResult
from mlflow_okr.multiplicity import cycle_moment

Status = Literal["proposed", "testing", "validated", "invalidated", "inconclusive"]
Verdict = Literal["validated", "invalidated", "inconclusive"]
Arm = Literal["control", "treatment"]
Action = Literal["add", "link", "evaluate", "resolve"]

STATUSES: tuple[str, ...] = ("proposed", "testing", "validated", "invalidated", "inconclusive")
VERDICTS: tuple[str, ...] = ("validated", "invalidated", "inconclusive")
ARMS: tuple[str, ...] = ("control", "treatment")
OPEN_STATUSES = ("proposed", "testing")

SUMMARY_COLUMNS = (
    "id", "status", "statement", "kr", "objective", "metric", "expect", "owner", "control_runs",
    "treatment_runs", "suggested_verdict", "p_value", "q_value", "resolved_at", "learning", "events",
)


class Event(BaseModel):
    """One change to a hypothesis: who, when, what; chained to the previous event by its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1]
    hypothesis: str
    seq: int = Field(ge=1)
    who: str
    when: int
    action: Action
    changes: dict[str, Any]
    prev: str
    hash: str

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Evidence(BaseModel):
    """A run linked to a hypothesis as control or treatment."""

    run_id: str
    arm: Arm
    experiment_id: str
    auto: bool = False


class ArmSummary(BaseModel):
    n: int
    mean: float | None = None


class Evaluation(BaseModel):
    """The comparison of a hypothesis's arms on its metric; `ledger evaluate --format json` prints it."""

    hypothesis: str
    metric: str | None
    comparison: Literal["welch", "one-sample", "paired", "none"]
    control: ArmSummary
    treatment: ArmSummary
    effect: float | None = None
    relative_effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    p_value: float | None = None
    expected_effect: float | None = None
    pair_by: str | None = None
    pairs: int | None = None
    unpaired_runs: list[str] = []
    looks: int = 1
    sequential_method: str | None = None
    sequential_p_value: float | None = None
    sequential_ci_low: float | None = None
    sequential_ci_high: float | None = None
    verdict_basis: Literal["fixed", "sequential"] = "fixed"
    guardrails: list[GuardrailResult] = []
    suggested_verdict: Verdict
    reason: str

    @property
    def verdict_p_value(self) -> float | None:
        """The p-value the suggested verdict rests on: the sequential one from the second look on."""
        return self.sequential_p_value if self.verdict_basis == "sequential" else self.p_value


class Expectation(BaseModel):
    """The effect a hypothesis expects: relative to the control mean ("+2%") or absolute (0.02)."""

    text: str
    relative: bool
    value: float

    def absolute(self, reference: float | None) -> float | None:
        """The expected change in metric units; None when relative to an unknown or zero reference."""
        if not self.relative:
            return self.value
        if reference is None or reference == 0:
            return None
        return self.value * abs(reference)


def parse_expectation(text: str | float | None) -> Expectation | None:
    """`+2%`, `-1.5%` (relative) or `0.02`, `-3` (absolute); InputError for anything else."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    raw = str(text).strip()
    change = relative_change(raw)
    if change is not None:
        value = change
        relative = True
    else:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        relative = False
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(
                f"bad expected effect {raw!r}: give a relative change such as +2% or -1.5%, "
                "or an absolute change in metric units such as 0.02 or -3",
                parameter="expect",
            )
    if value == 0:
        raise InputError(f"bad expected effect {raw!r}: it must not be zero", parameter="expect")
    return Expectation(text=raw, relative=relative, value=value)


class Hypothesis(BaseModel):
    """A hypothesis as its events leave it: the ledger's state is a replay of the events."""

    id: str
    statement: str
    status: Status = "proposed"
    owner: str | None = None
    kr: str | None = None
    objective: str | None = None
    metric: str | None = None
    expect: str | None = None
    pair_by: str | None = None
    guardrails: list[str] = []
    tags: dict[str, str] = {}
    created_at: int
    created_by: str
    evidence: list[Evidence] = []
    evaluation: dict[str, Any] | None = None
    evaluated_at: int | None = None
    resolved_at: int | None = None
    resolved_by: str | None = None
    learning: str | None = None
    events: list[Event] = []
    run_id: str | None = None
    experiment_id: str | None = None
    # Not from the events: the Benjamini-Hochberg q-value across its cycle, when listed with one.
    q_value: float | None = None

    @property
    def verdict_p_value(self) -> float | None:
        """The p-value the last recorded evaluation's suggested verdict rests on."""
        evaluation = self.evaluation or {}
        key = "sequential_p_value" if evaluation.get("verdict_basis") == "sequential" else "p_value"
        value = evaluation.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def cycle_moment(self) -> int:
        """When it counts for a cycle (see `multiplicity.cycle_moment`)."""
        return cycle_moment(self.resolved_at, self.evaluated_at, self.created_at)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def head(self) -> str:
        return self.events[-1].hash if self.events else ""

    def arm_runs(self, arm: str) -> list[str]:
        return [item.run_id for item in self.evidence if item.arm == arm]

    def identity(self) -> dict[str, Any]:
        """What it is, what it is about and how many runs back it: the start of every flat row."""
        return {
            "id": self.id,
            "status": self.status,
            "statement": self.statement,
            "kr": self.kr,
            "objective": self.objective,
            "metric": self.metric,
            "expect": self.expect,
            "owner": self.owner,
            "control_runs": len(self.arm_runs("control")),
            "treatment_runs": len(self.arm_runs("treatment")),
        }

    def summary(self) -> dict[str, Any]:
        """One flat row for tables, CSV and JSON lists (the SUMMARY_COLUMNS)."""
        return {
            **self.identity(),
            "suggested_verdict": (self.evaluation or {}).get("suggested_verdict"),
            "p_value": self.verdict_p_value,
            "q_value": self.q_value,
            "resolved_at": self.resolved_at,
            "learning": self.learning,
            "events": len(self.events),
        }


def replay(events: list[Event]) -> Hypothesis:
    """Fold a hypothesis's events, oldest first, into its current state."""
    first = events[0]
    added = first.changes
    hypothesis = Hypothesis(
        id=first.hypothesis,
        statement=added.get("statement", ""),
        owner=added.get("owner"),
        kr=added.get("kr"),
        objective=added.get("objective"),
        metric=added.get("metric"),
        expect=added.get("expect"),
        pair_by=added.get("pair_by"),
        guardrails=list(added.get("guardrails") or []),
        tags=dict(added.get("tags") or {}),
        created_at=first.when,
        created_by=first.who,
    )
    for event in events[1:]:
        apply_event(hypothesis, event)
    hypothesis.events = list(events)
    return hypothesis


def apply_event(hypothesis: Hypothesis, event: Event) -> None:
    """Change `hypothesis` as `event` says (events after the first `add`)."""
    changes = event.changes
    if event.action == "link":
        known = {item.run_id for item in hypothesis.evidence}
        for item in changes.get("runs", []):
            if item["run_id"] not in known:
                hypothesis.evidence.append(Evidence(**item, auto=bool(changes.get("auto", False))))
                known.add(item["run_id"])
        if hypothesis.status == "proposed":
            hypothesis.status = "testing"
    elif event.action == "evaluate":
        hypothesis.evaluation = dict(changes)
        hypothesis.evaluated_at = event.when
    elif event.action == "resolve":
        hypothesis.status = changes["status"]
        hypothesis.resolved_at = int(changes.get("resolved_at", event.when))
        hypothesis.resolved_by = event.who
        hypothesis.learning = changes.get("note")
