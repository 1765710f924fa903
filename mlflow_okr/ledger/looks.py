"""Looks at a hypothesis: how many evaluations on different evidence it has had, and the running
sequential result of the last recorded one, which the next look combines with its own."""

from __future__ import annotations

from mlflow_okr.ledger.models import Evaluation
from mlflow_okr.ledger.sequential import Look


def tested_looks(evaluation: dict) -> int:
    """How many looks with a test the recorded evaluation had counted."""
    looks = evaluation.get("looks", 1 if evaluation.get("p_value") is not None else 0)
    return looks if isinstance(looks, int) and looks >= 0 else 0


def previous_look(last: dict, current: Evaluation) -> Look | None:
    """The recorded running sequential result, when it is about the same comparison."""
    same = all(last.get(key) == getattr(current, key) for key in ("metric", "comparison", "pair_by"))
    p_value = last.get("sequential_p_value")
    if not same or not isinstance(p_value, (int, float)):
        return None
    return Look(p_value=float(p_value), ci_low=last.get("sequential_ci_low"),
                ci_high=last.get("sequential_ci_high"))


def same_evidence(last: dict, current: Evaluation) -> bool:
    """Whether `current` looks at the data the recorded evaluation looked at (no new look)."""
    dumped = current.model_dump(mode="json")
    return last.get("p_value") is not None and all(
        last.get(key) == dumped[key]
        for key in ("metric", "comparison", "pair_by", "pairs", "control", "treatment")
    )
