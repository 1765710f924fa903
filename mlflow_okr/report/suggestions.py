"""The report's "next cycle" section, drafted by `mlflow_okr.suggest` when that module is installed."""

from __future__ import annotations

import datetime as dt
import importlib
import logging

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr.spec import BaselineRef, parse_spec

logger = logging.getLogger("mlflow_okr")


class SuggestedKeyResult(BaseModel):
    objective: str
    kr: str
    title: str
    baseline: str
    target: str


class NextCycle(BaseModel):
    """Next cycle's draft okrs.yaml (with its reasoning as comments) and its KRs as rows."""

    cycle: str
    key_results: list[SuggestedKeyResult]
    text: str


def _number_text(value: object) -> str:
    if isinstance(value, BaselineRef):
        return "from MLflow"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def next_cycle(
    client: MlflowClient, tracking_uri: str, cycle: str, now: dt.datetime, team: str | None = None
) -> NextCycle | None:
    """The draft for the cycle after `cycle` (of `team`'s set); None when `mlflow_okr.suggest` is
    not available, or the cycle has several sets and no team was named (one draft per team:
    `mlflow-okr suggest`)."""
    try:
        suggest = importlib.import_module("mlflow_okr.suggest")
    except ImportError:
        return None
    try:
        drafts = suggest.suggest_next_cycles(from_cycle=cycle, tracking_uri=tracking_uri, now=now, team=team)
        if len(drafts) != 1:
            return None
        draft = drafts[0]
        spec = parse_spec(draft.text, f"suggested okrs.yaml for {draft.cycle}")
    except Exception as exc:  # the report stands without this section; say why it is missing
        logger.warning("mlflow-okr report: next-cycle suggestions are unavailable: %s", exc)
        return None
    rows = []
    for objective, kr in spec.key_results():
        if kr.maintain is not None:
            target = kr.maintain.bound(kr.metric or "").describe()
        else:
            target = _number_text(kr.target)
        rows.append(
            SuggestedKeyResult(
                objective=objective.title,
                kr=kr.id,
                title=kr.label,
                baseline=_number_text(kr.baseline),
                target=target,
            )
        )
    return NextCycle(cycle=draft.cycle, key_results=rows, text=draft.text)
