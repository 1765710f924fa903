"""The Python API: every CLI command is one of these functions."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import state, vocabulary
from mlflow_okr.apply import ApplyPlan
from mlflow_okr.apply import apply_spec as _apply_spec
from mlflow_okr.errors import InputError
from mlflow_okr.results import CycleStatus
from mlflow_okr.results import status_frame as _status_frame
from mlflow_okr.spec import OkrSpec, load_spec
from mlflow_okr.sync import ProgressCallback, SyncResult, stored_cycle_status, sync_sets
from mlflow_okr.sync import sync as _sync


def _spec(spec: OkrSpec | str | Path) -> OkrSpec:
    return spec if isinstance(spec, OkrSpec) else load_spec(spec)


def apply_spec(
    spec: OkrSpec | str | Path,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    sync_after: bool = True,
) -> ApplyPlan:
    """Publish a spec (or okrs.yaml path) to `okr/<cycle>`; then recompute its KRs."""
    client = state.make_client(tracking_uri)
    spec = _spec(spec)
    syncing = sync_after and not dry_run
    before = _run_naming(client) if syncing else {}
    plan = _apply_spec(client, spec, dry_run=dry_run)
    if syncing:
        _sync(client, cycle=spec.cycle.name, team=spec.team or "")
        # The set may rename another cycle's run tags: a KR id it now shares with an overlapping
        # cycle (`okr.kr.<id>/<cycle>`), or a new cycle inner to theirs (okr.cycle). Those sets
        # are synced too, in one pass, as `sync` would.
        renamed = [
            state.published_set(client, other, experiment)
            for other, experiment in state.published_specs(client)
            if other.cycle.name != spec.cycle.name and before.get(_set_key(other)) != other.run_naming
        ]
        if renamed:
            sync_sets(client, renamed, check=False, now=dt.datetime.now(dt.timezone.utc))
    return plan


def _set_key(spec: OkrSpec) -> tuple[str, str]:
    return spec.cycle.name, spec.team or ""


def _run_naming(client: MlflowClient) -> dict[tuple[str, str], tuple]:
    """Per published set (cycle, team), what its run tags' names depend on beyond its own spec."""
    return {_set_key(spec): spec.run_naming for spec, _ in state.published_specs(client)}


def sync(
    tracking_uri: str | None = None,
    cycle: str | None = None,
    check: bool = False,
    now: dt.datetime | None = None,
    progress: ProgressCallback | None = None,
    team: str | None = None,
) -> SyncResult:
    """Recompute every KR of every set (or `team`'s) from the source runs; with `check`, only report drift."""
    client = state.make_client(tracking_uri)
    return _sync(client, cycle=cycle, check=check, now=now, progress=progress, team=team)


def status(
    tracking_uri: str | None = None,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> CycleStatus:
    """The current cycles' KRs (every set, or `team`'s) as stored in MLflow, with statuses for `now`.

    The innermost current cycle is the result; enclosing ones are in `enclosing_cycles`.
    """
    return stored_cycle_status(state.make_client(tracking_uri), cycle=cycle, now=now, team=team)


def status_frame(
    tracking_uri: str | None = None,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> pd.DataFrame:
    """`status` as a pandas DataFrame, one row per KR."""
    return _status_frame(status(tracking_uri, cycle, now, team))


class Checkin(BaseModel):
    kr: str
    value: float
    who: str
    when: dt.datetime
    note: str | None = None
    count: int


def checkin(
    kr_id: str,
    value: float,
    note: str | None = None,
    tracking_uri: str | None = None,
    cycle: str | None = None,
    who: str | None = None,
) -> Checkin:
    """Record a manual KR's value, with who and when; the KR's metrics chart the check-ins."""
    if not math.isfinite(value):
        raise InputError(f"check-in value for KR {kr_id!r} must be a finite number, not {value!r}")
    client = state.make_client(tracking_uri)
    published = state.find_set_of_kr(state.current_sets(client, cycle), kr_id)
    kr = published.spec.find_key_result(kr_id)
    run = state.find_kr_run(client, published, kr_id)
    if kr is None or kr.source != "manual":
        raise InputError(
            f"KR {kr_id!r} is a {kr.kind if kr else 'unknown'} KR; only `source: manual` KRs take "
            "check-ins (metric KRs update from MLflow runs, ledger KRs from `mlflow-okr ledger`)"
        )
    _, previous = state.manual_checkin(run)
    record = Checkin(
        kr=kr_id,
        value=value,
        who=who or state.current_user(),
        when=dt.datetime.now(dt.timezone.utc),
        note=note,
        count=previous + 1,
    )
    record_text = vocabulary.checkin_text(record.model_dump(mode="json"))
    client.set_tag(run.info.run_id, vocabulary.TAG_CHECKIN, record_text)
    _sync(client, cycle=published.cycle.name, team=published.team or "")
    return record
