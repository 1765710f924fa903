"""The status objects every command returns (DESIGN section 5), built from scored KRs.

Numbers here are the engine's floats, unrounded: JSON, CSV and the Python API must equal the
scoring to the last bit (a 3e-7 error rate is not 0, a progress of 0.99996 is not 1). Only the
renderers for people (tables, Markdown, HTML) round.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from mlflow_okr import traces
from mlflow_okr.alignment import ObjectiveKey
from mlflow_okr.engine import Scored, has_data, status_of, weighted_mean
from mlflow_okr.practice_results import Confidence, CycleEffort, Effort, Unaligned, optional_field
from mlflow_okr.registry import ModelStatus
from mlflow_okr.spec import Bounds, KeyResult, OkrSpec
from mlflow_okr.vocabulary import KrStatus


class CycleInfo(BaseModel):
    name: str
    start: dt.date
    end: dt.date
    elapsed: float


class KeyResultStatus(BaseModel):
    """One KR's state: the DESIGN section 5 fields plus a few details for people."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str | None = None
    kind: Literal["metric", "maintain", "ledger", "manual", "traces"]
    metric: str | None = None
    unit: str | None = None
    baseline: float | None = None
    target: float | None = None
    direction: Literal["maximize", "minimize"] | None = None
    current: float | None = None
    progress: float
    status: KrStatus
    counted_runs: int
    best_run_id: str | None = None
    weight: float = 1.0
    pending_runs: int = 0
    excluded_runs: int = 0
    guardrail_breaches: int = 0
    run_id: str | None = None
    notes: list[str] = []
    confidence: Confidence | None = optional_field("Chance of reaching the target by the cycle's end.")
    effort: Effort | None = optional_field("Runs, people, run-hours and improving runs (status --effort).")
    model: ModelStatus | None = optional_field("A `model:` KR: the version its alias names, its promotions.")
    maintain: Bounds | None = optional_field("A maintain KR (of runs or of traces): the bound it holds.")


class ObjectiveStatus(BaseModel):
    id: str
    title: str
    category: str
    owner: str | None = None
    team: str | None = None
    score: float
    # The objective's own KRs' weighted mean; `score` also counts its aligned children.
    own_score: float | None = None
    aligned_to: list[str] = []
    aligned_children: list[str] = []
    key_results: list[KeyResultStatus]
    effort: Effort | None = optional_field("Its KRs' effort, each run once (status --effort).")


class CycleStatus(BaseModel):
    """The whole cycle: `mlflow-okr status --format json` prints exactly this.

    With several current cycles (annual, half, quarter) the innermost is this object and the
    others follow in `enclosing_cycles`, innermost first.
    """

    cycle: CycleInfo
    score: float
    objectives: list[ObjectiveStatus]
    teams: list[str | None] = []
    enclosing_cycles: list[CycleStatus] = []
    effort: CycleEffort | None = optional_field("All the cycle's runs, by owner and team (status --effort).")
    unaligned: Unaligned | None = optional_field("The cycle's runs that count for no KR (status --effort).")

    def key_results(self) -> list[KeyResultStatus]:
        return [kr for objective in self.objectives for kr in objective.key_results]

    def find(self, kr_id: str) -> KeyResultStatus | None:
        return next((kr for kr in self.key_results() if kr.id == kr_id), None)

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kr in self.key_results():
            counts[kr.status] = counts.get(kr.status, 0) + 1
        return counts


def alignment_rows(status: CycleStatus) -> list[tuple[int, str, float | None]]:
    """The alignment tree as (depth, objective reference, score) rows: each objective others
    align to, its children below it one level deeper. Empty when nothing aligns."""
    scores: dict[str, float] = {}
    children: dict[str, list[str]] = {}
    for cycle in [status, *status.enclosing_cycles]:
        for objective in cycle.objectives:
            ref = ObjectiveKey(cycle.cycle.name, objective.team, objective.id).ref
            scores[ref] = objective.score
            if objective.aligned_children:
                children[ref] = objective.aligned_children
            for parent in objective.aligned_to:
                children.setdefault(parent, [])
                if ref not in children[parent]:
                    children[parent].append(ref)
    has_parent = {child for kids in children.values() for child in kids}
    rows: list[tuple[int, str, float | None]] = []

    def walk(ref: str, depth: int, seen: frozenset[str]) -> None:
        rows.append((depth, ref, scores.get(ref)))
        for child in children.get(ref, []):
            if child not in seen:
                walk(child, depth + 1, seen | {child})

    for root in sorted(ref for ref in children if ref not in has_parent):
        walk(root, 0, frozenset({root}))
    return rows


