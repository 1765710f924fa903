"""mlflow-okr: objectives and key results, tracked live in MLflow."""

from mlflow_okr.api import Checkin, apply_spec, checkin, status, status_frame, sync
from mlflow_okr.errors import CheckFailed, InputError, NotPublishedError, OkrError, SpecError
from mlflow_okr.ledger import (
    add_hypothesis,
    evaluate_hypothesis,
    export_ledger,
    get_hypothesis,
    import_ledger,
    ledger_summary,
    link_runs,
    list_hypotheses,
    plan_hypothesis,
    resolve_hypothesis,
    search_hypotheses,
    verify_ledger,
)
from mlflow_okr.results import CycleStatus, KeyResultStatus, ObjectiveStatus
from mlflow_okr.spec import OkrSpec, json_schema, load_spec, parse_spec
from mlflow_okr.suggest import suggest_next_cycle

__version__ = "0.1.0"

__all__ = [
    "CheckFailed",
    "Checkin",
    "CycleStatus",
    "InputError",
    "KeyResultStatus",
    "NotPublishedError",
    "ObjectiveStatus",
    "OkrError",
    "OkrSpec",
    "SpecError",
    "add_hypothesis",
    "apply_spec",
    "checkin",
    "evaluate_hypothesis",
    "export_ledger",
    "get_hypothesis",
    "import_ledger",
    "json_schema",
    "ledger_summary",
    "link_runs",
    "list_hypotheses",
    "load_spec",
    "parse_spec",
    "plan_hypothesis",
    "resolve_hypothesis",
    "search_hypotheses",
    "status",
    "status_frame",
    "suggest_next_cycle",
    "sync",
    "verify_ledger",
]
