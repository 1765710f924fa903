"""Recompute KRs from the source runs, compare with the stored state, and write what drifted.

The live store hook calls `compute_key_results` for the KRs a write touched; `sync` calls it for
all of them. Both end in the engine, so there is one semantics.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import state
from mlflow_okr.engine import (
    RunRule,
    Scored,
    Tally,
    Verdict,
    classify_run,
    score_counter_kr,
    score_metric_kr,
)
from mlflow_okr.results import CycleStatus, KeyResultStatus, cycle_status, kr_identity, kr_status
from mlflow_okr.spec import KeyResult, OkrSpec, as_utc

MAX_DRIFT_SAMPLES = 200
ProgressCallback = Callable[[int], None]


class KrDrift(BaseModel):
    kr: str
    field: str
    stored: Any = None
    computed: Any = None


class RunDrift(BaseModel):
    run_id: str
    tag: str
    stored: str | None = None
    computed: str | None = None


class SyncResult(BaseModel):
    """What `sync` found and did."""

    cycle: str
    runs_scanned: int
    kr_drift: list[KrDrift]
    run_drift: list[RunDrift]
    run_drift_count: int
    written: bool
    status: CycleStatus

    @property
    def drifted(self) -> bool:
        return bool(self.kr_drift) or self.run_drift_count > 0


@dataclass
class KrComputation:
    """A KR recomputed from scratch: its tally, baseline and the per-run verdict counts."""

    kr: KeyResult
    tally: Tally | None = None
    baseline: float | None = None
    baseline_run_id: str | None = None
    pending_runs: int = 0
    excluded_runs: int = 0
    guardrail_breaches: int = 0
    counter_value: float | None = None
    counter_events: int = 0

    def note(self, verdict: Verdict) -> None:
        if verdict.state == "counted":
            return
        if verdict.state == "pending":
            self.pending_runs += 1
        else:
            self.excluded_runs += 1
            if verdict.is_guardrail_breach:
                self.guardrail_breaches += 1


@dataclass
class Scope:
    """Which source runs a metric KR looks at: experiments and a parsed filter."""

    experiment_ids: frozenset[str]
    run_filter: state.RunFilter
    rule: RunRule | None = None

    def covers(self, run: Run) -> bool:
        return run.info.experiment_id in self.experiment_ids and self.run_filter.matches(run)


@dataclass
class CycleScan:
    """Everything a pass over the source runs needs to know about the cycle's metric KRs."""

    spec: OkrSpec
    scopes: dict[str, Scope] = field(default_factory=dict)

    @classmethod
    def build(cls, client: MlflowClient, spec: OkrSpec, kr_ids: Iterable[str] | None = None) -> CycleScan:
        wanted = set(kr_ids) if kr_ids is not None else None
        scan = cls(spec)
        experiments_cache: dict[tuple[str, ...], frozenset[str]] = {}
        for _, kr in spec.key_results():
            if kr.metric is None or (wanted is not None and kr.id not in wanted):
                continue
            key = tuple(kr.experiments)
            if key not in experiments_cache:
                experiments_cache[key] = frozenset(state.source_experiment_ids(client, kr.experiments))
            scan.scopes[kr.id] = Scope(experiments_cache[key], state.RunFilter(kr.filter), kr.rule())
        return scan

    @property
    def experiment_ids(self) -> list[str]:
        return sorted({e for scope in self.scopes.values() for e in scope.experiment_ids})

    def window_filter(self) -> str:
        cycle = self.spec.cycle
        return f"attributes.start_time >= {cycle.start_ms} AND attributes.start_time <= {cycle.end_ms}"

    def verdicts(self, run: Run) -> dict[str, Verdict]:
        """The verdict of every KR that concerns `run` (KR id -> verdict)."""
        facts = state.run_facts(run)
        if not self.spec.cycle.contains(facts.start_time):
            return {}
        verdicts = {}
        for kr_id, scope in self.scopes.items():
            if not scope.covers(run):
                continue
            rule = scope.rule
            if rule is None:
                kr = self.spec.find_key_result(kr_id)
                assert kr is not None
                rule = kr.rule()
            verdict = classify_run(rule, facts)
            if verdict is not None:
                verdicts[kr_id] = verdict
        return verdicts