def kr_identity(kr: KeyResult) -> dict[str, Any]:
    """The fields of a KeyResultStatus that come from the KR's definition."""
    # A trace KR's `metric` says what MLflow aggregates: `p99 latency`, `avg csat`.
    metric = traces.label(kr) if kr.source == "traces" else kr.metric
    return {
        "id": kr.id, "title": kr.title, "kind": kr.kind, "metric": metric, "unit": kr.unit,
        "maintain": kr.maintain,
    }


def kr_status(
    kr: KeyResult,
    scored: Scored,
    run_id: str | None = None,
    pending_runs: int = 0,
    excluded_runs: int = 0,
    guardrail_breaches: int = 0,
) -> KeyResultStatus:
    return KeyResultStatus(
        **kr_identity(kr),
        baseline=scored.baseline,
        target=scored.target,
        direction=scored.direction,
        current=scored.current,
        progress=scored.progress,
        status=scored.status,
        counted_runs=scored.counted_runs,
        best_run_id=scored.best_run_id,
        weight=kr.weight,
        pending_runs=pending_runs,
        excluded_runs=excluded_runs,
        guardrail_breaches=guardrail_breaches,
        run_id=run_id,
        notes=list(scored.notes),
    )


def cycle_status(
    spec: OkrSpec, key_results: dict[str, KeyResultStatus], now: dt.datetime
) -> CycleStatus:
    """Assemble objective and cycle scores (weighted means) from per-KR statuses."""
    objectives = []
    for objective in spec.objectives:
        krs = [key_results[kr.id] for kr in objective.key_results if kr.id in key_results]
        score = weighted_mean((kr.progress, kr.weight) for kr in krs)
        objectives.append(
            ObjectiveStatus(
                id=objective.id,
                title=objective.title,
                category=objective.category,
                owner=objective.owner,
                team=spec.team,
                score=score,
                own_score=score,
                key_results=krs,
            )
        )
    cycle_score = weighted_mean((objective.score, 1.0) for objective in objectives)
    return CycleStatus(
        cycle=CycleInfo(
            name=spec.cycle.name,
            start=spec.cycle.start,
            end=spec.cycle.end,
            elapsed=spec.cycle.elapsed(now),
        ),
        score=cycle_score,
        objectives=objectives,
        teams=[spec.team],
    )


def restatus(status: KeyResultStatus, spec: OkrSpec, now: dt.datetime) -> KeyResultStatus:
    """The same KR with its status recomputed for `now` (status depends on elapsed time)."""
    thresholds = spec.status_thresholds
    new_status = status_of(
        status.progress,
        has_data(status.counted_runs, status.kind == "metric", status.baseline),
        spec.cycle.elapsed(now),
        spec.cycle.is_over(now),
        thresholds.on_track,
        thresholds.at_risk,
    )
    return status.model_copy(update={"status": new_status})


STATUS_COLUMNS = [
    "objective", "kr", "kind", "metric", "baseline", "target", "direction", "current",
    "progress", "status", "counted_runs", "best_run_id", "objective_score", "cycle", "team",
]


def status_frame(status: CycleStatus) -> pd.DataFrame:
    """One row per KR, with its objective and score: for notebooks and CSV."""
    rows = []
    for cycle in [status, *status.enclosing_cycles]:
        for objective in cycle.objectives:
            rows += [_status_row(cycle, objective, kr) for kr in objective.key_results]
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def _status_row(cycle: CycleStatus, objective: ObjectiveStatus, kr: KeyResultStatus) -> dict[str, Any]:
    return {
        "objective": objective.id,
        "kr": kr.id,
        "kind": kr.kind,
        "metric": kr.metric,
        "baseline": kr.baseline,
        "target": kr.target,
        "direction": kr.direction,
        "current": kr.current,
        "progress": kr.progress,
        "status": kr.status,
        "counted_runs": kr.counted_runs,
        "best_run_id": kr.best_run_id,
        "objective_score": objective.score,
        "cycle": cycle.cycle.name,
        "team": objective.team,
    }
