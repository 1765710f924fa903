"""Effort: who ran what, for how long, for which KR, and the runs that count for no KR.

MLflow knows each run's user (`mlflow.user`, the runs table's user_id), its start and end times
and, from mlflow-okr's `okr.krs` tag, the KRs it counts for. A cycle's runs are those that
started within it, in active experiments outside `okr/`, not deleted. A run's hours are its end
minus its start; a run still going counts up to now. With nested current cycles (2026 enclosing
2026-Q4) each cycle of the status gets its own figures over its own runs; a run counts as
unaligned in a cycle only when it counts for no KR at all.

Inside a SQL store the counts come from one aggregate (SQLAlchemy Core over MLflow's own models,
bound parameters only) grouped by `okr.krs` value, user and experiment; the groups are few, and
each KR, objective, owner or team adds up the groups that name one of its KRs, so a run that
counts for two KRs of an owner is counted once. The improving runs of a metric KR are narrowed
in SQL with window functions (SQLite >= 3.25, PostgreSQL, MySQL 8), one lean query per KR, so
that only the few runs that can have raised it leave the database:

- `best`, `min`, `max`, `latest`: the runs whose value beat every earlier one's (for `latest`,
  in the direction progress rises); the engine's tally then decides among them.
- `count`: progress depends on the count alone, so the places in start order where one more
  run raises it are known beforehand (`count_steps`); the query reads the runs at those places.
- `mean`, `sum`: the running aggregate in SQL floats and the best one before it; a run whose
  running value clears every earlier one, the baseline and the target by more than float error
  (`effort_reads.RUNNING_MARGIN`) is decided from the floats, and any closer call is left to the
  exact tally over every counted run, so the result is the engine's.

Elsewhere (`okr+http(s)`) one `search_runs` pass gives the same groups and every counted run, so
the server's auth decides what is read.

A run *improves* its KR when, taking the counted runs in start order (run id breaking ties), the
engine's tally of the runs so far has more progress with it than without it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable

from mlflow.tracking import MlflowClient

from mlflow_okr import compat, state
from mlflow_okr.effort_reads import (
    CountedRun,
    EffortFacts,
    MetricKr,
    RunGroup,
    RunningRow,
    search_facts,
    sql_counted_runs,
    sql_facts,
)
from mlflow_okr.engine import Tally, metric_progress
from mlflow_okr.practice_results import CycleEffort, Effort, ExperimentEffort, GroupEffort, Unaligned
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.spec import Cycle, KeyResult, as_utc

HOUR_MS = 3_600_000
TOP_EXPERIMENTS = 5
NO_OWNER = "(no owner)"
NO_TEAM = "(unnamed set)"
# Counts this far apart may round to one progress: their steps are not told from the count alone.
EXACT_STEPS = 2**52


def metric_krs_of(status: CycleStatus, sets: list[state.PublishedCycle]) -> list[MetricKr]:
    """The metric KRs of `status` whose improving runs are counted, with their run-tag ids."""
    found = []
    for kr_status in status.key_results():
        published = next((s for s in sets if s.spec.find_key_result(kr_status.id) is not None), None)
        if published is None or kr_status.kind != "metric":
            continue
        kr = published.spec.find_key_result(kr_status.id)
        steps = count_steps(kr_status.baseline, kr_status.target) if kr.aggregate == "count" else None
        found.append(MetricKr(
            published.spec.run_tag_id(kr.id), kr, kr_status.direction, kr_status.baseline, kr_status.target,
            steps,
        ))
    return found


def count_steps(baseline: float | None, target: float | None) -> tuple[int, int] | None:
    """The first and last place (1-based, start order) at which one more counted run raises a
    `count` KR's progress ((1, 0): none); None when the count alone cannot tell."""

    def progress(count: int) -> float:
        return metric_progress(float(count), baseline, target)

    if baseline is None or target is None or baseline == target:
        return (1, 0)
    if target < baseline:  # progress falls as runs come in: only the first can raise it
        return (1, 1) if progress(1) > 0 else (1, 0)
    if target - baseline >= EXACT_STEPS or target >= EXACT_STEPS:
        return None
    # Progress rises by 1 / (target - baseline) a run from the first count above the baseline
    # until it reaches 1.
    first = max(1, math.floor(baseline) + 1)
    last = max(first, math.ceil(target))
    while last > first and progress(last - 1) >= 1:
        last -= 1
    while progress(last) < 1:
        last += 1
    return (first, last)


