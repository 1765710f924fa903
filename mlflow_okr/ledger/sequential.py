"""Anytime-valid comparisons for `ledger evaluate`: a t-mixture confidence sequence.

`ledger evaluate` is run again whenever a run lands, so a fixed-sample test checked at every look
would reach "significant" by chance far more often than its level says. A confidence sequence
holds at every look at once: under the null, the chance that it *ever* excludes the true effect is
at most alpha, however often and whenever it is looked at.

Method. Runs are modelled as independent normal draws with an unknown variance, the same in both
arms (for a paired comparison: the differences are normal). The e-value is the Bayes factor of
the t statistic with a normal prior on the standardised effect, delta ~ N(0, g):

    BF = (1 + n_eff g)^(-1/2) * ((1 + t^2/nu) / (1 + t^2/(nu (1 + n_eff g))))^((nu + 1)/2)

(Gönen, Johnson, Lu and Westfall 2005, "The Bayesian two-sample t test", The American
Statistician 59(3)). Because it depends on the data only through the scale- and location-invariant
t statistic, with the nuisance parameters integrated out under the right Haar prior, it is a
nonnegative martingale under the null whatever the unknown mean and variance (Lai 1976, "On
confidence sequences", Annals of Statistics 4(2); Pérez-Ortiz, Lardy, de Heide and Grünwald 2024,
"E-statistics, group invariance and anytime-valid testing", Annals of Statistics 52(4)), so by
Ville's inequality it exceeds 1/alpha with probability at most alpha, ever. Unlike a plug-in
variance (Johari et al. 2017), this stays valid with two or three runs per arm, where ML ledgers
live. The confidence sequence collects the effects that this test does not reject; the sequential
p-value is 1/BF, and across looks the p-value is the running minimum and the interval the running
intersection (Johari, Koomen, Pekelis and Walsh 2017, "Peeking at A/B tests", KDD; Howard,
Ramdas, McAuliffe and Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 49(2)), which keeps the same guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

METHOD = "t-mixture confidence sequence (normal prior on the standardised effect, g=1)"
PRIOR_VARIANCE = 1.0  # g: standardised effects around one standard deviation; fixed in advance


def bayes_factor(t: float, nu: float, n_eff: float, g: float = PRIOR_VARIANCE) -> float:
    """The t-mixture e-value for a t statistic with `nu` degrees of freedom and effective size n_eff."""
    if nu < 1 or n_eff <= 0:
        return 1.0  # the invariant carries no information about the effect yet
    a = 1.0 + n_eff * g
    u = t * t / nu
    # For |t| so large that t^2 overflows, the ratio has reached its limit a.
    log_ratio = math.log(a) if math.isinf(u) else math.log1p(u) - math.log1p(u / a)
    return math.exp((nu + 1) / 2 * log_ratio - 0.5 * math.log(a))


def p_value(t: float, nu: float, n_eff: float, g: float = PRIOR_VARIANCE) -> float:
    """The anytime-valid p-value of one look: min(1, 1/BF)."""
    return min(1.0, 1.0 / bayes_factor(t, nu, n_eff, g))


def critical_t(nu: float, n_eff: float, alpha: float, g: float = PRIOR_VARIANCE) -> float | None:
    """The |t| at which BF reaches 1/alpha; None when no data of this size can reach it."""
    if nu < 1 or n_eff <= 0:
        return None
    a = 1.0 + n_eff * g
    # BF = 1/alpha  <=>  (1 + u) / (1 + u/a) = r, with u = t^2/nu.
    log_r = (math.log(1 / alpha) + 0.5 * math.log(a)) / ((nu + 1) / 2)
    if log_r >= math.log(a):
        return None  # the ratio never exceeds a: the interval is still the whole line
    r = math.exp(log_r)
    u = (r - 1) / (1 - r / a)
    return math.sqrt(nu * u)


@dataclass(frozen=True)
class Look:
    """One look's anytime-valid result for an effect estimated as `effect` with standard error `se`."""

    p_value: float
    ci_low: float | None
    ci_high: float | None


def look(effect: float, se: float, nu: float, n_eff: float, alpha: float) -> Look:
    """The sequential p-value (for effect 0) and confidence-sequence interval at this look."""
    if se <= 0 or not math.isfinite(se):
        return Look(p_value=1.0, ci_low=None, ci_high=None)
    t = effect / se
    width = critical_t(nu, n_eff, alpha)
    if width is None:
        return Look(p_value=p_value(t, nu, n_eff), ci_low=None, ci_high=None)
    return Look(p_value=p_value(t, nu, n_eff), ci_low=effect - width * se, ci_high=effect + width * se)


def running(current: Look, previous: Look | None) -> Look:
    """Combine with the earlier looks' running result: minimum p-value, intersected interval."""
    if previous is None:
        return current
    lows = [value for value in (current.ci_low, previous.ci_low) if value is not None]
    highs = [value for value in (current.ci_high, previous.ci_high) if value is not None]
    return Look(
        p_value=min(current.p_value, previous.p_value),
        ci_low=max(lows) if lows else None,
        ci_high=min(highs) if highs else None,
    )