def desired_run_tags(spec: OkrSpec, verdicts: dict[str, Verdict], run: Run | None = None) -> dict[str, str]:
    """The okr.* tags a source run should carry for these verdicts.

    Cycles may overlap (2026-Q4 inside 2026-H2): given the `run`, okr.krs keeps the ids it lists
    for other cycles' KRs, so that each cycle's sync leaves the other's ids alone.
    """
    counted = {kr_id for kr_id, verdict in verdicts.items() if verdict.state == "counted"}
    if run is not None:
        own = {kr.id for _, kr in spec.key_results()}
        listed = run.data.tags.get(state.TAG_KRS, "").split(",")
        counted |= {kr_id for kr_id in listed if kr_id and kr_id not in own}
    tags = {state.source_tag(kr_id): verdict.tag_value for kr_id, verdict in verdicts.items()}
    if counted:
        tags[state.TAG_KRS] = ",".join(sorted(counted))
    if verdicts:
        tags[state.TAG_CYCLE] = spec.cycle.name
    return tags


def managed_run_tags(spec: OkrSpec, run: Run) -> dict[str, str]:
    """The okr.* tags of this cycle's KRs that `run` carries now."""
    kr_ids = {kr.id for _, kr in spec.key_results()}
    return {
        key: value
        for key, value in run.data.tags.items()
        if key == state.TAG_KRS
        or (key.startswith(state.SOURCE_TAG_PREFIX) and key[len(state.SOURCE_TAG_PREFIX):] in kr_ids)
    }


@dataclass
class RunTagPlan:
    """How a source run's okr.* tags differ from what its verdicts call for."""

    current: dict[str, str]
    desired: dict[str, str]
    changed: dict[str, str]
    stale: list[str]

    @property
    def drifted(self) -> bool:
        return bool(self.changed or self.stale)


def plan_run_tags(spec: OkrSpec, run: Run, verdicts: dict[str, Verdict]) -> RunTagPlan:
    """Compare the run's managed tags with the desired ones (okr.cycle is not compared)."""
    current = managed_run_tags(spec, run)
    desired = desired_run_tags(spec, verdicts, run)
    changed = {k: v for k, v in desired.items() if k != state.TAG_CYCLE and current.get(k) != v}
    stale = [k for k in current if k not in desired]
    return RunTagPlan(current, desired, changed, stale)


def write_run_tags(client: MlflowClient, run: Run, plan: RunTagPlan) -> bool:
    """Write what `plan` found drifted; True when anything was written."""
    if not plan.drifted:
        return False
    changed = dict(plan.changed)
    # okr.cycle is not compared: a run inside two overlapping cycles keeps the one it has
    # unless its KR tags change, so two syncs do not rewrite it back and forth.
    cycle_tag, wanted_cycle = run.data.tags.get(state.TAG_CYCLE), plan.desired.get(state.TAG_CYCLE)
    if wanted_cycle and cycle_tag != wanted_cycle and (changed or not cycle_tag):
        changed[state.TAG_CYCLE] = wanted_cycle
    if changed:
        client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in changed.items()], synchronous=True)
    for key in plan.stale:
        client.delete_tag(run.info.run_id, key)
    return True


