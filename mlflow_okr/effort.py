"""Effort: who ran what, for how long, for which KR, and the runs that count for no KR.

MLflow knows each run's user (`mlflow.user`, the runs table's user_id), its start and end times
and, from mlflow-okr's `okr.krs` tag, the KRs it counts for. A cycle's runs are those that
started within it, in active experiments outside `okr/`, not deleted. A run's hours are its end
minus its start; a run still going counts up to now.

Inside a SQL store the counts come from one aggregate (SQLAlchemy Core over MLflow's own models,
bound parameters only) grouped by `okr.krs` value, user and experiment; the groups are few, and
each KR, objective, owner or team adds up the groups that name one of its KRs, so a run that
counts for two KRs of an owner is counted once. The improving runs of a metric KR are read with
one lean query per KR (its counted runs' start time and value); for a `best`, `min` or `max` KR a
window function keeps only the runs that beat every earlier one, the only ones that can have
raised it (SQLite >= 3.25, PostgreSQL, MySQL 8). Elsewhere (`okr+http(s)`) one `search_runs` pass
gives the same groups and every counted run, so the server's auth decides what is read.

A run *improves* its KR when, taking the counted runs in start order (run id breaking ties), the
engine's tally of the runs so far has more progress with it than without it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable

from mlflow.tracking import MlflowClient

from mlflow_okr import compat, state
from mlflow_okr.effort_reads import CountedRun, EffortFacts, MetricKr, RunGroup, search_facts, sql_facts
from mlflow_okr.engine import Tally, metric_progress
from mlflow_okr.practice_results import CycleEffort, Effort, ExperimentEffort, GroupEffort, Unaligned
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.spec import Cycle, KeyResult, as_utc

HOUR_MS = 3_600_000
TOP_EXPERIMENTS = 5
NO_OWNER = "(no owner)"
NO_TEAM = "(unnamed set)"




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


def improving_runs(kr: KeyResult, status: KeyResultStatus, runs: Iterable[CountedRun]) -> list[str]:
    """The counted runs that raised the KR's progress when they came in (start order, then id)."""
    tally = Tally(kr.rule(), status.direction)
    progress, improving = 0.0, []
    for run in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        tally.add(run.run_id, run.value, run.start_time)
        now_progress = metric_progress(tally.current()[0], status.baseline, status.target)
        if now_progress > progress:
            improving.append(run.run_id)
        progress = max(progress, now_progress)
    return improving


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
    """`status` with effort per KR and objective, by owner and team, and the unaligned runs of its
    (innermost) cycle."""
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    sets = state.current_sets(client, status.cycle.name)
    spec_of = {kr.id: published.spec for published in sets for _, kr in published.spec.key_results()}
    tag_ids = {kr_id: spec.run_tag_id(kr_id) for kr_id, spec in spec_of.items()}
    metric_krs = [
        MetricKr(tag_ids[kr.id], spec_of[kr.id].find_key_result(kr.id), kr.direction)
        for kr in status.key_results()
        if kr.kind == "metric" and kr.id in spec_of
    ]
    facts = read_effort_facts(client, sets[0].cycle, now, metric_krs)
    improving = {
        item.tag_id: improving_runs(item.kr, status.find(item.kr.id), facts.candidates[item.tag_id])
        for item in metric_krs
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
