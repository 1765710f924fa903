"""The report for machines: JSON (the status object plus history and ledger) and CSV (one row per KR)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from mlflow_okr.report.model import Report
from mlflow_okr.results import status_frame

CSV_EXTRA_COLUMNS = [
    "objective_title",
    "category",
    "owner",
    "kr_title",
    "unit",
    "grade",
    "pending_runs",
    "excluded_runs",
    "best_run_name",
    "best_run_value",
    "best_run_url",
    "guardrail_breaches",
]


def report_payload(report: Report) -> dict[str, Any]:
    """The DESIGN section 5 status object, with history, evidence, ledger and next-cycle added."""
    payload = report.status.model_dump(mode="json")
    payload["as_of"] = report.as_of.isoformat()
    payload["generated_at"] = report.generated_at.isoformat()
    payload["status_counts"] = report.status_counts()
    payload["history"] = {
        kr_id: [point.model_dump(mode="json") for point in detail.history]
        for kr_id, detail in report.details.items()
    }
    payload["evidence"] = {
        kr_id: {
            "best_run": detail.best_run.model_dump(mode="json") if detail.best_run else None,
            "guardrail_breach_count": detail.guardrail_breach_count,
            "guardrail_breaches": [breach.model_dump(mode="json") for breach in detail.guardrail_breaches],
        }
        for kr_id, detail in report.details.items()
    }
    payload["ledger"] = None if report.ledger is None else [h.model_dump(mode="json") for h in report.ledger]
    payload["track_record"] = report.track_record.model_dump(mode="json") if report.track_record else None
    payload["next_cycle"] = report.next_cycle.model_dump(mode="json") if report.next_cycle else None
    return payload


def render_json(report: Report) -> str:
    """The report as indented JSON."""
    return json.dumps(report_payload(report), indent=2, default=str) + "\n"


def report_frame(report: Report) -> pd.DataFrame:
    """One row per KR: the status columns plus objective, grade, best run and breaches."""
    frame = status_frame(report.status)
    objectives = {o.id: o for o in report.status.objectives}
    extra = []
    for objective_id, kr_id in zip(frame["objective"], frame["kr"], strict=True):
        objective = objectives[objective_id]
        kr = report.status.find(kr_id)
        assert kr is not None
        detail = report.details[kr_id]
        best = detail.best_run
        extra.append(
            {
                "objective_title": objective.title,
                "category": objective.category,
                "owner": objective.owner,
                "kr_title": kr.title,
                "unit": kr.unit,
                "grade": kr.progress,
                "pending_runs": kr.pending_runs,
                "excluded_runs": kr.excluded_runs,
                "best_run_name": best.name if best else None,
                "best_run_value": best.value if best else None,
                "best_run_url": best.url if best else None,
                "guardrail_breaches": detail.guardrail_breach_count,
            }
        )
    return pd.concat([frame, pd.DataFrame(extra, columns=CSV_EXTRA_COLUMNS)], axis=1)


def render_csv(report: Report) -> str:
    """The report as CSV, one row per KR."""
    return report_frame(report).to_csv(index=False)