def read_effort_facts(
    client: MlflowClient, cycle: Cycle, now: dt.datetime, metric_krs: list[MetricKr]
) -> EffortFacts:
    """The cycle's run groups and metric KRs' counted runs, with the cheapest reader for the store."""
    now_ms = int(as_utc(now).timestamp() * 1000)
    store = compat.store_of(client)
    if compat.is_sql_store(store):
        return sql_facts(store, cycle, now_ms, metric_krs)
    return search_facts(client, cycle, now_ms, metric_krs)


# ---------------------------------------------------------------------------------------------
# Adding up


def improving_runs(
    kr: KeyResult, status: KeyResultStatus | MetricKr, runs: Iterable[CountedRun]
) -> list[str]:
    """The counted runs that raised the KR's progress when they came in (start order, then id);
    `status` gives the direction, baseline and target."""
    tally = Tally(kr.rule(), status.direction)
    progress, improving = 0.0, []
    for run in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        tally.add(run.run_id, run.value, run.start_time)
        now_progress = metric_progress(tally.current()[0], status.baseline, status.target)
        if now_progress > progress:
            improving.append(run.run_id)
        progress = max(progress, now_progress)
    return improving


def improving_running(item: MetricKr, rows: list[RunningRow]) -> list[CountedRun] | None:
    """The improving runs of a `mean` or `sum` KR from its running aggregate in floats; None when a
    value comes within float error of an earlier one, the baseline or the target (or is not a
    number), where only the exact tally can tell."""
    progress, improving = 0.0, []
    for row in sorted(rows, key=lambda r: (r.start_time, r.run_id)):
        if row.nan or not (math.isfinite(row.running) and math.isfinite(row.margin)):
            return None
        if any(
            bound is not None and abs(row.running - bound) <= row.margin
            for bound in (row.earlier, item.baseline, item.target)
        ):
            return None
        now_progress = metric_progress(row.running, item.baseline, item.target)
        if now_progress > progress:
            improving.append(CountedRun(row.run_id, row.start_time, row.running))
        progress = max(progress, now_progress)
    return improving


def improving_by_kr(
    client: MlflowClient, cycle: Cycle, facts: EffortFacts, metric_krs: list[MetricKr]
) -> dict[str, list[CountedRun]]:
    """Each metric KR's improving runs (by run-tag id), in start order."""
    found: dict[str, list[CountedRun]] = {}
    for item in metric_krs:
        tag_id = item.tag_id
        if tag_id in facts.ranked:
            found[tag_id] = facts.ranked[tag_id]
        elif tag_id in facts.running:
            decided = improving_running(item, facts.running[tag_id])
            if decided is None:  # too close to call in floats: the exact tally over every counted run
                decided = _improving(item, sql_counted_runs(compat.store_of(client), cycle, item))
            found[tag_id] = decided
        else:
            found[tag_id] = _improving(item, facts.candidates.get(tag_id, []))
    return found


def _improving(item: MetricKr, runs: list[CountedRun]) -> list[CountedRun]:
    by_id = {run.run_id: run for run in runs}
    return [by_id[run_id] for run_id in improving_runs(item.kr, item, runs)]


def _effort(groups: list[RunGroup], improving: set[str]) -> Effort:
    return Effort(
        runs=sum(group.runs for group in groups),
        people=len({group.user for group in groups if group.user}),
        run_hours=sum(group.duration_ms for group in groups) / HOUR_MS,
        improving_runs=len(improving),
    )


