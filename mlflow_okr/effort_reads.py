"""Effort's reads: the run groups (runs, hours by `okr.krs` value, user and experiment) and what
each metric KR's improving runs are decided from, from a SQL store's tables or through `search_runs`.

This and `facts.py` are the lean readers that may use SQLAlchemy (Core expressions over MLflow's
own models, bound parameters, never SQL text); `effort.py` decides what the facts mean.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mlflow.tracking import MlflowClient

from mlflow_okr import compat, state, vocabulary
from mlflow_okr.spec import Cycle, KeyResult

# A running mean or sum in SQL floats is within about runs x 1.1e-16 x its scale of the exact one:
# under half this margin (relative to the scale and the KR's bounds) up to about 4 x 10^7 runs.
RUNNING_MARGIN = 1e-8


@dataclass(frozen=True)
class RunGroup:
    """Runs that share an `okr.krs` value, a user and an experiment: how many, how long in all."""

    krs: frozenset[str]
    user: str | None
    experiment_id: str
    runs: int
    duration_ms: float


class CountedRun(NamedTuple):
    """A counted run of a KR: a tuple, since a `count` KR may have tens of thousands of them."""

    run_id: str
    start_time: int
    value: float


@dataclass(frozen=True)
class RunningRow:
    """A counted run of a `mean` or `sum` KR whose running aggregate (over the counted runs up to
    it, in start order, in SQL floats) comes within `margin` of beating every earlier one.

    `earlier`: the best running aggregate before it (None for the first run); `margin`: how far
    float error may have moved either; `nan`: whether a counted run up to it has a NaN value.
    """

    run_id: str
    start_time: int
    running: float
    earlier: float | None
    margin: float
    nan: bool


@dataclass
class EffortFacts:
    """What effort is computed from: the run groups, and per metric KR (by run-tag id) what its
    improving runs are decided from.

    - `candidates`: counted runs that may have raised the KR, in any order. A SQL store returns for
      a `best`, `min`, `max` or `latest` KR only the runs whose value beat every earlier one (only
      they can have raised it); `search_runs` returns every counted run.
    - `ranked`: for a `count` KR in a SQL store, the counted runs at the places in start order
      where one more run raises its progress (`MetricKr.steps`).
    - `running`: for a `mean` or `sum` KR in a SQL store, the runs whose running aggregate may
      have beaten every earlier one.
    """

    groups: list[RunGroup] = field(default_factory=list)
    candidates: dict[str, list[CountedRun]] = field(default_factory=dict)
    ranked: dict[str, list[CountedRun]] = field(default_factory=dict)
    running: dict[str, list[RunningRow]] = field(default_factory=dict)
    experiment_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricKr:
    """A metric KR whose improving runs are counted: its run-tag id, its definition, and from its
    status the direction, baseline and target; for a `count` KR, `steps`: the first and last place
    (1-based, start order) at which one more counted run raises its progress."""

    tag_id: str
    kr: KeyResult
    direction: str | None = None
    baseline: float | None = None
    target: float | None = None
    steps: tuple[int, int] | None = None

    @property
    def moves(self) -> bool:
        """Whether any run can move its progress (a baseline and a target apart)."""
        return self.baseline is not None and self.target is not None and self.baseline != self.target

    @property
    def rising(self) -> bool:
        """Whether progress rises with the value (the target above the baseline)."""
        return self.moves and self.target > self.baseline  # type: ignore[operator]

    @property
    def extreme(self) -> str | None:
        """`max` or `min` when only a run whose value beats every earlier one's can raise the KR:
        its value is the highest or lowest run's, or the latest run's; else None."""
        aggregate = self.kr.aggregate
        if aggregate == "best" and self.direction is not None:
            return "max" if self.direction == "maximize" else "min"
        if aggregate == "latest" and self.moves:
            return "max" if self.rising else "min"
        return aggregate if aggregate in ("max", "min") else None


def krs_of(text: str | None) -> frozenset[str]:
    return frozenset(name for name in (text or "").split(",") if name)


def _window(cycle: Cycle) -> tuple[int, int]:
    return cycle.start_ms, cycle.end_ms


class SqlReads:
    """The statements of one cycle's effort reads over MLflow's own models."""

    def __init__(self, cycle: Cycle, now_ms: int):
        from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun

        start_ms, end_ms = _window(cycle)
        self.now_ms = now_ms
        self.in_cycle = [
            SqlRun.lifecycle_stage == "active",
            SqlRun.start_time >= start_ms,
            SqlRun.start_time <= end_ms,
            SqlExperiment.lifecycle_stage == "active",
            ~SqlExperiment.name.startswith(vocabulary.OKR_EXPERIMENT_PREFIX, autoescape=True),
        ]
        workspace, column = compat.active_workspace(), compat.experiment_workspace_column()
        if workspace is not None and column is not None:
            self.in_cycle.append(column == workspace)

    def groups(self) -> Any:
        from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun, SqlTag
        from sqlalchemy import and_, bindparam, func, select

        # A running run has no end time yet: it counts up to now.
        duration = func.coalesce(SqlRun.end_time, bindparam("now_ms", self.now_ms)) - SqlRun.start_time
        krs_tag = and_(SqlTag.run_uuid == SqlRun.run_uuid, SqlTag.key == vocabulary.TAG_KRS)
        return (
            select(SqlTag.value, SqlRun.user_id, SqlRun.experiment_id, SqlExperiment.name,
                   func.count(), func.sum(duration))
            .select_from(SqlRun)
            .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
            .outerjoin(SqlTag, krs_tag)
            .where(*self.in_cycle)
            .group_by(SqlTag.value, SqlRun.user_id, SqlRun.experiment_id, SqlExperiment.name)
        )

    def counted(self, metric_kr: MetricKr, *columns: Any, valued: bool = True) -> Any:
        """`columns` of the KR's counted runs in the cycle, joined with their value of its metric
        unless not `valued` (a counted run has the metric, and MLflow never removes one)."""
        from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLatestMetric, SqlRun, SqlTag
        from sqlalchemy import and_, select

        verdict = and_(
            SqlTag.run_uuid == SqlRun.run_uuid,
            SqlTag.key == vocabulary.source_tag(metric_kr.tag_id),
            SqlTag.value == vocabulary.COUNTED,
        )
        value = and_(SqlLatestMetric.run_uuid == SqlRun.run_uuid, SqlLatestMetric.key == metric_kr.kr.metric)
        query = (
            select(*columns)
            .select_from(SqlRun)
            .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
            .join(SqlTag, verdict)
        )
        return (query.join(SqlLatestMetric, value) if valued else query).where(*self.in_cycle)

    def every_run(self, metric_kr: MetricKr) -> Any:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun

        return self.counted(
            metric_kr, SqlRun.run_uuid, SqlRun.start_time, SqlLatestMetric.value, SqlLatestMetric.is_nan
        )

    def record_runs(self, metric_kr: MetricKr) -> Any:
        """The runs whose value beats every earlier one's (start time, then run id), NaN aside for a
        `latest` KR: a NaN run has no progress and leaves the later ones' standing as it was."""
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun
        from sqlalchemy import func, select

        extreme = func.max if metric_kr.extreme == "max" else func.min
        earlier = extreme(SqlLatestMetric.value).over(
            order_by=(SqlRun.start_time, SqlRun.run_uuid), rows=(None, -1)
        )
        query = self.counted(
            metric_kr, SqlRun.run_uuid, SqlRun.start_time, SqlLatestMetric.value, SqlLatestMetric.is_nan,
            earlier.label("earlier"),
        )
        if metric_kr.kr.aggregate == "latest":
            query = query.where(SqlLatestMetric.is_nan.is_(False))
        ranked = query.subquery()
        beats = ranked.c.value > ranked.c.earlier if metric_kr.extreme == "max" else (
            ranked.c.value < ranked.c.earlier
        )
        return select(ranked.c.run_uuid, ranked.c.start_time, ranked.c.value, ranked.c.is_nan).where(
            ranked.c.earlier.is_(None) | beats
        )

    def runs_at(self, metric_kr: MetricKr, first: int, last: int) -> Any:
        """The counted runs at places `first`..`last` (1-based) in start order, run id breaking ties."""
        from mlflow.store.tracking.dbmodels.models import SqlRun

        return (
            self.counted(metric_kr, SqlRun.run_uuid, SqlRun.start_time, valued=False)
            .order_by(SqlRun.start_time, SqlRun.run_uuid)
            .offset(first - 1)
            .limit(last - first + 1)
        )

    def running_rows(self, metric_kr: MetricKr) -> Any:
        """Per counted run the running mean or sum up to it and the best one before it; only the
        runs whose running aggregate comes within the float margin of beating every earlier one."""
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun
        from sqlalchemy import bindparam, case, func, select

        value = SqlLatestMetric.value
        mean = metric_kr.kr.aggregate == "mean"

        def so_far(aggregate: Any) -> Any:  # over the counted runs up to this one, in start order
            return aggregate.over(order_by=(SqlRun.start_time, SqlRun.run_uuid), rows=(None, 0))

        running = so_far((func.avg if mean else func.sum)(value))
        # The float error of a running mean grows with the largest value so far, a sum's with the
        # sum of their sizes; neither shrinks, so each row's margin covers the earlier rows too.
        scale = so_far((func.max if mean else func.sum)(func.abs(value)))
        nans = so_far(func.sum(case((SqlLatestMetric.is_nan, 1), else_=0)))
        inner = self.counted(
            metric_kr, SqlRun.run_uuid, SqlRun.start_time, running.label("running"),
            scale.label("scale"), nans.label("nans"),
        ).subquery()
        best = func.max if metric_kr.rising else func.min
        earlier = best(inner.c.running).over(order_by=(inner.c.start_time, inner.c.run_uuid), rows=(None, -1))
        bounds = max(abs(metric_kr.baseline or 0.0), abs(metric_kr.target or 0.0))
        margin = (inner.c.scale + bindparam("bounds", bounds)) * bindparam("margin", RUNNING_MARGIN)
        rows = select(inner, earlier.label("earlier"), margin.label("margin")).subquery()
        near = rows.c.running > rows.c.earlier - rows.c.margin if metric_kr.rising else (
            rows.c.running < rows.c.earlier + rows.c.margin
        )
        return select(
            rows.c.run_uuid, rows.c.start_time, rows.c.running, rows.c.earlier, rows.c.margin, rows.c.nans
        ).where(rows.c.earlier.is_(None) | near)


