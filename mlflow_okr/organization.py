"""An organization's OKRs on one MLflow: every team's set of every current cycle, rolled up.

Each set is published to its own experiment (`okr/<cycle>` for the unnamed set,
`okr/<cycle>/<team>` for a team's) and settles its own KRs. This module reads the sets together:
the cycles current at a moment (`cycles.current`), each cycle's objectives from all its sets, and
the alignment roll-up of parents' scores from their children's (`alignment.roll_up`).
"""

from __future__ import annotations

import datetime as dt

from mlflow.tracking import MlflowClient

from mlflow_okr import alignment, state
from mlflow_okr.cycles import current
from mlflow_okr.engine import weighted_mean
from mlflow_okr.errors import InputError
from mlflow_okr.kr_state import read_kr_runs, stored_kr_status
from mlflow_okr.results import (
    CycleInfo,
    CycleStatus,
    KeyResultStatus,
    ObjectiveStatus,
    cycle_status,
    restatus,
)
from mlflow_okr.spec import OkrSpec, as_utc


def hide_unreadable_best_run(client: MlflowClient, status: KeyResultStatus) -> KeyResultStatus:
    """Name the best run only to callers who may read it; the aggregate follows okr/<cycle>'s permission."""
    if status.best_run_id and not state.can_read_run(client, status.best_run_id):
        return status.model_copy(update={"best_run_id": None})
    return status


def set_status(
    client: MlflowClient, published: state.PublishedCycle, now: dt.datetime
) -> CycleStatus:
    """One set's status as its stored KR state says, best runs shown only to who may read them."""
    kr_runs = read_kr_runs(client, published)
    statuses = {}
    for _, kr in published.spec.key_results():
        run = kr_runs.get(kr.id)
        if run is not None:
            stored = hide_unreadable_best_run(client, stored_kr_status(run, kr))
            statuses[kr.id] = restatus(stored, published.spec, now)
    return cycle_status(published.spec, statuses, now)


def _descendant_sets(
    specs: list[tuple[OkrSpec, object]], links: alignment.Alignment, shown: list[state.PublishedCycle]
) -> list[tuple[OkrSpec, object]]:
    """The sets (not shown) holding objectives that roll up, directly or not, into shown ones."""
    shown_keys = {(s.cycle.name, s.team) for s in shown}
    wanted = {
        alignment.objective_key(s.spec, o) for s in shown for o in s.spec.objectives
    }
    needed: set[tuple[str, str | None]] = set()
    frontier = list(wanted)
    while frontier:
        key = frontier.pop()
        for child, _ in links.children.get(key, []):
            if (child.cycle, child.team) not in shown_keys | needed:
                needed.add((child.cycle, child.team))
            if child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return [(spec, e) for spec, e in specs if (spec.cycle.name, spec.team) in needed]


def organization_status(
    client: MlflowClient,
    cycle: str | None = None,
    team: str | None = None,
    now: dt.datetime | None = None,
    computed: dict[tuple[str, str | None], CycleStatus] | None = None,
) -> CycleStatus:
    """The current cycles (or `cycle`), each with every set's objectives, parents rolled up.

    The innermost cycle is the returned object; the cycles enclosing it follow in
    `enclosing_cycles`. `team` narrows the objectives shown ("" is the unnamed set); the scores
    still roll up from every set. `computed` stands in for the stored state of the sets it names
    (what `sync --check` recomputed).
    """
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    specs = state.published_specs(client)
    if cycle is not None:
        chosen = [(spec, e) for spec, e in specs if spec.cycle.name == cycle]
    else:
        chosen = current(specs, now, lambda item: item[0].cycle)
    if chosen and team is not None:
        teams = {spec.team or "" for spec, _ in chosen}
        if team not in teams:
            named = ", ".join(sorted(t or "(unnamed)" for t in teams)) or "none"
            where = cycle or "the current cycles"
            raise InputError(f"team {team or '(unnamed)'!r} has no set in {where} (sets: {named})")
    if not chosen:
        raise state.nothing_published(cycle, team)
    links = alignment.resolve(spec for spec, _ in specs)
    shown = [state.published_set(client, spec, e) for spec, e in chosen]
    extra = [state.published_set(client, spec, e) for spec, e in _descendant_sets(specs, links, shown)]
    computed = computed or {}
    statuses = {
        (s.cycle.name, s.team): computed.get((s.cycle.name, s.team)) or set_status(client, s, now)
        for s in shown + extra
    }
    own = {
        alignment.ObjectiveKey(name, set_team, objective.id): [
            (kr.progress, kr.weight) for kr in objective.key_results
        ]
        for (name, set_team), status in statuses.items()
        for objective in status.objectives
    }
    scores = alignment.roll_up(own, links)
    cycles: dict[str, list[state.PublishedCycle]] = {}
    for published in shown:
        cycles.setdefault(published.cycle.name, []).append(published)
    assembled = []
    for sets in cycles.values():
        objectives = []
        for published in sets:
            if team is not None and (published.team or "") != team:
                continue
            for objective in statuses[(published.cycle.name, published.team)].objectives:
                key = alignment.ObjectiveKey(published.cycle.name, published.team, objective.id)
                objectives.append(
                    objective.model_copy(
                        update={
                            "score": scores.get(key, objective.score),
                            "aligned_to": [p.ref for p in links.parents.get(key, [])],
                            "aligned_children": [c.ref for c, _ in links.children.get(key, [])],
                        }
                    )
                )
        if objectives or team is None:
            assembled.append(_cycle_of(sets[0].spec, objectives, [s.team for s in sets], now))
    first, *rest = assembled
    return first.model_copy(update={"enclosing_cycles": rest})


def _cycle_of(
    spec: OkrSpec, objectives: list[ObjectiveStatus], teams: list[str | None], now: dt.datetime
) -> CycleStatus:
    return CycleStatus(
        cycle=CycleInfo(
            name=spec.cycle.name, start=spec.cycle.start, end=spec.cycle.end, elapsed=spec.cycle.elapsed(now)
        ),
        score=weighted_mean((objective.score, 1.0) for objective in objectives),
        objectives=objectives,
        teams=teams,
    )

