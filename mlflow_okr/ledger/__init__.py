"""The experiment-history ledger: hypotheses, their evidence runs, verdicts and learnings."""

from mlflow_okr.ledger.api import (
    add_hypothesis,
    evaluate_hypothesis,
    export_ledger,
    get_hypothesis,
    hypotheses_frame,
    import_ledger,
    link_runs,
    list_hypotheses,
    resolve_hypothesis,
    search_hypotheses,
    verify_ledger,
)
from mlflow_okr.ledger.io import ImportResult
from mlflow_okr.ledger.models import Evaluation, Event, Evidence, Hypothesis
from mlflow_okr.ledger.verify import VerifyResult

__all__ = [
    "Evaluation",
    "Event",
    "Evidence",
    "Hypothesis",
    "ImportResult",
    "VerifyResult",
    "add_hypothesis",
    "evaluate_hypothesis",
    "export_ledger",
    "get_hypothesis",
    "hypotheses_frame",
    "import_ledger",
    "link_runs",
    "list_hypotheses",
    "resolve_hypothesis",
    "search_hypotheses",
    "verify_ledger",
]
