"""The statistics behind `ledger evaluate`: the arms' difference in means, a suggested verdict.

Welch's t-test between the arms; a one-sample t-test against the linked KR's baseline when there
is no control arm; a paired t-test on the differences when the hypothesis pairs runs (`--pair-by`).
Every look also gets an anytime-valid result (`sequential`), which the verdict uses from the second
look on, and each guardrail a non-inferiority check (`guardrails`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special

from mlflow_okr.ledger import sequential
from mlflow_okr.ledger.guardrails import GuardrailResult, GuardrailSpec, judge
from mlflow_okr.ledger.models import ArmSummary, Evaluation, Expectation
from mlflow_okr.multiplicity import ALPHA

CONFIDENCE = 1 - ALPHA  # 0.95
MIN_RUNS_PER_ARM = 2
NO_VARIANCE = (
    "every run in the compared arms has the same value, so there is no variance to test; "
    "add more varied runs"
)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _variance(values: Sequence[float], mean: float) -> float:
    return math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1)


@dataclass(frozen=True)
class Estimate:
    """A difference in means with what both inferences need: fixed-sample and sequential."""

    effect: float
    se: float  # the fixed-sample test's standard error (Welch's for two samples)
    df: float
    sequential_se: float  # pooled-variance standard error, the one the t-mixture is built on
    sequential_df: float
    n_eff: float

    def interval(self) -> tuple[float, float, float]:
        """The fixed-sample (low, high, two-sided p-value)."""
        quantile = float(special.stdtrit(self.df, 1 - ALPHA / 2))
        p_value = 2 * float(special.stdtr(self.df, -abs(self.effect / self.se)))
        return self.effect - quantile * self.se, self.effect + quantile * self.se, min(1.0, p_value)

    def look(self) -> sequential.Look:
        return sequential.look(self.effect, self.sequential_se, self.sequential_df, self.n_eff, ALPHA)


def two_sample(treatment: Sequence[float], control: Sequence[float]) -> Estimate | None:
    """treatment - control, Welch's standard error; None when neither arm varies."""
    n1, n2 = len(treatment), len(control)
    m1, m2 = math.fsum(treatment) / n1, math.fsum(control) / n2
    v1, v2 = _variance(treatment, m1), _variance(control, m2)
    a, b = v1 / n1, v2 / n2
    if a + b <= 0:
        return None
    # Welch-Satterthwaite degrees of freedom, written with the share w of the first arm's variance so
    # that tiny variances do not underflow to 0 / 0.
    w = a / (a + b)
    df = 1 / (w * w / (n1 - 1) + (1 - w) * (1 - w) / (n2 - 1))
    pooled = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
    return Estimate(
        effect=m1 - m2, se=math.sqrt(a + b), df=df,
        sequential_se=math.sqrt(pooled * (1 / n1 + 1 / n2)), sequential_df=n1 + n2 - 2,
        n_eff=n1 * n2 / (n1 + n2),
    )


def one_sample(values: Sequence[float], reference: float) -> Estimate | None:
    """mean(values) - reference (also the paired test, on differences with reference 0)."""
    n = len(values)
    mean = math.fsum(values) / n
    variance = _variance(values, mean)
    if variance <= 0:
        return None
    se = math.sqrt(variance / n)
    return Estimate(effect=mean - reference, se=se, df=n - 1, sequential_se=se, sequential_df=n - 1, n_eff=n)


@dataclass(frozen=True)
class GuardrailData:
    """A guardrail with its metric's values in each arm (and per pair, for a paired comparison)."""

    spec: GuardrailSpec
    control: Sequence[float]
    treatment: Sequence[float]
    pairs: Sequence[tuple[float, float]] | None = None


