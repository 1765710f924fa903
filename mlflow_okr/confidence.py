"""Confidence: the chance a metric KR reaches its target by the cycle's end at its current pace.

The model, stated once (docs/practices.md repeats it):

- the points are the KR's recorded `okr.value` history this cycle, up to now: (t_i, v_i) with t in
  days since the cycle's start;
- an ordinary least-squares line v = a + b t through them, residual variance
  s^2 = sum (v_i - a - b t_i)^2 / (n - 2);
- at the cycle's end T the line projects v_T = a + b T, with the standard error of a new value at
  T, se = s * sqrt(1 + 1/n + (T - mean t)^2 / sum (t_i - mean t)^2);
- the confidence is P(V >= target) (maximize) or P(V <= target) (minimize) for
  V = v_T + se * t_(n-2), Student's t with n - 2 degrees of freedom (scipy.stats.t).

A KR whose current value already reaches the target has confidence 1. With fewer than MIN_POINTS
points, or all at one time, there is no line and no confidence. A perfect line (s = 0) gives 1 or
0. Only metric KRs with a resolved target and direction get one.
"""

from __future__ import annotations

import datetime as dt
import math

from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.practice_results import Confidence
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.spec import Cycle, as_utc

MIN_POINTS = 3  # two points fit any line exactly and say nothing of its uncertainty
DAY_MS = vocabulary.MS_PER_DAY


def trend_confidence(
    points: list[tuple[float, float]], end_day: float, target: float, direction: str
) -> Confidence | None:
    """The model above, for (day, value) points; None without enough points for a line."""
    from scipy import stats

    n = len(points)
    if n < MIN_POINTS:
        return None
    days = [day for day, _ in points]
    values = [value for _, value in points]
    mean_day, mean_value = sum(days) / n, sum(values) / n
    sxx = sum((day - mean_day) ** 2 for day in days)
    if sxx == 0:
        return None
    slope = sum((day - mean_day) * (value - mean_value) for day, value in points) / sxx
    intercept = mean_value - slope * mean_day
    residual = sum((value - intercept - slope * day) ** 2 for day, value in points)
    s = math.sqrt(residual / (n - 2))
    projected = intercept + slope * end_day
    se = s * math.sqrt(1 + 1 / n + (end_day - mean_day) ** 2 / sxx)
    sign = 1.0 if direction == "maximize" else -1.0
    if se == 0:
        probability = 1.0 if sign * (projected - target) >= 0 else 0.0
    else:
        # P(sign x (V - target) >= 0) with V = projected + se x T.
        probability = float(stats.t.sf(sign * (target - projected) / se, n - 2))
    return Confidence(
        probability=probability, projected=projected, standard_error=se, slope_per_day=slope, points=n
    )


def kr_confidence(
    client: MlflowClient, kr: KeyResultStatus, cycle: Cycle, now: dt.datetime
) -> Confidence | None:
    """The confidence of a metric KR from its `okr.value` history this cycle, up to `now`."""
    if kr.kind != "metric" or kr.run_id is None or kr.target is None or kr.direction is None:
        return None
    now_ms = min(int(as_utc(now).timestamp() * 1000), cycle.end_ms)
    points = sorted(
        ((timestamp - cycle.start_ms) / DAY_MS, value)
        for timestamp, value in state.kr_values(client, kr.run_id)
        if cycle.start_ms <= timestamp <= now_ms and math.isfinite(value)
    )
    end_day = (cycle.end_ms + 1 - cycle.start_ms) / DAY_MS
    reached = kr.current is not None and (
        kr.current >= kr.target if kr.direction == "maximize" else kr.current <= kr.target
    )
    found = trend_confidence(points, end_day, kr.target, kr.direction)
    if reached and found is not None:
        return found.model_copy(update={"probability": 1.0})
    return found


def with_confidence(client: MlflowClient, status: CycleStatus, now: dt.datetime | None = None) -> CycleStatus:
    """`status` with each metric KR's confidence (innermost and enclosing cycles)."""
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    cycles = []
    for cycle_status in [status, *status.enclosing_cycles]:
        info = cycle_status.cycle
        cycle = Cycle(name=info.name, start=info.start, end=info.end)
        objectives = [
            objective.model_copy(update={"key_results": [
                kr.model_copy(update={"confidence": kr_confidence(client, kr, cycle, now)})
                for kr in objective.key_results
            ]})
            for objective in cycle_status.objectives
        ]
        cycles.append(cycle_status.model_copy(update={"objectives": objectives}))
    first, *rest = cycles
    return first.model_copy(update={"enclosing_cycles": rest})


def confidence_lines(status: CycleStatus) -> list[str]:
    """For the status table: each metric KR's confidence, one line."""
    krs = [kr for kr in status.key_results() if kr.kind == "metric"]
    if not krs:
        return []
    lines = [f"Confidence of reaching the target by {status.cycle.end} at the current pace "
             f"(linear trend of {vocabulary.METRIC_VALUE} this cycle):"]
    for kr in krs:
        if kr.confidence is None:
            lines.append(f"  {kr.id}: — (fewer than {MIN_POINTS} recorded values)")
        else:
            c = kr.confidence
            lines.append(
                f"  {kr.id}: {c.probability:.0%} (projects {c.projected:.4g} ± {c.standard_error:.2g}, "
                f"{c.points} points)"
            )
    return lines


def confidence_label(kr: KeyResultStatus) -> str:
    """` (62% to reach it)` beside a status, or nothing when the KR has no confidence."""
    return f" ({kr.confidence.probability:.0%} to reach it)" if kr.confidence is not None else ""