def compute_key_results(
    client: MlflowClient,
    spec: OkrSpec,
    kr_ids: Iterable[str] | None = None,
    on_run: Callable[[Run, dict[str, Verdict]], None] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[dict[str, KrComputation], int]:
    """Recompute KRs from scratch in one paginated pass over the cycle's source runs."""
    wanted = set(kr_ids) if kr_ids is not None else None
    computations: dict[str, KrComputation] = {}
    for _, kr in spec.key_results():
        if wanted is None or kr.id in wanted:
            computations[kr.id] = KrComputation(kr)
    scan = CycleScan.build(client, spec, computations)
    for kr_id in scan.scopes:
        computation = computations[kr_id]
        computation.baseline, computation.baseline_run_id = state.resolve_baseline(client, computation.kr)
        _, direction = computation.kr.resolve(computation.baseline)
        computation.tally = Tally(computation.kr.rule(), direction)
    scanned = 0
    for run in state.iter_runs(client, scan.experiment_ids, scan.window_filter()):
        scanned += 1
        verdicts = scan.verdicts(run)
        for kr_id, verdict in verdicts.items():
            computation = computations[kr_id]
            computation.note(verdict)
            if verdict.state == "counted":
                assert computation.tally is not None and verdict.value is not None
                computation.tally.add(run.info.run_id, verdict.value, run.info.start_time)
        if on_run is not None:
            on_run(run, verdicts)
        if progress is not None and scanned % 100 == 0:
            progress(scanned)
    if progress is not None:
        progress(scanned)
    return computations, scanned


def score(
    computation: KrComputation, spec: OkrSpec, now: dt.datetime, counters: tuple[float | None, int]
) -> Scored:
    """Score one recomputed KR with the engine."""
    kr = computation.kr
    thresholds = spec.status_thresholds
    elapsed, over = spec.cycle.elapsed(now), spec.cycle.is_over(now)
    if computation.tally is not None:
        target, _ = kr.resolve(computation.baseline)
        return score_metric_kr(
            computation.tally,
            computation.baseline,
            target,
            elapsed,
            over,
            thresholds.on_track,
            thresholds.at_risk,
        )
    current, events = counters
    assert isinstance(kr.target, (int, float))
    return score_counter_kr(
        current, events, float(kr.target), elapsed, over, thresholds.on_track, thresholds.at_risk
    )


def counter_inputs(
    client: MlflowClient, published: state.PublishedCycle, kr: KeyResult
) -> tuple[float | None, int]:
    """The current value and event count of a ledger or manual KR."""
    if kr.source == "ledger":
        count = state.ledger_validated_count(client, published.cycle, kr.linked_to)
        # No validated hypothesis yet: no value, like a manual KR without check-ins, so the stored
        # state (no okr.value logged while the count is 0) equals a recompute.
        return (float(count) if count else None), count
    if kr.source == "manual" and kr.id in published.kr_runs:
        return state.manual_checkin(client.get_run(published.kr_runs[kr.id]))
    return None, 0


def computed_statuses(
    client: MlflowClient,
    published: state.PublishedCycle,
    computations: dict[str, KrComputation],
    now: dt.datetime,
) -> dict[str, KeyResultStatus]:
    statuses = {}
    for kr_id, computation in computations.items():
        counters = (None, 0)
        if computation.tally is None:
            counters = counter_inputs(client, published, computation.kr)
        scored = score(computation, published.spec, now, counters)
        statuses[kr_id] = kr_status(
            computation.kr,
            scored,
            run_id=published.kr_runs.get(kr_id),
            pending_runs=computation.pending_runs,
            excluded_runs=computation.excluded_runs,
            guardrail_breaches=computation.guardrail_breaches,
        )
    return statuses


# ---------------------------------------------------------------------------------------------
# Stored state of KR runs


STATE_TAGS = {
    "counted_runs": state.TAG_COUNTED,
    "best_run_id": state.TAG_BEST_RUN,
    "baseline": state.TAG_BASELINE,
    "target": state.TAG_TARGET,
    "direction": state.TAG_DIRECTION,
    "pending_runs": "okr.pending_runs",
    "excluded_runs": "okr.excluded_runs",
    "guardrail_breaches": "okr.guardrail_breaches",
}
COMPARED_FIELDS = ("current", "progress", *STATE_TAGS)
# Why a KR scores as it does ("baseline not resolved yet"), for `status`; follows the compared fields.
TAG_NOTES = "okr.notes"
NOTES_SEPARATOR = "; "


def _tag_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def state_writes(status: KeyResultStatus) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags that record `status` on its KR run."""
    metrics = {state.METRIC_PROGRESS: status.progress, state.METRIC_SCORE: status.progress}
    if status.current is not None and status.counted_runs > 0:
        metrics[state.METRIC_VALUE] = status.current
    tags = {tag: _tag_text(getattr(status, name)) for name, tag in STATE_TAGS.items()}
    tags[state.TAG_STATUS] = status.status
    tags[TAG_NOTES] = NOTES_SEPARATOR.join(status.notes)
    return metrics, tags


def stored_status(run: Run, kr: KeyResult) -> dict[str, Any]:
    """The stored values of the compared fields, as text (tags) or floats (metrics)."""
    metrics, tags = run.data.metrics, run.data.tags
    stored: dict[str, Any] = {
        "current": metrics.get(state.METRIC_VALUE) if tags.get(state.TAG_COUNTED, "0") != "0" else None,
        "progress": metrics.get(state.METRIC_PROGRESS),
    }
    for name, tag in STATE_TAGS.items():
        stored[name] = tags.get(tag)
    return stored


def _same(stored: Any, computed: Any) -> bool:
    if isinstance(computed, float) or isinstance(stored, float):
        if stored is None or computed is None:
            return stored is None and computed is None
        stored, computed = float(stored), float(computed)
        if math.isnan(stored) or math.isnan(computed):
            # A mean or sum of huge values can overflow to NaN; NaN never equals itself.
            return math.isnan(stored) and math.isnan(computed)
        return math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-12)
    return stored == computed


def kr_drift(run: Run | None, status: KeyResultStatus, kr: KeyResult) -> list[KrDrift]:
    """Fields where the stored KR state differs from the recompute (status aside: it moves with time)."""
    if run is None:
        computed = "a KR run; run `mlflow-okr apply` to recreate it"
        return [KrDrift(kr=status.id, field="run", stored=None, computed=computed)]
    stored = stored_status(run, kr)
    drift = []
    for name in COMPARED_FIELDS:
        computed = getattr(status, name)
        if name in STATE_TAGS:
            computed = _tag_text(computed)
        elif computed is not None:
            computed = float(computed)
        if not _same(stored[name], computed):
            drift.append(KrDrift(kr=status.id, field=name, stored=stored[name], computed=computed))
    return drift


def write_kr_status(
    client: MlflowClient, published: state.PublishedCycle, status: KeyResultStatus
) -> None:
    """Record `status` on its KR run; report the status transition to webhooks if configured."""
    from mlflow_okr import notify

    run_id = published.kr_runs[status.id]
    metrics, tags = state_writes(status)
    transition = notify.pending_transition(client, published, run_id, status)
    state.log_kr_state(client, run_id, metrics, tags, published.cycle)
    notify.announce(client, transition)


def write_objective_scores(
    client: MlflowClient, published: state.PublishedCycle, status: CycleStatus, force: bool = False
) -> None:
    for objective in status.objectives:
        run_id = published.objective_runs.get(objective.id)
        if run_id is None:
            continue
        stored = client.get_run(run_id).data.metrics.get(state.METRIC_SCORE)
        if force or stored is None or not _same(stored, objective.score):
            state.log_kr_state(client, run_id, {state.METRIC_SCORE: objective.score}, {}, published.cycle)


# ---------------------------------------------------------------------------------------------
# sync


def runs_left_behind(client: MlflowClient, spec: OkrSpec) -> Iterable[Run]:
    """Runs still tagged for a KR in experiments that no KR looks at any more (the spec changed).

    The main pass only visits experiments some KR covers, so it cannot see these tags.
    """
    scanned = set(CycleScan.build(client, spec).experiment_ids)
    others = [e for e in state.source_experiment_ids(client, []) if e not in scanned]
    if not others:
        return
    seen: set[str] = set()
    tags = [state.TAG_KRS] + [state.source_tag(kr.id) for _, kr in spec.key_results() if kr.metric]
    for tag in tags:
        for run in state.iter_runs(client, others, f"tags.`{tag}` LIKE '%'"):
            if run.info.run_id not in seen and spec.cycle.contains(run.info.start_time):
                seen.add(run.info.run_id)
                yield run


def sync(
    client: MlflowClient,
    cycle: str | None = None,
    check: bool = False,
    now: dt.datetime | None = None,
    progress: ProgressCallback | None = None,
) -> SyncResult:
    """Recompute every KR of the cycle; write what drifted, or with `check` only report it."""
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    published = state.load_published(client, cycle, now.timestamp())
    spec = published.spec
    run_drift: list[RunDrift] = []
    drift_count = 0

    def reconcile(run: Run, verdicts: dict[str, Verdict]) -> None:
        nonlocal drift_count
        plan = plan_run_tags(spec, run, verdicts)
        if not plan.drifted:
            return
        drift_count += len(plan.changed) + len(plan.stale)
        for key in list(plan.changed) + plan.stale:
            if len(run_drift) < MAX_DRIFT_SAMPLES:
                run_drift.append(
                    RunDrift(
                        run_id=run.info.run_id,
                        tag=key,
                        stored=plan.current.get(key),
                        computed=plan.desired.get(key),
                    )
                )
        if not check:
            write_run_tags(client, run, plan)

    computations, scanned = compute_key_results(client, spec, on_run=reconcile, progress=progress)
    for run in runs_left_behind(client, spec):
        reconcile(run, {})
    statuses = computed_statuses(client, published, computations, now)
    kr_drifts: list[KrDrift] = []
    for kr_id, status in statuses.items():
        kr = computations[kr_id].kr
        run_id = published.kr_runs.get(kr_id)
        run = client.get_run(run_id) if run_id else None
        drift = kr_drift(run, status, kr)
        kr_drifts.extend(hide_unreadable_runs(client, drift))
        if not check and run is not None and (drift or run.data.tags.get(state.TAG_STATUS) != status.status):
            write_kr_status(client, published, status)
    result_status = cycle_status(spec, statuses, now)
    if not check:
        write_objective_scores(client, published, result_status)
    return SyncResult(
        cycle=spec.cycle.name,
        runs_scanned=scanned,
        kr_drift=kr_drifts,
        run_drift=run_drift,
        run_drift_count=drift_count,
        written=not check,
        status=result_status,
    )


def stored_cycle_status(
    client: MlflowClient, cycle: str | None = None, now: dt.datetime | None = None
) -> CycleStatus:
    """The cycle as the stored KR state says, with statuses for `now`."""
    from mlflow_okr.results import restatus

    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    published = state.load_published(client, cycle, now.timestamp())
    statuses = {}
    for _, kr in published.spec.key_results():
        run_id = published.kr_runs.get(kr.id)
        if run_id is None:
            continue
        stored = hide_unreadable_best_run(client, stored_kr_status(client.get_run(run_id), kr))
        statuses[kr.id] = restatus(stored, published.spec, now)
    return cycle_status(published.spec, statuses, now)


UNREADABLE_RUN = "(a run you may not read)"


def hide_unreadable_best_run(client: MlflowClient, status: KeyResultStatus) -> KeyResultStatus:
    """Name the best run only to callers who may read it; the aggregate follows okr/<cycle>'s permission."""
    if status.best_run_id and not state.can_read_run(client, status.best_run_id):
        return status.model_copy(update={"best_run_id": None})
    return status


def hide_unreadable_runs(client: MlflowClient, drift: list[KrDrift]) -> list[KrDrift]:
    """Drift as the caller may see it: a stored best run they may not read is not named."""
    shown = []
    for item in drift:
        if item.field == "best_run_id" and item.stored and not state.can_read_run(client, item.stored):
            item = item.model_copy(update={"stored": UNREADABLE_RUN})
        shown.append(item)
    return shown


def stored_kr_status(run: Run, kr: KeyResult) -> KeyResultStatus:
    stored = stored_status(run, kr)

    def number(name: str) -> float | None:
        text = stored[name]
        return float(text) if text not in (None, "") else None

    def count(name: str) -> int:
        return int(stored[name] or 0)

    return KeyResultStatus(
        **kr_identity(kr),
        baseline=number("baseline"),
        target=number("target"),
        direction=stored["direction"] or None,
        current=stored["current"],
        progress=stored["progress"] or 0.0,
        status=run.data.tags.get(state.TAG_STATUS, "not-started"),
        counted_runs=count("counted_runs"),
        best_run_id=stored["best_run_id"] or None,
        weight=kr.weight,
        pending_runs=count("pending_runs"),
        excluded_runs=count("excluded_runs"),
        guardrail_breaches=count("guardrail_breaches"),
        run_id=run.info.run_id,
        notes=[note for note in run.data.tags.get(TAG_NOTES, "").split(NOTES_SEPARATOR) if note],
    )
