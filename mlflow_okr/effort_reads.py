"""Effort's reads: the run groups (runs, hours by `okr.krs` value, user and experiment) and each
metric KR's candidate improving runs, from a SQL store's tables or through `search_runs`.

This and `facts.py` are the lean readers that may use SQLAlchemy (Core expressions over MLflow's
own models, bound parameters, never SQL text); `effort.py` decides what the facts mean.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_okr import compat, state, vocabulary
from mlflow_okr.spec import Cycle, KeyResult


@dataclass(frozen=True)
class RunGroup:
    """Runs that share an `okr.krs` value, a user and an experiment: how many, how long in all."""

    krs: frozenset[str]
    user: str | None
    experiment_id: str
    runs: int
    duration_ms: float


@dataclass(frozen=True)
class CountedRun:
    run_id: str
    start_time: int
    value: float


@dataclass
class EffortFacts:
    """What effort is computed from: the run groups, and the counted runs of each metric KR that
    may have improved it (`candidates`, by run-tag id).

    For a KR whose value is an extreme of its runs (`best`, `min`, `max`) only a run that beat every
    earlier one can have raised it, so a SQL store returns just those; other aggregates move with
    every run, so every counted run is a candidate. `improving_runs` decides among them.
    """

    groups: list[RunGroup] = field(default_factory=list)
    candidates: dict[str, list[CountedRun]] = field(default_factory=dict)
    experiment_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricKr:
    """A metric KR whose improving runs are counted: its run-tag id, its definition and direction."""

    tag_id: str
    kr: KeyResult
    direction: str | None = None

    @property
    def extreme(self) -> str | None:
        """`max` or `min` when the KR's value is the highest or lowest of its runs, else None."""
        if self.kr.aggregate == "best" and self.direction is not None:
            return "max" if self.direction == "maximize" else "min"
        return self.kr.aggregate if self.kr.aggregate in ("max", "min") else None


def krs_of(text: str | None) -> frozenset[str]:
    return frozenset(name for name in (text or "").split(",") if name)


def _window(cycle: Cycle) -> tuple[int, int]:
    return cycle.start_ms, cycle.end_ms


def sql_facts(store: Any, cycle: Cycle, now_ms: int, metric_krs: list[MetricKr]) -> EffortFacts:
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLatestMetric, SqlRun, SqlTag
    from sqlalchemy import and_, bindparam, func, select

    start_ms, end_ms = _window(cycle)
    in_cycle = [
        SqlRun.lifecycle_stage == "active",
        SqlRun.start_time >= start_ms,
        SqlRun.start_time <= end_ms,
        SqlExperiment.lifecycle_stage == "active",
        ~SqlExperiment.name.startswith(vocabulary.OKR_EXPERIMENT_PREFIX, autoescape=True),
    ]
    workspace, column = compat.active_workspace(), compat.experiment_workspace_column()
    if workspace is not None and column is not None:
        in_cycle.append(column == workspace)
    # A running run has no end time yet: it counts up to now.
    duration = func.coalesce(SqlRun.end_time, bindparam("now_ms", now_ms)) - SqlRun.start_time
    krs_tag = and_(SqlTag.run_uuid == SqlRun.run_uuid, SqlTag.key == vocabulary.TAG_KRS)
    groups_query = (
        select(SqlTag.value, SqlRun.user_id, SqlRun.experiment_id, SqlExperiment.name,
               func.count(), func.sum(duration))
        .select_from(SqlRun)
        .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
        .outerjoin(SqlTag, krs_tag)
        .where(*in_cycle)
        .group_by(SqlTag.value, SqlRun.user_id, SqlRun.experiment_id, SqlExperiment.name)
    )
    facts = EffortFacts()
    with compat.sql_session(store) as session:
        for krs, user, experiment_id, name, runs, duration_ms in session.connection().execute(groups_query):
            group = RunGroup(krs_of(krs), user, str(experiment_id), runs, float(duration_ms or 0))
            facts.groups.append(group)
            facts.experiment_names[str(experiment_id)] = name
        for metric_kr in metric_krs:
            verdict = and_(
                SqlTag.run_uuid == SqlRun.run_uuid,
                SqlTag.key == vocabulary.source_tag(metric_kr.tag_id),
                SqlTag.value == vocabulary.COUNTED,
            )
            value = and_(
                SqlLatestMetric.run_uuid == SqlRun.run_uuid, SqlLatestMetric.key == metric_kr.kr.metric
            )
            columns = [SqlRun.run_uuid, SqlRun.start_time, SqlLatestMetric.value, SqlLatestMetric.is_nan]
            if metric_kr.extreme is not None:
                # The extreme of the runs that started before each one (start time, then run id).
                extreme = func.max if metric_kr.extreme == "max" else func.min
                earlier = extreme(SqlLatestMetric.value).over(
                    order_by=(SqlRun.start_time, SqlRun.run_uuid), rows=(None, -1)
                )
                columns.append(earlier.label("earlier"))
            query = (
                select(*columns)
                .select_from(SqlRun)
                .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
                .join(SqlTag, verdict)
                .join(SqlLatestMetric, value)
                .where(*in_cycle)
            )
            if metric_kr.extreme is not None:
                ranked = query.subquery()
                beats = ranked.c.value > ranked.c.earlier if metric_kr.extreme == "max" else (
                    ranked.c.value < ranked.c.earlier
                )
                query = select(ranked.c.run_uuid, ranked.c.start_time, ranked.c.value, ranked.c.is_nan).where(
                    ranked.c.earlier.is_(None) | beats
                )
            facts.candidates[metric_kr.tag_id] = [
                CountedRun(run_id, start_time or 0, float("nan") if is_nan else value)
                for run_id, start_time, value, is_nan in session.connection().execute(query)
            ]
    return facts


def search_facts(client: MlflowClient, cycle: Cycle, now_ms: int, metric_krs: list[MetricKr]) -> EffortFacts:
    experiments = state.source_experiments(client)
    facts = EffortFacts(experiment_names={e.experiment_id: e.name for e in experiments})
    start_ms, end_ms = _window(cycle)
    window = f"attributes.start_time >= {start_ms} AND attributes.start_time <= {end_ms}"
    totals: dict[tuple[frozenset[str], str | None, str], list[float]] = defaultdict(lambda: [0, 0.0])
    counted: dict[str, list[CountedRun]] = {metric_kr.tag_id: [] for metric_kr in metric_krs}
    for run in state.iter_runs(client, sorted(facts.experiment_names), window):
        info, tags = run.info, run.data.tags
        total = totals[(krs_of(tags.get(vocabulary.TAG_KRS)), info.user_id or None, info.experiment_id)]
        total[0] += 1
        total[1] += (info.end_time if info.end_time is not None else now_ms) - info.start_time
        for metric_kr in metric_krs:
            value = run.data.metrics.get(metric_kr.kr.metric)
            if tags.get(vocabulary.source_tag(metric_kr.tag_id)) == vocabulary.COUNTED and value is not None:
                counted[metric_kr.tag_id].append(CountedRun(info.run_id, info.start_time or 0, value))
    facts.groups = [
        RunGroup(krs, user, experiment_id, int(runs), duration)
        for (krs, user, experiment_id), (runs, duration) in totals.items()
    ]
    facts.candidates = counted
    return facts
