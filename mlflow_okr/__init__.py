"""mlflow-okr: objectives and key results, tracked live in MLflow.

The names below are imported on first use, so that `import mlflow_okr` (and the commands that
never talk to MLflow: `mlflow-okr --help`, `init`, `schema`) do not pay for importing MLflow.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "Checkin": "mlflow_okr.api",
    "apply_spec": "mlflow_okr.api",
    "checkin": "mlflow_okr.api",
    "status": "mlflow_okr.api",
    "status_frame": "mlflow_okr.api",
    "sync": "mlflow_okr.api",
    "CheckFailed": "mlflow_okr.errors",
    "InputError": "mlflow_okr.errors",
    "NotPublishedError": "mlflow_okr.errors",
    "OkrError": "mlflow_okr.errors",
    "SpecError": "mlflow_okr.errors",
    "add_hypothesis": "mlflow_okr.ledger",
    "evaluate_hypothesis": "mlflow_okr.ledger",
    "export_ledger": "mlflow_okr.ledger",
    "get_hypothesis": "mlflow_okr.ledger",
    "import_ledger": "mlflow_okr.ledger",
    "ledger_summary": "mlflow_okr.ledger",
    "link_runs": "mlflow_okr.ledger",
    "list_hypotheses": "mlflow_okr.ledger",
    "plan_hypothesis": "mlflow_okr.ledger",
    "resolve_hypothesis": "mlflow_okr.ledger",
    "search_hypotheses": "mlflow_okr.ledger",
    "verify_ledger": "mlflow_okr.ledger",
    "CycleStatus": "mlflow_okr.results",
    "KeyResultStatus": "mlflow_okr.results",
    "ObjectiveStatus": "mlflow_okr.results",
    "OkrSpec": "mlflow_okr.spec",
    "json_schema": "mlflow_okr.spec",
    "load_spec": "mlflow_okr.spec",
    "parse_spec": "mlflow_okr.spec",
    "suggest_next_cycle": "mlflow_okr.suggest",
    "CheckReport": "mlflow_okr.checks",
    "check_okrs": "mlflow_okr.practice",
    "annotated_status": "mlflow_okr.practice",
    "effort_status": "mlflow_okr.practice",
    "weekly_review": "mlflow_okr.practice",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlflow_okr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule mlflow_okr.sync binds it on the package as `sync`, which would
        # hide the API function `mlflow_okr.sync`; eager imports used to rebind it afterwards.
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
