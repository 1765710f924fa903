"""The experiment-history ledger: hypotheses, their evidence runs, verdicts and learnings."""

from mlflow_okr.ledger.api import (
    add_hypothesis,
    evaluate_hypothesis,
    export_ledger,
    get_hypothesis,
    hypotheses_frame,
    import_ledger,
    ledger_summary,
    link_runs,
    list_hypotheses,
    plan_hypothesis,
    resolve_hypothesis,
    search_hypotheses,
    verify_ledger,
)
from mlflow_okr.ledger.guardrails import GuardrailResult
from mlflow_okr.ledger.io import ImportResult
from mlflow_okr.ledger.models import Evaluation, Event, Evidence, Hypothesis
from mlflow_okr.ledger.plan import Plan
from mlflow_okr.ledger.record import TrackRecord, WinRate
from mlflow_okr.ledger.verify import VerifyResult

__all__ = [
    "Evaluation",
    "Event",
    "Evidence",
    "GuardrailResult",
    "Hypothesis",
    "ImportResult",
    "Plan",
    "TrackRecord",
    "VerifyResult",
    "WinRate",
    "add_hypothesis",
    "evaluate_hypothesis",
    "export_ledger",
    "get_hypothesis",
    "hypotheses_frame",
    "import_ledger",
    "ledger_summary",
    "link_runs",
    "list_hypotheses",
    "plan_hypothesis",
    "resolve_hypothesis",
    "search_hypotheses",
    "verify_ledger",
]