def compare(
    hypothesis_id: str,
    metric: str | None,
    control: Sequence[float],
    treatment: Sequence[float],
    baseline: float | None = None,
    expectation: Expectation | None = None,
    direction: str | None = None,
    *,
    pairs: Sequence[tuple[float, float]] | None = None,
    guardrails: Sequence[GuardrailData] = (),
    looks: int = 1,
    previous: sequential.Look | None = None,
) -> Evaluation:
    """Compare treatment with control (or with `baseline` when there is no control arm).

    `pairs` makes it a paired comparison of (control, treatment) values. `looks` is how many times
    the hypothesis has been evaluated on different evidence, this time included; from the second
    look on the verdict is judged on the confidence sequence, combined with the `previous` look's.
    """
    paired = pairs is not None
    if paired:
        control, treatment = [c for c, _ in pairs], [t for _, t in pairs]
    one_sample_test = not paired and not control and baseline is not None
    control_summary = ArmSummary(n=len(control), mean=_mean(control) if control else baseline)
    treatment_summary = ArmSummary(n=len(treatment), mean=_mean(treatment))
    base = {"hypothesis": hypothesis_id, "metric": metric, "control": control_summary,
            "treatment": treatment_summary, "confidence": CONFIDENCE, "looks": looks}
    if paired:
        base["pairs"] = len(pairs)
    comparison = "paired" if paired else "one-sample" if one_sample_test else "welch"

    def inconclusive(reason: str, comparison: str = "none", **numbers: float | None) -> Evaluation:
        return Evaluation(
            **base, comparison=comparison, suggested_verdict="inconclusive", reason=reason, **numbers
        )

    if metric is None:
        return inconclusive("no metric to compare: give the hypothesis a metric or link it to a metric KR")
    short = []
    if paired:
        if len(pairs) < MIN_RUNS_PER_ARM:
            short.append(f"{len(pairs)} pair(s) of runs with {metric}")
    else:
        if not one_sample_test and len(control) < MIN_RUNS_PER_ARM:
            short.append(f"control has {len(control)} run(s) with {metric}")
        if len(treatment) < MIN_RUNS_PER_ARM:
            short.append(f"treatment has {len(treatment)} run(s) with {metric}")
    if short:
        need = f"need at least {MIN_RUNS_PER_ARM} {'pairs' if paired else 'per arm'}"
        if not paired and not control and baseline is None:
            need += " (or a linked metric KR whose baseline can stand in for the control arm)"
        return inconclusive(f"too little data: {', '.join(short)}; {need}")

    reference = baseline if one_sample_test else control_summary.mean
    assert reference is not None and treatment_summary.mean is not None
    effect = treatment_summary.mean - reference
    relative_effect = effect / abs(reference) if reference else None
    if paired:
        estimate = one_sample([t - c for c, t in pairs], 0.0)
    elif one_sample_test:
        estimate = one_sample(treatment, reference)
    else:
        estimate = two_sample(treatment, control)
    expected = expectation.absolute(reference) if expectation else None
    numbers = {"effect": effect, "relative_effect": relative_effect, "expected_effect": expected}
    if estimate is None:
        return inconclusive(NO_VARIANCE, comparison, **numbers)

    low, high, p_value = estimate.interval()
    look = sequential.running(estimate.look(), previous)
    numbers.update(
        ci_low=low, ci_high=high, p_value=p_value, sequential_method=sequential.METHOD,
        sequential_p_value=look.p_value, sequential_ci_low=look.ci_low, sequential_ci_high=look.ci_high,
    )
    use_sequential = looks > 1
    if not use_sequential:
        verdict, reason = suggest_verdict(low, high, expected, expectation, direction)
    elif look.ci_low is None or look.ci_high is None:
        verdict = "inconclusive"
        reason = "the confidence sequence does not bound the effect yet; collect more runs"
    elif look.ci_low > look.ci_high:
        verdict, reason = "inconclusive", (
            "the confidence sequence is empty: the looks disagree more than normal runs with equal "
            "variances allow; check the runs"
        )
    else:
        verdict, reason = suggest_verdict(
            look.ci_low, look.ci_high, expected, expectation, direction, label="confidence sequence"
        )
    if use_sequential:
        reason = (f"evaluated on {looks} different sets of runs, so judged on the anytime-valid "
                  f"confidence sequence: {reason}")
    checks = [_check_guardrail(g, use_sequential) for g in guardrails]
    verdict, reason = _apply_guardrails(verdict, reason, checks)
    return Evaluation(
        **base, comparison=comparison, suggested_verdict=verdict, reason=reason, guardrails=checks,
        verdict_basis="sequential" if use_sequential else "fixed", **numbers,
    )


