"""Anytime-valid results of `ledger evaluate`: the t-mixture e-value, its confidence sequence, and
the simulation showing that evaluating after every run keeps false "validated" at or below alpha."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from mlflow_okr.ledger import add_hypothesis, evaluate_hypothesis, get_hypothesis, link_runs, verify_ledger
from mlflow_okr.ledger.evaluate import ALPHA, compare
from mlflow_okr.ledger.models import parse_expectation
from mlflow_okr.ledger.sequential import Look, bayes_factor, critical_t, running
from tests.conftest import make_run

CONTROL = [0.050, 0.052, 0.049, 0.051, 0.048]
TREATMENT = [0.056, 0.058, 0.055, 0.057, 0.061, 0.054]


def bayes_factor_by_integration(t: float, nu: float, n_eff: float, g: float = 1.0) -> float:
    """The same Bayes factor from its definition: the noncentral-t likelihood of t averaged over
    the prior delta ~ N(0, g), over the central-t likelihood (no effect)."""

    def integrand(delta: float) -> float:
        return stats.nct.pdf(t, nu, delta * math.sqrt(n_eff)) * stats.norm.pdf(delta, 0, math.sqrt(g))

    numerator, _ = integrate.quad(integrand, -np.inf, np.inf)
    return numerator / stats.t.pdf(t, nu)


@pytest.mark.parametrize(
    ("t", "nu", "n_eff"), [(1.3, 4, 2.5), (3.0, 10, 6.0), (0.2, 2, 1.0), (-2.5, 20, 11.0)]
)
def test_bayes_factor_matches_the_noncentral_t_integral(t, nu, n_eff) -> None:
    assert bayes_factor(t, nu, n_eff) == pytest.approx(bayes_factor_by_integration(t, nu, n_eff), rel=1e-8)


def test_one_sample_bayes_factor_is_lais_mixture() -> None:
    """Lai (1976): M_n = c / sqrt(n + c^2) * (V / (V - S^2 / (n + c^2)))^(n/2), with the prior
    mu/sigma ~ N(0, 1/c^2)."""
    values = [0.3, -0.1, 0.8, 0.5, 0.2, 0.9, -0.4]
    n, c2 = len(values), 1.0
    s_sum, v_sum = sum(values), sum(v * v for v in values)
    lai = math.sqrt(c2 / (n + c2)) * (v_sum / (v_sum - s_sum**2 / (n + c2))) ** (n / 2)
    # Lai's mixture tests mean 0 with the variance unknown but no location to estimate: the t of
    # the values about 0, n degrees of freedom short of one (the scale), n_eff = n.
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    t = mean / (sd / math.sqrt(n))
    assert bayes_factor(t, n - 1, n) == pytest.approx(lai, rel=1e-12)


def test_critical_t_is_where_the_bayes_factor_reaches_one_over_alpha() -> None:
    for nu, n_eff in ((6, 2.0), (10, 3.0), (58, 15.0)):  # 4, 6 and 30 runs per arm
        width = critical_t(nu, n_eff, ALPHA)
        assert width is not None
        assert bayes_factor(width, nu, n_eff) == pytest.approx(1 / ALPHA, rel=1e-10)
    # The largest possible e-value is (1 + n_eff)^(nu/2): with 3 runs per arm 2.5^2 < 20, so no data
    # of that size can bound the effect; with 4 per arm 3^3 > 20.
    assert (1 + 1.5) ** (4 / 2) < 1 / ALPHA < (1 + 2.0) ** (6 / 2)
    assert critical_t(4, 1.5, ALPHA) is None and critical_t(2, 1.0, ALPHA) is None


def test_compare_reports_the_confidence_sequence_by_hand_formulas() -> None:
    result = compare("h", "ctr", CONTROL, TREATMENT, expectation=parse_expectation("+5%"))
    n1, n2 = len(TREATMENT), len(CONTROL)
    pooled = ((n1 - 1) * statistics.variance(TREATMENT) + (n2 - 1) * statistics.variance(CONTROL)) / (
        n1 + n2 - 2
    )
    se = math.sqrt(pooled * (1 / n1 + 1 / n2))
    effect = statistics.fmean(TREATMENT) - statistics.fmean(CONTROL)
    nu, n_eff = n1 + n2 - 2, n1 * n2 / (n1 + n2)
    a, r = 1 + n_eff, (math.sqrt(1 + n_eff) / ALPHA) ** (2 / (nu + 1))
    width = math.sqrt(nu * (r - 1) / (1 - r / a))
    assert result.sequential_method.startswith("t-mixture confidence sequence")
    assert result.sequential_ci_low == pytest.approx(effect - width * se, rel=1e-9)
    assert result.sequential_ci_high == pytest.approx(effect + width * se, rel=1e-9)
    assert result.sequential_p_value == pytest.approx(
        1 / bayes_factor_by_integration(effect / se, nu, n_eff), rel=1e-7
    )
    # The sequence is wider than the fixed-sample interval: it holds at every look at once.
    assert result.sequential_ci_low < result.ci_low < result.ci_high < result.sequential_ci_high
    # At the first look the verdict is the fixed-sample one.
    assert result.looks == 1 and result.verdict_basis == "fixed" and result.suggested_verdict == "validated"


def test_later_looks_are_judged_on_the_confidence_sequence_and_say_so() -> None:
    result = compare("h", "ctr", CONTROL[:3], TREATMENT[:3], looks=2)
    assert result.verdict_basis == "sequential"
    assert result.reason.startswith(
        "evaluated on 2 different sets of runs, so judged on the anytime-valid confidence sequence"
    )
    assert result.verdict_p_value == result.sequential_p_value
    fixed = compare("h", "ctr", CONTROL[:3], TREATMENT[:3])
    assert fixed.suggested_verdict == "validated" and result.suggested_verdict == "inconclusive"


def test_running_result_keeps_the_smallest_p_value_and_intersects_the_intervals() -> None:
    first, second = Look(0.2, -1.0, 3.0), Look(0.4, -2.0, 2.5)
    assert running(second, first) == Look(0.2, -1.0, 2.5)
    assert running(Look(1.0, None, None), first) == Look(0.2, -1.0, 3.0)
    assert running(first, None) == first


def simulate_ever_validated(hypotheses: int, sequential: bool, seed: int = 14) -> float:
    """The share of hypotheses with no true effect ever suggested `validated` when `ledger evaluate`
    runs after every new run (arms alternating) up to 30 runs per arm."""
    rng = np.random.default_rng(seed)
    ever = 0
    for _ in range(hypotheses):
        draws = {"control": rng.normal(size=30).tolist(), "treatment": rng.normal(size=30).tolist()}
        arms: dict[str, list[float]] = {"control": [], "treatment": []}
        looks, previous = 0, None
        for index in range(60):
            arm = "control" if index % 2 == 0 else "treatment"
            arms[arm].append(draws[arm][len(arms[arm])])
            if min(len(values) for values in arms.values()) < 2:
                continue
            looks += 1
            result = compare(
                "h",
                "m",
                arms["control"],
                arms["treatment"],
                looks=looks if sequential else 1,
                previous=previous,
            )
            previous = Look(result.sequential_p_value, result.sequential_ci_low, result.sequential_ci_high)
            if result.suggested_verdict == "validated":
                ever += 1
                break
    return ever / hypotheses


def test_peeking_after_every_run_keeps_false_validations_at_or_below_alpha() -> None:
    hypotheses = 1000
    # Tolerance: two standard errors of a share estimated from 1000 hypotheses at alpha.
    tolerance = 2 * math.sqrt(ALPHA * (1 - ALPHA) / hypotheses)
    safe = simulate_ever_validated(hypotheses, sequential=True)
    naive = simulate_ever_validated(hypotheses, sequential=False)
    assert safe <= ALPHA + tolerance
    assert naive > ALPHA + tolerance
    assert (safe, naive) == (0.021, 0.157)  # fixed seed: the exact shares of this simulation


SAMPLES = st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=100, deadline=None)
@given(control=SAMPLES, treatment=SAMPLES, looks=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_runs_in_any_order_give_the_same_result(control, treatment, looks, seed) -> None:
    shuffler = random.Random(seed)
    shuffled_control, shuffled_treatment = (
        shuffler.sample(control, len(control)),
        shuffler.sample(treatment, len(treatment)),
    )
    first = compare("h", "m", control, treatment, looks=looks)
    assert compare("h", "m", shuffled_control, shuffled_treatment, looks=looks) == first
    swapped = compare("h", "m", treatment, control, looks=looks)
    # Swapping the arms mirrors the effect; the p-values are the same up to rounding.
    same = {"rel": 1e-12, "abs": 1e-300}
    assert swapped.p_value == (None if first.p_value is None else pytest.approx(first.p_value, **same))
    assert swapped.sequential_p_value == (
        None if first.sequential_p_value is None else pytest.approx(first.sequential_p_value, **same)
    )
    if first.ci_low is not None:
        assert swapped.effect == pytest.approx(-first.effect, abs=1e-9 * (1 + abs(first.effect)))
        assert swapped.ci_low == pytest.approx(-first.ci_high, rel=1e-9, abs=1e-9)


def test_a_closed_confidence_sequence_stays_closed_as_runs_arrive() -> None:
    rng = np.random.default_rng(3)
    control, treatment = rng.normal(0, 1, 30).tolist(), rng.normal(2, 1, 30).tolist()
    previous, excluded_zero, verdicts = None, False, []
    for n in range(2, 31):
        result = compare("h", "m", control[:n], treatment[:n], looks=n - 1, previous=previous)
        previous = Look(result.sequential_p_value, result.sequential_ci_low, result.sequential_ci_high)
        if excluded_zero:
            assert result.sequential_ci_low > 0 and result.suggested_verdict == "validated"
        excluded_zero = excluded_zero or (result.sequential_ci_low or 0) > 0
        verdicts.append(result.suggested_verdict)
    assert excluded_zero and verdicts[-1] == "validated"


def test_evaluate_through_mlflow_switches_to_the_sequence_on_new_evidence(client) -> None:
    experiment = client.create_experiment("seq")
    add_hypothesis("Distillation lifts accuracy", hypothesis_id="distil", metric="acc")
    control = [make_run(client, experiment, {"acc": v}) for v in (0.80, 0.82, 0.81)]
    treatment = [make_run(client, experiment, {"acc": v}) for v in (0.86, 0.88, 0.87)]
    link_runs("distil", control, arm="control")
    link_runs("distil", treatment)
    first = evaluate_hypothesis("distil")
    assert (first.looks, first.verdict_basis, first.suggested_verdict) == (1, "fixed", "validated")
    again = evaluate_hypothesis("distil")  # the same runs: the same look, nothing recorded
    assert again == first
    link_runs("distil", [make_run(client, experiment, {"acc": 0.85})])
    second = evaluate_hypothesis("distil")
    assert (second.looks, second.verdict_basis) == (2, "sequential")
    assert "judged on the anytime-valid confidence sequence" in second.reason
    expected = compare(
        "distil",
        "acc",
        [0.80, 0.82, 0.81],
        [0.86, 0.88, 0.87, 0.85],
        looks=2,
        previous=Look(first.sequential_p_value, first.sequential_ci_low, first.sequential_ci_high),
    )
    assert second == expected
    assert second.sequential_p_value == min(first.sequential_p_value, second.sequential_p_value)
    hypothesis = get_hypothesis("distil")
    assert [e.action for e in hypothesis.events].count("evaluate") == 2
    tags = client.get_run(hypothesis.run_id).data.tags
    assert float(tags["okr.ledger.verdict_p_value"]) == second.sequential_p_value


def test_verify_accepts_a_hypothesis_last_written_before_the_verdict_p_value_tags(client) -> None:
    experiment = client.create_experiment("old")
    add_hypothesis("Old one", hypothesis_id="old", metric="acc")
    link_runs("old", [make_run(client, experiment, {"acc": v}) for v in (0.80, 0.82, 0.81)], arm="control")
    link_runs("old", [make_run(client, experiment, {"acc": v}) for v in (0.86, 0.88, 0.87)])
    evaluate_hypothesis("old")
    run_id = get_hypothesis("old").run_id
    for key in ("okr.ledger.verdict_p_value", "okr.ledger.evaluated_at"):  # as 0.1.0 left them
        client.delete_tag(run_id, key)
    assert verify_ledger().problems == []
    client.set_tag(run_id, "okr.ledger.verdict_p_value", "0.5")  # but an edited one is caught
    [problem] = verify_ledger().problems
    assert problem.startswith("hypothesis 'old': tag okr.ledger.verdict_p_value is '0.5' but its events say")
