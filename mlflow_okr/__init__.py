"""mlflow-okr: objectives and key results, tracked live in MLflow."""

from mlflow_okr.api import Checkin, apply_spec, checkin, status, status_frame, sync
from mlflow_okr.errors import CheckFailed, InputError, NotPublishedError, OkrError, SpecError
from mlflow_okr.results import CycleStatus, KeyResultStatus, ObjectiveStatus
from mlflow_okr.spec import OkrSpec, json_schema, load_spec, parse_spec

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
    "apply_spec",
    "checkin",
    "json_schema",
    "load_spec",
    "parse_spec",
    "status",
    "status_frame",
    "sync",
]
