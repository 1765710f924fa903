"""What the live board shows, read through MLflow's client with the caller's credentials.

The status object is `mlflow-okr status --format json` verbatim; the board adds what a page needs
beyond it: each KR's progress history (for sparklines), UI links, recent check-ins and hypotheses.
Every read goes through `MlflowClient`, so on a server MLflow's auth decides what the caller sees.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_okr import practice, state, traces, vocabulary
from mlflow_okr.effort import with_effort
from mlflow_okr.report.model import run_url
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.spec import KeyResult

logger = logging.getLogger("mlflow_okr")

MAX_HYPOTHESES = 12
MAX_CHECKINS = 10


def default_ui_url(tracking_uri: str | None) -> str | None:
    """The MLflow UI is the tracking server itself when the tracking URI is http(s); else unknown."""
    plain = state.strip_plugin_scheme(tracking_uri) or ""
    return plain.rstrip("/") if plain.startswith(("http://", "https://")) else None


def cycle_status(
    tracking_uri: str | None,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> CycleStatus:
    """Exactly what `mlflow-okr status` reports for the same store, cycle, moment and team."""
    return practice.annotated_status(tracking_uri=tracking_uri, cycle=cycle, now=now, team=team)


def status_json(status: CycleStatus) -> dict[str, Any]:
    """The status object as `status --format json` prints it."""
    return json.loads(status.model_dump_json())


def board_state(
    tracking_uri: str | None,
    ui_url: str | None,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """Everything the board page renders: the status object plus history, links, check-ins, ledger.

    KRs of the enclosing cycles are detailed too (by id, the innermost cycle's first), so a person
    can drill from a company objective down to a team's KR and the runs that moved it.
    """
    status = cycle_status(tracking_uri, cycle, now, team)
    # Effort is read with the details (every 30 s on the page), not on each status poll.
    effort = with_effort(state.make_client(tracking_uri), status, now)
    client = state.make_client(tracking_uri)
    key_results: dict[str, Any] = {}
    checkins = []
    objectives = [o for shown in [status, *status.enclosing_cycles] for o in shown.objectives]
    for objective in objectives:
        for kr in objective.key_results:
            if kr.id in key_results:
                continue
            details, checkin = _kr_details(client, kr, ui_url)
            key_results[kr.id] = details
            if checkin is not None:
                checkins.append(checkin)
    checkins.sort(key=lambda item: item.get("when") or "", reverse=True)
    return {
        "status": status_json(status),
        "key_results": key_results,
        "checkins": checkins[:MAX_CHECKINS],
        "hypotheses": hypotheses(tracking_uri, status, ui_url),
        "effort": {
            "cycle": effort.effort.model_dump() if effort.effort else None,
            "unaligned": effort.unaligned.model_dump() if effort.unaligned else None,
            "key_results": {kr.id: kr.effort.model_dump() for kr in effort.key_results() if kr.effort},
        },
        "ui_url": ui_url,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _kr_details(
    client: MlflowClient, kr: KeyResultStatus, ui_url: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    details: dict[str, Any] = {
        "history": [], "kr_run_url": None, "best_run_url": None, "best_run_name": None, "maintain": None,
        "measures": None,
    }
    checkin = None
    if kr.run_id:
        kr_run = client.get_run(kr.run_id)
        details["kr_run_url"] = run_url(ui_url, kr_run.info.experiment_id, kr.run_id)
        details["history"] = progress_history(client, kr.run_id)
        checkin = _checkin(kr, kr_run.data.tags.get(vocabulary.TAG_CHECKIN))
        details["maintain"] = _maintain_bound(kr_run.data.tags.get(vocabulary.TAG_KR_DEFINITION))
        details["measures"] = _trace_measures(kr_run.data.tags.get(vocabulary.TAG_KR_DEFINITION))
    if kr.best_run_id:
        # The status names a best run only to callers who may read it; reading it again can still
        # fail if the permission changed in between, and then the board names nothing.
        try:
            best = client.get_run(kr.best_run_id)
        except MlflowException:
            pass
        else:
            details["best_run_url"] = run_url(ui_url, best.info.experiment_id, kr.best_run_id)
            details["best_run_name"] = best.info.run_name
    return details, checkin


def progress_history(client: MlflowClient, kr_run_id: str) -> list[dict[str, Any]]:
    """The KR's progress and value over time, one point per change (repeats add nothing to a sparkline)."""
    history: list[dict[str, Any]] = []
    for timestamp, fields in state.kr_history(client, kr_run_id, ("progress", "value")).items():
        point = {"t": timestamp, **fields}
        if history and all(history[-1].get(k) == point.get(k) for k in ("progress", "value")):
            continue
        history.append(point)
    return history


def _maintain_bound(definition: str | None) -> dict[str, float | None] | None:
    """A maintain KR's bound ({min, max}) from the definition `apply` wrote on its KR run."""
    try:
        maintain = json.loads(definition or "{}").get("maintain")
    except (ValueError, AttributeError):
        return None
    if not isinstance(maintain, dict):
        return None
    return {"min": maintain.get("min"), "max": maintain.get("max")}


def _trace_measures(definition: str | None) -> str | None:
    """How a trace KR is measured (`traces.describe`), from the definition `apply` wrote."""
    try:
        kr = KeyResult.model_validate_json(definition or "")
    except ValueError:
        return None
    return traces.describe(kr) if kr.source == "traces" else None


def _checkin(kr: KeyResultStatus, raw: str | None) -> dict[str, Any] | None:
    record = vocabulary.read_checkin(raw)
    if record is None:
        return None  # none, or a hand-edited tag; `sync` and the next check-in deal with it
    return {
        "kr": kr.id,
        "kr_title": kr.title,
        "value": record["value"],
        "unit": kr.unit,
        "who": str(record.get("who") or ""),
        "when": str(record.get("when") or ""),
        "note": record.get("note"),
    }


def hypotheses(tracking_uri: str | None, status: CycleStatus, ui_url: str | None) -> list[dict[str, Any]]:
    """The ledger's hypotheses about this cycle's KRs and objectives (or about none), newest first."""
    from mlflow_okr.ledger import list_hypotheses

    try:
        found = list_hypotheses(tracking_uri=tracking_uri)
    except MlflowException as exc:
        # list_hypotheses links newly tagged runs, a write that read-only credentials may not make;
        # the board then shows no ledger rather than failing.
        logger.warning("board: hypotheses not shown: %s", exc.message)
        return []
    kr_ids = {kr.id for kr in status.key_results()}
    objective_ids = {objective.id for objective in status.objectives}
    shown = []
    for hypothesis in reversed(found):
        if hypothesis.kr and hypothesis.kr not in kr_ids:
            continue
        if hypothesis.objective and hypothesis.objective not in objective_ids:
            continue
        evaluation = hypothesis.evaluation or {}
        shown.append(
            {
                **hypothesis.identity(),
                "effect": evaluation.get("effect"),
                "relative_effect": evaluation.get("relative_effect"),
                "p_value": evaluation.get("p_value"),
                "q_value": hypothesis.q_value,  # Benjamini-Hochberg, across the current cycle
                "suggested_verdict": evaluation.get("suggested_verdict"),
                "learning": hypothesis.learning,
                "url": (
                    run_url(ui_url, hypothesis.experiment_id, hypothesis.run_id)
                    if hypothesis.run_id and hypothesis.experiment_id
                    else None
                ),
            }
        )
    return shown[:MAX_HYPOTHESES]
