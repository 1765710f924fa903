"""`sync`: recompute every KR of a cycle, compare with the stored state, and write what drifted.

It counts each KR from scratch (`compute.compute_key_results`), reconciles every source run's
okr.* tags on the way, and settles KR state with the same function the live store uses.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from typing import Any

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import state, vocabulary
from mlflow_okr.compute import ProgressCallback, compute_key_results, computed_statuses, tally_texts
from mlflow_okr.engine import BOARDS, Verdict
from mlflow_okr.kr_state import KrDrift, read_kr_runs, settle_key_results
from mlflow_okr.organization import organization_status
from mlflow_okr.results import CycleStatus, cycle_status
from mlflow_okr.scope import CycleScan, RunTagWrites, plan_run_tags
from mlflow_okr.spec import OkrSpec, as_utc

MAX_DRIFT_SAMPLES = 200
UNREADABLE_RUN = "(a run you may not read)"
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")  # MLflow's run ids, as a saved tally names them

__all__ = ["ProgressCallback", "RunDrift", "SyncResult", "stored_cycle_status", "sync"]


class RunDrift(BaseModel):
    run_id: str
    tag: str
    stored: str | None = None
    computed: str | None = None


class SyncResult(BaseModel):
    """What `sync` found and did, over every set it covered (`sets`: `2026-Q4`, `2026-Q4/team-a`)."""

    cycle: str
    sets: list[str] = []
    runs_scanned: int
    kr_drift: list[KrDrift]
    run_drift: list[RunDrift]
    run_drift_count: int
    written: bool
    status: CycleStatus

    @property
    def scope(self) -> str:
        """`cycle 2026-Q4` for one unnamed set, else the sets: `sets 2026-Q4/team-a, 2026-Q4/team-b`."""
        if len(self.sets) <= 1 and "/" not in "".join(self.sets):
            return f"cycle {self.cycle}"
        return "sets " + ", ".join(self.sets)

    @property
    def drifted(self) -> bool:
        return bool(self.kr_drift) or self.run_drift_count > 0


def runs_left_behind(client: MlflowClient, spec: OkrSpec) -> Iterable[Any]:
    """Runs still tagged for a KR in experiments that no KR looks at any more (the spec changed).

    The main pass only visits experiments some KR covers, so it cannot see these tags. Only this
    set's own verdict tags are looked for: `okr.krs` is on every run another team's set counts,
    and searching it made each set's sync read most of the store.
    """
    scanned = set(CycleScan.build(client, spec).experiment_ids)
    others = [e for e in state.source_experiment_ids(client, []) if e not in scanned]
    if not others:
        return
    seen: set[str] = set()
    tags = [
        vocabulary.source_tag(name)
        for _, kr in spec.key_results()
        if kr.metric
        for name in {kr.id, spec.run_tag_id(kr.id)}
    ]
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
    team: str | None = None,
) -> SyncResult:
    """Recompute every KR of every set of the cycle (default: of every current cycle), or of one
    team's set; write what drifted, or with `check` only report it."""
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    sets = state.current_sets(client, cycle, team, now.timestamp())
    results = [sync_set(client, published, check, now, progress) for published in sets]
    computed = {(s.cycle.name, s.team): result.status for s, result in zip(sets, results, strict=True)}
    status = organization_status(client, cycle, team, now, computed=computed)
    return SyncResult(
        cycle=sets[0].cycle.name,
        sets=[published.label for published in sets],
        runs_scanned=sum(result.runs_scanned for result in results),
        kr_drift=[drift for result in results for drift in result.kr_drift],
        run_drift=[drift for result in results for drift in result.run_drift][:MAX_DRIFT_SAMPLES],
        run_drift_count=sum(result.run_drift_count for result in results),
        written=not check,
        status=status,
    )


def sync_set(
    client: MlflowClient,
    published: state.PublishedCycle,
    check: bool,
    now: dt.datetime,
    progress: ProgressCallback | None = None,
) -> SyncResult:
    """Recompute every KR of one published set; its `status` is the set's own, not rolled up."""
    spec = published.spec
    run_drift: list[RunDrift] = []
    drift_count = 0
    writes = RunTagWrites(client)

    def reconcile(run: Any, verdicts: dict[str, Verdict]) -> None:
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
            writes.add(run, plan)

    computations, scanned = compute_key_results(client, spec, on_run=reconcile, progress=progress)
    for run in runs_left_behind(client, spec):
        reconcile(run, {})
    writes.flush()
    statuses = computed_statuses(client, published, computations, now)
    kr_runs = read_kr_runs(client, published)
    settled = settle_key_results(
        client, published, statuses, tally_texts(computations), now, check=check, kr_runs=kr_runs
    )
    assert settled.status is not None
    return SyncResult(
        cycle=spec.cycle.name,
        sets=[published.label],
        runs_scanned=scanned,
        kr_drift=hide_unreadable_runs(client, settled.drift),
        run_drift=run_drift,
        run_drift_count=drift_count,
        written=not check,
        status=cycle_status(spec, statuses, now),
    )


def stored_cycle_status(
    client: MlflowClient, cycle: str | None = None, now: dt.datetime | None = None, team: str | None = None
) -> CycleStatus:
    """The current cycles (or `cycle`) as the stored KR state says, every set, parents rolled up."""
    return organization_status(client, cycle, team, now)


def _hide_in_tally(text: str, hidden: Any) -> str:
    """A saved tally as the caller may see it: a run they may not read shows neither id nor value."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # not a saved tally: hide the run ids it names
        return RUN_ID.sub(lambda match: hidden(match.group(0)), text)
    for board in (*BOARDS, "latest"):
        entries = data.get(board)
        listed = [entries] if board == "latest" and entries else entries
        if not isinstance(listed, list):
            continue
        shown = [
            entry if not isinstance(entry, list) or len(entry) < 2 or hidden(str(entry[1])) != UNREADABLE_RUN
            else UNREADABLE_RUN
            for entry in listed
        ]
        data[board] = shown[0] if board == "latest" else shown
    return json.dumps(data, sort_keys=True)


def hide_unreadable_runs(client: MlflowClient, drift: list[KrDrift]) -> list[KrDrift]:
    """Drift as the caller may see it: a run they may not read is not named (best run, tally)."""
    readable: dict[str, bool] = {}

    def hidden(run_id: str) -> str:
        if run_id not in readable:
            readable[run_id] = state.can_read_run(client, run_id)
        return run_id if readable[run_id] else UNREADABLE_RUN

    shown = []
    for item in drift:
        if item.field == "best_run_id" and item.stored:
            item = item.model_copy(update={"stored": hidden(item.stored)})
        elif item.field == "tally":
            texts = {
                side: _hide_in_tally(getattr(item, side) or "", hidden) for side in ("stored", "computed")
            }
            item = item.model_copy(update=texts)
        shown.append(item)
    return shown