def _check_guardrail(data: GuardrailData, use_sequential: bool) -> GuardrailResult:
    spec = data.spec
    if data.pairs is not None:
        control, treatment = [c for c, _ in data.pairs], [t for _, t in data.pairs]
    else:
        control, treatment = list(data.control), list(data.treatment)
    counts = {"guardrail": spec.text, "metric": spec.metric, "control_n": len(control),
              "treatment_n": len(treatment)}
    if len(control) < MIN_RUNS_PER_ARM or len(treatment) < MIN_RUNS_PER_ARM:
        return GuardrailResult(**counts, verdict="inconclusive", reason=(
            f"too little data: need at least {MIN_RUNS_PER_ARM} runs with {spec.metric} in each arm "
            "(a guardrail compares with the control arm)"))
    control_mean = math.fsum(control) / len(control)
    margin = spec.absolute_margin(control_mean)
    estimate_value = math.fsum(treatment) / len(treatment) - control_mean
    counts.update(margin=margin, estimate=estimate_value)
    if margin is None:
        return GuardrailResult(**counts, verdict="inconclusive",
                               reason=f"the margin {spec.text} is relative to a zero control mean")
    if data.pairs is not None:
        estimate = one_sample([t - c for c, t in data.pairs], 0.0)
    else:
        estimate = two_sample(treatment, control)
    if estimate is None:
        low = high = estimate_value  # no variance: the difference is known exactly
    elif use_sequential:
        look = estimate.look()
        if look.ci_low is None or look.ci_high is None:
            return GuardrailResult(**counts, verdict="inconclusive", reason=(
                "the confidence sequence does not bound the change yet; collect more runs"))
        low, high = look.ci_low, look.ci_high
    else:
        low, high, _ = estimate.interval()
    verdict, reason = judge(spec, margin, low, high)
    return GuardrailResult(**counts, ci_low=low, ci_high=high, verdict=verdict, reason=reason)


def _apply_guardrails(verdict: str, reason: str, checks: list[GuardrailResult]) -> tuple[str, str]:
    """A breached guardrail invalidates; a validated one needs every guardrail shown to hold."""
    breached = [check for check in checks if check.verdict == "breached"]
    if breached:
        names = ", ".join(check.guardrail for check in breached)
        return "invalidated", f"guardrail {names} breached ({breached[0].reason}); the effect: {reason}"
    unsure = [check for check in checks if check.verdict != "holds"]
    if verdict == "validated" and unsure:
        names = ", ".join(check.guardrail for check in unsure)
        return "inconclusive", (
            f"{reason}, but guardrail {names} is not shown to hold yet ({unsure[0].reason})"
        )
    return verdict, reason


def suggest_verdict(
    low: float,
    high: float,
    expected: float | None,
    expectation: Expectation | None,
    direction: str | None,
    label: str = "CI",
) -> tuple[str, str]:
    """Judge the confidence interval of the effect against the expected effect.

    validated: the interval excludes zero on the expected side and does not rule out the expected
    effect. invalidated: the interval lies wholly short of the expected effect (including a
    significant effect the other way). inconclusive: the interval spans both 0 and the expected
    effect, so more runs are needed.
    """
    percent = f"{CONFIDENCE:.0%}"
    interval = f"{percent} {label} [{low:.4g}, {high:.4g}]"
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
