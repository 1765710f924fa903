"""The stored state of KR runs: what a status writes, how it reads back, drift, and the one settle.

`settle_key_results` is the single place where recomputed KR statuses become stored state; `sync`
and the live store both call it, so both write, compare and notify the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import mlflow_ui, notify, registry, state, vocabulary
from mlflow_okr.engine import Tally, summaries_agree
from mlflow_okr.results import CycleStatus, KeyResultStatus, cycle_status, kr_identity
from mlflow_okr.spec import KeyResult

STATE_TAGS = {
    "counted_runs": vocabulary.TAG_COUNTED,
    "best_run_id": vocabulary.TAG_BEST_RUN,
    "baseline": vocabulary.TAG_BASELINE,
    "target": vocabulary.TAG_TARGET,
    "direction": vocabulary.TAG_DIRECTION,
    "pending_runs": vocabulary.TAG_PENDING,
    "excluded_runs": vocabulary.TAG_EXCLUDED,
    "guardrail_breaches": vocabulary.TAG_GUARDRAIL_BREACHES,
}
COMPARED_FIELDS = ("current", "progress", *STATE_TAGS)
# The notes (vocabulary.TAG_NOTES: why a KR scores as it does, "baseline not resolved yet") follow
# the compared fields. The KR's tally (vocabulary.TAG_TALLY: engine.Tally.summary and what it was
# counted for) lets a write to one run revise it instead of re-reading every run; sync compares it
# like the other fields.


class KrDrift(BaseModel):
    kr: str
    field: str
    stored: Any = None
    computed: Any = None


def _tag_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def tally_basis(kr: KeyResult, baseline: float | None) -> str:
    """What a saved tally was counted for: the KR's definition and its resolved baseline."""
    text = state.kr_definition(kr) + "|" + repr(baseline)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tally_text(kr: KeyResult, baseline: float | None, tally: Tally | None) -> str:
    """The okr.tally tag for `tally`; empty when there is none or it does not fit in a tag."""
    if tally is None:
        return ""
    return vocabulary.tally_text(tally_basis(kr, baseline), tally.summary())


def stored_tally(run: Run, kr: KeyResult, baseline: float | None) -> Tally | None:
    """The tally saved on the KR run, if it was counted for this definition and baseline."""
    data = vocabulary.read_tally(run.data.tags.get(vocabulary.TAG_TALLY))
    if data is None or kr.metric is None or data.get("basis") != tally_basis(kr, baseline):
        return None
    try:
        _, direction = kr.resolve(baseline)
        return Tally.from_summary(kr.rule(), direction, data)
    except (ValueError, KeyError, TypeError):
        return None  # hand-edited or from another version: recount


def tallies_agree(stored: str, computed: str) -> bool:
    """True when the saved okr.tally text says what the recount's text says (`summaries_agree`)."""
    if stored == computed:
        return True
    stored_data, computed_data = vocabulary.read_tally(stored), vocabulary.read_tally(computed)
    if stored_data is None or computed_data is None:
        return False  # hand-edited: rewritten
    return summaries_agree(stored_data, computed_data)


