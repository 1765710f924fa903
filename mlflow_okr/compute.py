"""Recomputing KRs: a tally per KR from its runs' verdicts, then the engine's score.

`compute_key_results` counts KRs from scratch in one pass over the cycle's source runs, read with
the cheapest reader the store offers (`facts.reader_for`). `revise_key_results` brings saved
tallies up to date for a few runs whose verdicts changed, and says which KRs it could not revise
that way. Both end in the engine, so `sync`, `status`, `report` and the live store agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_okr import registry, state, traces
from mlflow_okr.engine import (
    Scored,
    Tally,
    Verdict,
    score_aggregate_kr,
    score_counter_kr,
    score_metric_kr,
)
from mlflow_okr.facts import reader_for
from mlflow_okr.kr_state import tally_text
from mlflow_okr.results import KeyResultStatus, kr_status
from mlflow_okr.scope import CycleScan, RunMemo
from mlflow_okr.spec import KeyResult, OkrSpec

ProgressCallback = Callable[[int], None]


@dataclass
class KrComputation:
    """A recomputed KR: its tally (metric and maintain KRs) and resolved baseline."""

    kr: KeyResult
    tally: Tally | None = None
    baseline: float | None = None
    # A `model:` KR: where its alias points now. Notes: why its tally may be empty, or that a
    # pinned dataset changed.
    model: registry.ModelStatus | None = None
    notes: tuple[str, ...] = ()
    # A `model:` trace KR: the version its alias names, read once so value and model agree.
    alias: registry.AliasTarget | None = None
    # A trace KR: the experiments it aggregates, matched already (None: `traces.measure` lists them).
    experiment_ids: list[str] | None = None


def new_computations(
    client: MlflowClient, spec: OkrSpec, scan: CycleScan, kr_ids: Iterable[str] | None = None
) -> dict[str, KrComputation]:
    """Empty computations for these KRs (all of the spec's by default), baselines resolved."""
    wanted = set(kr_ids) if kr_ids is not None else None
    computations: dict[str, KrComputation] = {}
    for _, kr in spec.key_results():
        if wanted is not None and kr.id not in wanted:
            continue
        computation = computations[kr.id] = KrComputation(kr)
        if kr.id in scan.scopes:
            computation.baseline, _ = state.resolve_baseline(client, kr)
            _, direction = kr.resolve(computation.baseline)
            computation.tally = Tally(kr.rule(), direction)
        elif kr.model is not None and kr.metric is not None:
            computation.baseline, _ = state.resolve_baseline(client, kr)
            _, direction = kr.resolve(computation.baseline)
            computation.tally, target, notes = registry.model_tally(client, kr, direction)
            computation.model, computation.notes = registry.current_model(target), tuple(notes)
        elif kr.model is not None and kr.source == "traces":
            computation.alias, notes = traces.model_scope(client, kr)
            assert computation.alias is not None
            computation.model, computation.notes = registry.current_model(computation.alias), tuple(notes)
    return computations


def compute_key_results(
    client: MlflowClient,
    spec: OkrSpec,
    kr_ids: Iterable[str] | None = None,
    on_run: Callable[[Any, dict[str, Verdict]], None] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[dict[str, KrComputation], int]:
    """Recompute KRs from scratch in one pass over the cycle's source runs."""
    scan = CycleScan.build(client, spec, kr_ids)
    computations = new_computations(client, spec, scan, kr_ids)
    keys = scan.fact_keys()
    reader = reader_for(client, keys)
    cycle = spec.cycle
    scanned = 0
    for run in reader.scan(scan.experiment_ids, cycle.start_ms, cycle.end_ms, keys):
        scanned += 1
        verdicts = count_run(scan, computations, run)
        if on_run is not None:
            on_run(run, verdicts)
        if progress is not None and scanned % 1000 == 0:
            progress(scanned)
    if progress is not None:
        progress(scanned)
    note_dataset_changes(scan, computations)
    return computations, scanned


def count_run(
    scan: CycleScan,
    computations: dict[str, KrComputation],
    run: Any,
    memo: RunMemo | None = None,
) -> dict[str, Verdict]:
    """Count `run` in the tallies of the KRs of `scan` that concern it; return their verdicts
    (`memo`: as `CycleScan.verdicts` takes it)."""
    verdicts = scan.verdicts(run, memo)
    run_id, start_time = run.info.run_id, run.info.start_time
    for kr_id, verdict in verdicts.items():
        tally = computations[kr_id].tally
        assert tally is not None
        tally.note(run_id, verdict, start_time)
    return verdicts


def note_dataset_changes(scan: CycleScan, computations: dict[str, KrComputation]) -> None:
    """After a pass: a dataset-pinned KR whose dataset had several digests in the cycle says so."""
    cycle = scan.spec.cycle
    for kr_id, scope in scan.scopes.items():
        note = scope.datasets.changed_note(cycle.start_ms, cycle.end_ms) if scope.datasets else None
        if note is not None:
            computations[kr_id].notes += (note,)


@dataclass(frozen=True)
class VerdictChange:
    """How one run stood for a KR before a write, and how it stands now (None: no verdict)."""

    run_id: str
    start_time: int | None
    old: Verdict | None
    new: Verdict | None


def revise_tally(tally: Tally, changes: Iterable[VerdictChange]) -> bool:
    """Apply verdict changes to a saved tally; False when it must be recounted from all runs."""
    for change in changes:
        old, new = change.old, change.new
        if old is not None and new is not None and old.state == new.state == "counted":
            assert new.value is not None
            if not tally.update(change.run_id, new.value, change.start_time, old.value):
                return False
            continue
        if old is not None and not tally.forget(change.run_id, old):
            return False
        if new is not None:
            tally.note(change.run_id, new, change.start_time)
    return True


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
    if kr.source == "traces":
        # The baseline is a number; a relative target resolves against it like a metric KR's.
        baseline = float(kr.baseline) if isinstance(kr.baseline, (int, float)) else None
        target, direction = kr.resolve(baseline)
        maintain = kr.maintain.bound(traces.label(kr)) if kr.maintain else None
        return score_aggregate_kr(
            current, events, baseline, target, direction, maintain, elapsed, over,
            thresholds.on_track, thresholds.at_risk,
        )
    assert isinstance(kr.target, (int, float))
    return score_counter_kr(
        current, events, float(kr.target), elapsed, over, thresholds.on_track, thresholds.at_risk
    )


def counter_inputs(
    client: MlflowClient,
    published: state.PublishedCycle,
    kr: KeyResult,
    now: dt.datetime,
    alias: registry.AliasTarget | None = None,
    experiment_ids: list[str] | None = None,
) -> tuple[float | None, int]:
    """The current value and event count of a ledger or manual KR; of a trace KR, MLflow's
    aggregate and how many traces, spans or assessments it covers at `now` (`alias`: where a
    `model:` trace KR's alias points; `experiment_ids`: the experiments it aggregates, if known)."""
    if kr.source == "traces":
        measured = traces.measure(client, published.spec, kr, now, experiment_ids, model=alias)
        return measured.value, measured.count
    if kr.source == "ledger":
        count = state.ledger_validated_count(client, published.cycle, kr.linked_to, count_only=kr.count_only)
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
            counters = counter_inputs(
                client, published, computation.kr, now, computation.alias, computation.experiment_ids
            )
        scored = score(computation, published.spec, now, counters)
        tally = computation.tally
        statuses[kr_id] = kr_status(
            computation.kr,
            scored,
            run_id=published.kr_runs.get(kr_id),
            pending_runs=tally.pending if tally else 0,
            excluded_runs=tally.excluded if tally else 0,
            guardrail_breaches=tally.guardrail_breaches if tally else 0,
        )
        if computation.model is not None or computation.notes:
            status = statuses[kr_id]
            notes = [*computation.notes, *status.notes]
            statuses[kr_id] = status.model_copy(update={"model": computation.model, "notes": notes})
    return statuses


def tally_texts(computations: dict[str, KrComputation]) -> dict[str, str]:
    """The okr.tally tag of each metric KR's computation."""
    return {
        kr_id: tally_text(computation.kr, computation.baseline, computation.tally)
        for kr_id, computation in computations.items()
        if computation.tally is not None
    }
