"""A cycle's track record: what the ledger tried, what held up, and the q-values across the cycle."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from pydantic import BaseModel

from mlflow_okr import multiplicity
from mlflow_okr.ledger.models import Hypothesis

RESOLVED = ("validated", "invalidated", "inconclusive")


class WinRate(BaseModel):
    """Hypotheses of one objective or owner: how many were resolved and how many validated."""

    name: str | None
    tried: int
    resolved: int
    validated: int
    win_rate: float | None  # validated / resolved; None before any is resolved


class TrackRecord(BaseModel):
    """`ledger list --summary`: the cycle's hypotheses counted, win rates, validated effect per metric."""

    cycle: str | None
    tried: int
    validated: int
    invalidated: int
    inconclusive: int
    open: int
    validated_above_alpha: list[str]  # validated, yet q-value above alpha: likely false discoveries
    alpha: float = multiplicity.ALPHA
    by_objective: list[WinRate]
    by_owner: list[WinRate]
    validated_effect: dict[str, float]  # summed effect of the validated hypotheses, per metric


def with_q_values(hypotheses: list[Hypothesis], contains: Callable[[int], bool]) -> list[Hypothesis]:
    """Copies with `q_value` set for the hypotheses of the cycle (`contains` their moment) with a p-value."""
    rows = [(h.id, h.cycle_moment, h.verdict_p_value) for h in hypotheses]
    q = multiplicity.q_values(multiplicity.family(rows, contains))
    return [h.model_copy(update={"q_value": q.get(h.id)}) for h in hypotheses]


def _win_rates(hypotheses: Iterable[Hypothesis], key: Callable[[Hypothesis], str | None]) -> list[WinRate]:
    groups: dict[str | None, list[Hypothesis]] = {}
    for hypothesis in hypotheses:
        groups.setdefault(key(hypothesis), []).append(hypothesis)
    rates = []
    for name in sorted(groups, key=lambda name: (name is None, name or "")):
        group = groups[name]
        resolved = sum(h.status in RESOLVED for h in group)
        validated = sum(h.status == "validated" for h in group)
        rates.append(WinRate(name=name, tried=len(group), resolved=resolved, validated=validated,
                             win_rate=validated / resolved if resolved else None))
    return rates


def track_record(hypotheses: list[Hypothesis], cycle: str | None) -> TrackRecord:
    """Summarise `hypotheses` (those of one cycle, `q_value` set by `with_q_values`)."""
    counts = {status: sum(h.status == status for h in hypotheses) for status in RESOLVED}
    effects: dict[str, list[float]] = {}
    for h in hypotheses:
        effect = (h.evaluation or {}).get("effect")
        metric = h.metric or (h.evaluation or {}).get("metric")
        if h.status == "validated" and metric and isinstance(effect, (int, float)) and math.isfinite(effect):
            effects.setdefault(metric, []).append(float(effect))
    return TrackRecord(
        cycle=cycle,
        tried=len(hypotheses),
        open=sum(h.is_open for h in hypotheses),
        validated_above_alpha=[
            h.id for h in hypotheses if multiplicity.doubtful(h.status, h.q_value)
        ],
        by_objective=_win_rates(hypotheses, lambda h: h.objective),
        by_owner=_win_rates(hypotheses, lambda h: h.owner),
        validated_effect={metric: math.fsum(values) for metric, values in sorted(effects.items())},
        **counts,
    )