class EffortCounter:
    """Effort of any set of KRs (by run-tag id), from the cycle's facts."""

    def __init__(self, facts: EffortFacts, improving: dict[str, list[str]]):
        self.facts = facts
        self.improving = improving

    def of(self, tag_ids: set[str]) -> Effort:
        groups = [group for group in self.facts.groups if group.krs & tag_ids]
        improving = {run_id for tag_id in tag_ids for run_id in self.improving.get(tag_id, [])}
        return _effort(groups, improving)

    def cycle(self, owners: dict[str, set[str]], teams: dict[str, set[str]]) -> CycleEffort:
        every = _effort(self.facts.groups, set())
        return CycleEffort(
            runs=every.runs,
            people=every.people,
            run_hours=every.run_hours,
            owners=self._groups(owners),
            teams=self._groups(teams),
        )

    def _groups(self, kr_ids: dict[str, set[str]]) -> list[GroupEffort]:
        return [GroupEffort(id=name, **self.of(ids).model_dump()) for name, ids in sorted(kr_ids.items())]

    def unaligned(self) -> Unaligned:
        every = _effort(self.facts.groups, set())
        loose = [group for group in self.facts.groups if not group.krs]
        alone = _effort(loose, set())
        by_experiment: dict[str, list[RunGroup]] = defaultdict(list)
        for group in loose:
            by_experiment[group.experiment_id].append(group)
        top = sorted(
            (
                ExperimentEffort(
                    experiment_id=experiment_id,
                    name=self.facts.experiment_names.get(experiment_id, experiment_id),
                    runs=sum(g.runs for g in groups),
                    run_hours=sum(g.duration_ms for g in groups) / HOUR_MS,
                )
                for experiment_id, groups in by_experiment.items()
            ),
            key=lambda e: (-e.run_hours, -e.runs, e.name),
        )[:TOP_EXPERIMENTS]
        return Unaligned(
            runs=alone.runs,
            run_hours=alone.run_hours,
            runs_share=alone.runs / every.runs if every.runs else 0.0,
            hours_share=alone.run_hours / every.run_hours if every.run_hours else 0.0,
            top_experiments=top,
        )


def with_effort(
    client: MlflowClient, status: CycleStatus, now: dt.datetime | None = None
) -> CycleStatus:
    """`status` with effort per KR and objective, by owner and team, and the unaligned runs: of its
    cycle and of each enclosing cycle in `enclosing_cycles`, each over the runs started in it."""
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    first, *enclosing = [cycle_effort(client, shown, now) for shown in [status, *status.enclosing_cycles]]
    return first.model_copy(update={"enclosing_cycles": enclosing})


def cycle_effort(client: MlflowClient, status: CycleStatus, now: dt.datetime) -> CycleStatus:
    """One cycle's `status` (its enclosing cycles aside) with its effort figures."""
    sets = state.current_sets(client, status.cycle.name)
    tag_ids = {kr.id: s.spec.run_tag_id(kr.id) for s in sets for _, kr in s.spec.key_results()}
    metric_krs = metric_krs_of(status, sets)
    facts = read_effort_facts(client, sets[0].cycle, now, metric_krs)
    improving = {
        tag_id: [run.run_id for run in runs]
        for tag_id, runs in improving_by_kr(client, sets[0].cycle, facts, metric_krs).items()
    }
    counter = EffortCounter(facts, improving)
    owners: dict[str, set[str]] = defaultdict(set)
    teams: dict[str, set[str]] = defaultdict(set)
    objectives = []
    for objective in status.objectives:
        ids = {tag_ids[kr.id] for kr in objective.key_results if kr.id in tag_ids}
        owners[objective.owner or NO_OWNER] |= ids
        teams[objective.team or NO_TEAM] |= ids
        krs = [
            kr.model_copy(update={"effort": counter.of({tag_ids[kr.id]} if kr.id in tag_ids else set())})
            for kr in objective.key_results
        ]
        objectives.append(objective.model_copy(update={"key_results": krs, "effort": counter.of(ids)}))
    if not any(objective.team for objective in status.objectives):
        teams.clear()  # one unnamed set: no teams to compare
    return status.model_copy(
        update={
            "objectives": objectives,
            "effort": counter.cycle(dict(owners), dict(teams)),
            "unaligned": counter.unaligned(),
        }
    )
