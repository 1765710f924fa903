"""Counter-metrics of a hypothesis: `--guardrail "p99_ms<=+5%"` and its non-inferiority check.

A guardrail holds when the confidence interval of (treatment - control) on its metric lies wholly
on the allowed side of the margin: the treatment is shown not to be worse by more than the margin
(a non-inferiority test, one-sided at half the level of the two-sided interval, as in the CONSORT
statement on non-inferiority trials, Piaggio et al. 2012, JAMA 308(24)). It is breached when the
interval lies wholly beyond the margin, and inconclusive otherwise.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from mlflow_okr.errors import InputError

GUARDRAIL = re.compile(
    r"^\s*(?P<metric>[^<>=\s][^<>=]*?)\s*(?P<op><=|>=)\s*(?P<sign>[+-])?\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<percent>%)?\s*$"
)
GuardrailVerdict = Literal["holds", "breached", "inconclusive"]


class GuardrailSpec(BaseModel):
    """`metric<=+5%`: the treatment may raise `metric` by at most 5% of the control mean."""

    text: str
    metric: str
    upper: bool  # `<=`: larger is worse; `>=`: smaller is worse
    margin: float  # signed change allowed, in metric units or as a fraction of the control mean
    relative: bool

    def absolute_margin(self, reference: float | None) -> float | None:
        """The allowed change in metric units; None when relative to an unknown or zero mean."""
        if not self.relative:
            return self.margin
        if reference is None or reference == 0:
            return None
        return self.margin * abs(reference)


def parse_guardrail(text: str) -> GuardrailSpec:
    """`p99_ms<=+5%`, `accuracy>=-0.5%`, `latency_ms<=3`; InputError for anything else."""
    match = GUARDRAIL.match(text or "")
    if not match:
        raise InputError(
            f"bad guardrail {text!r}: use METRIC<=CHANGE or METRIC>=CHANGE, where CHANGE is relative "
            'to the control mean ("p99_ms<=+5%", "accuracy>=-1%") or in metric units ("p99_ms<=3")',
            parameter="guardrails",
        )
    upper = match.group("op") == "<="
    value = float(match.group("number")) * (-1 if match.group("sign") == "-" else 1)
    relative = match.group("percent") is not None
    if relative:
        value /= 100
    if (upper and value < 0) or (not upper and value > 0):
        raise InputError(
            f"bad guardrail {text!r}: the margin allows the metric to get worse, so it is "
            f"{'+' if upper else '-'}N with {match.group('op')} (e.g. "
            f"{match.group('metric')}{match.group('op')}{'+' if upper else '-'}5%)",
            parameter="guardrails",
        )
    return GuardrailSpec(text=text.strip(), metric=match.group("metric"), upper=upper, margin=value,
                         relative=relative)


class GuardrailResult(BaseModel):
    """One guardrail's check in `ledger evaluate --format json`."""

    guardrail: str
    metric: str
    margin: float | None = None
    control_n: int = 0
    treatment_n: int = 0
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: GuardrailVerdict
    reason: str


def judge(spec: GuardrailSpec, margin: float, low: float, high: float) -> tuple[GuardrailVerdict, str]:
    """Compare the interval of (treatment - control) with the margin on the guardrail's bad side."""
    interval = f"[{low:.4g}, {high:.4g}]"
    if spec.upper:
        if high <= margin:
            return "holds", f"{spec.metric} rises by at most {high:.4g} {interval}, within +{margin:.4g}"
        if low > margin:
            return "breached", f"{spec.metric} rises by more than the margin +{margin:.4g} {interval}"
        return "inconclusive", f"{interval} includes the margin +{margin:.4g}; collect more runs"
    if low >= margin:
        return "holds", f"{spec.metric} falls by at most {-low:.4g} {interval}, within {margin:.4g}"
    if high < margin:
        return "breached", f"{spec.metric} falls by more than the margin {margin:.4g} {interval}"
    return "inconclusive", f"{interval} includes the margin {margin:.4g}; collect more runs"
