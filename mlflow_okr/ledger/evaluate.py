"""The statistics behind `ledger evaluate`: Welch's t-test between the arms, or a one-sample test
against the linked KR's baseline when there is no control arm, and a suggested verdict."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from mlflow_okr.ledger.models import ArmSummary, Evaluation, Expectation

CONFIDENCE = 0.95
MIN_RUNS_PER_ARM = 2


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if values else 0.0


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def compare(
    hypothesis_id: str,
    metric: str | None,
    control: Sequence[float],
    treatment: Sequence[float],
    baseline: float | None = None,
    expectation: Expectation | None = None,
    direction: str | None = None,
) -> Evaluation:
    """Compare treatment with control (or with `baseline` when there is no control arm)."""
    from scipy import stats

    one_sample = not control and baseline is not None
    control_summary = ArmSummary(n=len(control), mean=_mean(control) if control else baseline)
    treatment_summary = ArmSummary(n=len(treatment), mean=_mean(treatment))
    base = {"hypothesis": hypothesis_id, "metric": metric, "control": control_summary,
            "treatment": treatment_summary, "confidence": CONFIDENCE}

    def inconclusive(reason: str, comparison: str = "none", **numbers: float | None) -> Evaluation:
        return Evaluation(
            **base, comparison=comparison, suggested_verdict="inconclusive", reason=reason, **numbers
        )

    if metric is None:
        return inconclusive("no metric to compare: give the hypothesis --metric or link it to a metric KR")
    short = []
    if not one_sample and len(control) < MIN_RUNS_PER_ARM:
        short.append(f"control has {len(control)} run(s) with {metric}")
    if len(treatment) < MIN_RUNS_PER_ARM:
        short.append(f"treatment has {len(treatment)} run(s) with {metric}")
    if short:
        need = f"need at least {MIN_RUNS_PER_ARM} per arm"
        if not control and baseline is None:
            need += " (or a linked metric KR whose baseline can stand in for the control arm)"
        return inconclusive(f"too little data: {', '.join(short)}; {need}")

    treatment_mean = treatment_summary.mean
    assert treatment_mean is not None
    if _spread(treatment) == 0 and (one_sample or _spread(control) == 0):
        effect = treatment_mean - (baseline if one_sample else control_summary.mean)
        reference = baseline if one_sample else control_summary.mean
        return inconclusive(
            "every run in the compared arms has the same value, so there is no variance to test; "
            "add more varied runs",
            "one-sample" if one_sample else "welch",
            effect=effect,
            relative_effect=effect / abs(reference) if reference else None,
        )
    if one_sample:
        assert baseline is not None
        effect = treatment_mean - baseline
        with warnings.catch_warnings():
            # Nearly identical values make scipy warn about precision; the interval shows it.
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.ttest_1samp(list(treatment), baseline)
        comparison = "one-sample"
        reference = baseline
    else:
        control_mean = control_summary.mean
        assert control_mean is not None
        effect = treatment_mean - control_mean
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.ttest_ind(list(treatment), list(control), equal_var=False)
        comparison = "welch"
        reference = control_mean
    relative_effect = effect / abs(reference) if reference else None
    expected = expectation.absolute(reference) if expectation else None
    numbers = {"effect": effect, "relative_effect": relative_effect, "expected_effect": expected}

    p_value = _finite(result.pvalue)
    if p_value is None:
        return inconclusive(
            "every run in the compared arms has the same value, so there is no variance to test; "
            "add more varied runs", comparison, **numbers,
        )
    interval = result.confidence_interval(confidence_level=CONFIDENCE)
    low, high = float(interval.low), float(interval.high)
    if one_sample:
        # scipy's interval is for the treatment mean; shift it to the effect over the baseline.
        low, high = low - baseline, high - baseline
    numbers.update(ci_low=low, ci_high=high, p_value=p_value)
    verdict, reason = suggest_verdict(low, high, expected, expectation, direction)
    return Evaluation(**base, comparison=comparison, suggested_verdict=verdict, reason=reason, **numbers)


def suggest_verdict(
    low: float,
    high: float,
    expected: float | None,
    expectation: Expectation | None,
    direction: str | None,
) -> tuple[str, str]:
    """Judge the confidence interval of the effect against the expected effect.

    validated: the interval excludes zero on the expected side and does not rule out the expected
    effect. invalidated: the interval lies wholly short of the expected effect (including a
    significant effect the other way). inconclusive: the interval spans both 0 and the expected
    effect, so more runs are needed.
    """
    percent = f"{CONFIDENCE:.0%}"
    interval = f"{percent} CI [{low:.4g}, {high:.4g}]"
    if expectation is not None and expected is None:
        return "inconclusive", (
            f"the expected effect {expectation.text} is relative to a zero or unknown reference mean"
        )
    if expected is not None:
        sign = 1.0 if expected > 0 else -1.0
    else:
        sign = -1.0 if direction == "minimize" else 1.0
    near, far = (low, high) if sign > 0 else (-high, -low)
    wanted = "an increase" if sign > 0 else "a decrease"
    if expected is None:
        where = f"no expected effect given, judged on {wanted}"
        if near > 0:
            return "validated", f"{interval} shows {wanted} ({where})"
        if far < 0:
            return "invalidated", f"{interval} shows the opposite of {wanted} ({where})"
        return "inconclusive", f"{interval} includes 0 ({where}); collect more runs"
    target = sign * expected
    if near > 0 and far >= target:
        return "validated", f"{interval} excludes 0 and is consistent with the expected effect {expected:.4g}"
    if far < target:
        if far < 0:
            return "invalidated", f"{interval} shows an effect opposite to the expected {expected:.4g}"
        return "invalidated", (
            f"{interval} rules out the expected effect {expected:.4g}: any effect is smaller"
        )
    return "inconclusive", (
        f"{interval} includes both 0 and the expected effect {expected:.4g}; collect more runs"
    )
