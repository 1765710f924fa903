"""`ledger plan`: how many runs per arm a hypothesis needs to detect the effect it expects.

Statistical power of the two-sample t-test (statsmodels' TTestIndPower), or of the one-sample
t-test on the differences for a paired hypothesis (TTestPower), at Cohen's d = |expected effect| /
standard deviation (Cohen 1988, "Statistical Power Analysis for the Behavioral Sciences").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from mlflow_okr.errors import InputError

MAX_RUNS = 1_000_000


class Plan(BaseModel):
    """`ledger plan --format json`: runs needed per arm (pairs, when paired) and what the plan rests on."""

    hypothesis: str
    metric: str
    comparison: Literal["two-sample", "paired"]
    runs_per_arm: int
    power: float
    alpha: float
    effect: float
    sd: float
    sd_source: str
    have_control: int
    have_treatment: int
    have_pairs: int | None = None
    note: str


def sample_sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def runs_needed(effect: float, sd: float, power: float, alpha: float, paired: bool) -> int:
    """The smallest whole number of runs per arm (pairs) with at least `power` at level `alpha`."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    d = abs(effect) / sd
    analysis = TTestPower() if paired else TTestIndPower()
    solved = analysis.solve_power(effect_size=d, alpha=alpha, power=power, alternative="two-sided")
    n = float(solved[0] if hasattr(solved, "__len__") else solved)
    if not math.isfinite(n) or n > MAX_RUNS:
        raise InputError(f"the expected effect {effect:.4g} is too small next to sd {sd:.4g} to plan for")
    # The t-test needs two runs per arm (pairs) whatever the effect.
    return max(2, math.ceil(n - 1e-9))


def check_levels(power: float, alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InputError(f"alpha {alpha:g} must be between 0 and 1", parameter="alpha")
    if not alpha < power < 1:
        raise InputError(f"power {power:g} must be above alpha ({alpha:g}) and below 1", parameter="power")