def _counted_runs(rows: Any) -> list[CountedRun]:
    return [
        CountedRun(run_id, start_time or 0, float("nan") if is_nan else value)
        for run_id, start_time, value, is_nan in rows
    ]


def sql_facts(store: Any, cycle: Cycle, now_ms: int, metric_krs: list[MetricKr]) -> EffortFacts:
    reads = SqlReads(cycle, now_ms)
    # No run moves a KR without a baseline and a target apart: nothing to read for it.
    plans = [_plan(reads, metric_kr) for metric_kr in metric_krs if metric_kr.moves]
    with compat.sql_session(store) as session:
        connection = session.connection()
        group_rows = connection.execute(reads.groups()).all()
        kr_rows = [[] if plan[2] is None else connection.execute(plan[2]).all() for plan in plans]
    facts = EffortFacts()
    for krs, user, experiment_id, name, runs, duration_ms in group_rows:
        facts.groups.append(RunGroup(krs_of(krs), user, str(experiment_id), runs, float(duration_ms or 0)))
        facts.experiment_names[str(experiment_id)] = name
    for (metric_kr, kind, _), rows in zip(plans, kr_rows, strict=True):
        tag_id = metric_kr.tag_id
        if kind == "running":
            facts.running[tag_id] = [
                RunningRow(run_id, start or 0, running, earlier, margin, bool(nans))
                for run_id, start, running, earlier, margin, nans in rows
            ]
        elif kind == "ranked":
            # Each run's value: the count once it came in, its place.
            places = enumerate(rows, metric_kr.steps[0] if metric_kr.steps else 1)
            facts.ranked[tag_id] = [CountedRun(run, start or 0, float(at)) for at, (run, start) in places]
        else:
            facts.candidates[tag_id] = _counted_runs(rows)
    return facts


def _plan(reads: SqlReads, metric_kr: MetricKr) -> tuple[MetricKr, str, Any]:
    """What the KR's improving runs are decided from, the least that decides them: the kind of
    facts and the statement that reads them (None when there is nothing to read)."""
    aggregate = metric_kr.kr.aggregate
    if metric_kr.extreme is not None:
        return metric_kr, "candidates", reads.record_runs(metric_kr)
    if aggregate == "count" and metric_kr.steps is not None:
        first, last = metric_kr.steps
        return metric_kr, "ranked", reads.runs_at(metric_kr, first, last) if first <= last else None
    if aggregate in ("mean", "sum"):
        return metric_kr, "running", reads.running_rows(metric_kr)
    return metric_kr, "candidates", reads.every_run(metric_kr)


def sql_counted_runs(store: Any, cycle: Cycle, metric_kr: MetricKr) -> list[CountedRun]:
    """Every counted run of one metric KR in the cycle, with its value."""
    with compat.sql_session(store) as session:
        rows = session.connection().execute(SqlReads(cycle, 0).every_run(metric_kr)).all()
    return _counted_runs(rows)


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