def state_writes(
    status: KeyResultStatus, stored: Run | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags that record `status` on its KR run.

    Given the `stored` run, metrics whose latest value is already the same are left out, so the
    KR's charts get a point only when a value moves.
    """
    metrics = {vocabulary.METRIC_PROGRESS: status.progress, vocabulary.METRIC_SCORE: status.progress}
    if status.current is not None and status.counted_runs > 0:
        metrics[vocabulary.METRIC_VALUE] = status.current
    if stored is not None:
        latest = stored.data.metrics
        metrics = {key: value for key, value in metrics.items() if not _exactly(latest.get(key), value)}
    tags = {tag: _tag_text(getattr(status, name)) for name, tag in STATE_TAGS.items()}
    tags[vocabulary.TAG_STATUS] = str(status.status)
    tags[vocabulary.TAG_NOTES] = vocabulary.NOTES_SEPARATOR.join(status.notes)
    return metrics, tags


def _exactly(stored: float | None, value: float) -> bool:
    return stored is not None and (stored == value or (math.isnan(stored) and math.isnan(value)))


def stored_status(run: Run) -> dict[str, Any]:
    """The stored values of the compared fields, as text (tags) or floats (metrics)."""
    metrics, tags = run.data.metrics, run.data.tags
    stored: dict[str, Any] = {
        "current": (
            metrics.get(vocabulary.METRIC_VALUE) if tags.get(vocabulary.TAG_COUNTED, "0") != "0" else None
        ),
        "progress": metrics.get(vocabulary.METRIC_PROGRESS),
    }
    for name, tag in STATE_TAGS.items():
        stored[name] = tags.get(tag)
    return stored


def same_value(stored: Any, computed: Any) -> bool:
    """Whether a stored field equals the recomputed one (floats to 1e-9, NaN equal to NaN)."""
    if isinstance(computed, float) or isinstance(stored, float):
        if stored is None or computed is None:
            return stored is None and computed is None
        stored, computed = float(stored), float(computed)
        if math.isnan(stored) or math.isnan(computed):
            # A mean or sum of huge values can overflow to NaN; NaN never equals itself.
            return math.isnan(stored) and math.isnan(computed)
        return math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-12)
    return stored == computed


def kr_drift(run: Run | None, status: KeyResultStatus, tally: str | None = None) -> list[KrDrift]:
    """Fields where the stored KR state differs from the recompute (status aside: it moves with time).

    With `tally` (the okr.tally text of the recompute), the saved tally is compared too.
    """
    if run is None:
        computed = "a KR run; run `mlflow-okr apply` to recreate it"
        return [KrDrift(kr=status.id, field="run", stored=None, computed=computed)]
    stored = stored_status(run)
    drift = []
    for name in COMPARED_FIELDS:
        computed = getattr(status, name)
        if name in STATE_TAGS:
            computed = _tag_text(computed)
        elif computed is not None:
            computed = float(computed)
        if not same_value(stored[name], computed):
            drift.append(KrDrift(kr=status.id, field=name, stored=stored[name], computed=computed))
    if tally is not None and not tallies_agree(run.data.tags.get(vocabulary.TAG_TALLY, ""), tally):
        stored_text = run.data.tags.get(vocabulary.TAG_TALLY)
        drift.append(KrDrift(kr=status.id, field="tally", stored=stored_text, computed=tally))
    return drift


def write_kr_status(
    client: MlflowClient,
    published: state.PublishedCycle,
    status: KeyResultStatus,
    stored: Run | None = None,
    tally: str | None = None,
) -> None:
    """Record `status` (and its tally) on its KR run; report the transition to webhooks if configured."""
    run_id = published.kr_runs[status.id]
    metrics, tags = state_writes(status, stored)
    if tally is not None:
        tags[vocabulary.TAG_TALLY] = tally
    transition = notify.pending_transition(client, published, run_id, status)
    state.log_kr_state(client, run_id, metrics, tags, published.cycle)
    notify.announce(client, transition)


def write_objective_scores(
    client: MlflowClient,
    published: state.PublishedCycle,
    status: CycleStatus,
    force: bool = False,
    objective_runs: dict[str, Run] | None = None,
) -> None:
    """Log each objective's score where it moved (`objective_runs`: the runs as just read)."""
    for objective in status.objectives:
        run_id = published.objective_runs.get(objective.id)
        if run_id is None:
            continue
        run = (objective_runs or {}).get(objective.id)
        if run is None or run.info.run_id != run_id:
            run = client.get_run(run_id)
        stored = run.data.metrics.get(vocabulary.METRIC_SCORE)
        if force or stored is None or not same_value(stored, objective.score):
            score = {vocabulary.METRIC_SCORE: objective.score}
            state.log_kr_state(client, run_id, score, {}, published.cycle)


def stored_kr_status(run: Run, kr: KeyResult) -> KeyResultStatus:
    """The KR status as its run stores it."""
    stored = stored_status(run)

    def number(name: str) -> float | None:
        text = stored[name]
        return float(text) if text not in (None, "") else None

    def count(name: str) -> int:
        return int(stored[name] or 0)

    notes = run.data.tags.get(vocabulary.TAG_NOTES, "")
    return KeyResultStatus(
        **kr_identity(kr),
        baseline=number("baseline"),
        target=number("target"),
        direction=stored["direction"] or None,
        current=stored["current"],
        progress=stored["progress"] or 0.0,
        status=vocabulary.read_status(run.data.tags.get(vocabulary.TAG_STATUS)),
        counted_runs=count("counted_runs"),
        best_run_id=stored["best_run_id"] or None,
        weight=kr.weight,
        pending_runs=count("pending_runs"),
        excluded_runs=count("excluded_runs"),
        guardrail_breaches=count("guardrail_breaches"),
        run_id=run.info.run_id,
        notes=[note for note in notes.split(vocabulary.NOTES_SEPARATOR) if note],
        model=registry.stored_model(run, kr),
    )


def read_kr_runs(
    client: MlflowClient, published: state.PublishedCycle, objective_runs: dict[str, Run] | None = None
) -> dict[str, Run]:
    """Every live KR run of the cycle, by KR id, in one query; the same query fills
    `objective_runs` (by objective id) when given."""
    live_ids = {run_id: kr_id for kr_id, run_id in published.kr_runs.items()}
    objective_ids = {run_id: objective_id for objective_id, run_id in published.objective_runs.items()}
    role = "!= ''" if objective_runs is not None else "= 'kr'"
    kr_runs = {}
    for run in state.iter_runs(client, [published.experiment_id], f"tags.`{vocabulary.TAG_ROLE}` {role}"):
        run_id = run.info.run_id
        if run_id in live_ids:
            kr_runs[live_ids[run_id]] = run
        elif objective_runs is not None and run_id in objective_ids:
            objective_runs[objective_ids[run_id]] = run
    return kr_runs


@dataclass
class Settled:
    """What settling found and wrote."""

    drift: list[KrDrift] = field(default_factory=list)
    written: set[str] = field(default_factory=set)
    status: CycleStatus | None = None


def settle_key_results(
    client: MlflowClient,
    published: state.PublishedCycle,
    statuses: dict[str, KeyResultStatus],
    tallies: dict[str, str],
    now: dt.datetime,
    check: bool = False,
    kr_runs: dict[str, Run] | None = None,
    describe: bool = True,
    objective_runs: dict[str, Run] | None = None,
) -> Settled:
    """Compare recomputed KR statuses with the stored state and, unless `check`, write what differs.

    `statuses` may cover only some KRs (the live store recomputes the ones a write touched): the
    objective scores then combine them with the stored state of the others. With `describe`, the
    descriptions MLflow's UI shows are brought up to date too.
    """
    if kr_runs is None:
        objective_runs = {}
        kr_runs = read_kr_runs(client, published, objective_runs)
    settled = Settled()
    statuses = dict(statuses)  # the caller's statuses stay as computed; these gain promotions
    for kr_id, status in statuses.items():
        run = kr_runs.get(kr_id)
        drift = kr_drift(run, status, tallies.get(kr_id))
        settled.drift.extend(drift)
        if run is not None and status.model is not None:  # a `model:` KR: record where its alias moved
            model, promoted = registry.with_promotions(run, status.model, now)
            statuses[kr_id] = status = status.model_copy(update={"model": model})
            if promoted and not check:
                state.log_kr_state(client, run.info.run_id, {}, promoted, published.cycle)
        if check or run is None:
            continue
        if drift or run.data.tags.get(vocabulary.TAG_STATUS) != status.status:
            write_kr_status(client, published, status, stored=run, tally=tallies.get(kr_id))
            settled.written.add(kr_id)
    merged = {
        kr.id: statuses[kr.id] if kr.id in statuses else stored_kr_status(kr_runs[kr.id], kr)
        for _, kr in published.spec.key_results()
        if kr.id in statuses or kr.id in kr_runs
    }
    settled.status = cycle_status(published.spec, merged, now)
    if not check and (settled.written or len(statuses) == len(merged)):
        write_objective_scores(client, published, settled.status, objective_runs=objective_runs)
        if describe:  # each description is written only if its text changed
            mlflow_ui.refresh_ui_notes(client, published, settled.status, kr_runs)
    return settled
