"""Paired comparisons (`--pair-by`) and counter-metric guardrails (`--guardrail`) of `ledger evaluate`."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from mlflow_okr.errors import InputError
from mlflow_okr.ledger import evaluate_hypothesis, get_hypothesis, link_runs
from mlflow_okr.ledger.evaluate import GuardrailData, compare
from mlflow_okr.ledger.guardrails import parse_guardrail
from tests.conftest import invoke, make_run

# Accuracy per seed: the seed moves both arms; the treatment adds about 0.01 on every seed.
SEEDS = ["1", "2", "3", "4", "5"]
CONTROL = [0.70, 0.75, 0.72, 0.78, 0.74]
TREATMENT = [0.711, 0.759, 0.731, 0.792, 0.749]


def test_paired_comparison_matches_scipy_ttest_rel() -> None:
    pairs = list(zip(CONTROL, TREATMENT, strict=True))
    result = compare("h", "acc", [], [], pairs=pairs)
    expected = stats.ttest_rel(TREATMENT, CONTROL)
    interval = expected.confidence_interval(0.95)
    assert result.comparison == "paired" and result.pairs == 5
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert result.ci_low == pytest.approx(interval.low, rel=1e-9)
    assert result.ci_high == pytest.approx(interval.high, rel=1e-9)
    assert result.effect == pytest.approx(statistics.fmean(TREATMENT) - statistics.fmean(CONTROL), rel=1e-12)
    assert result.suggested_verdict == "validated"
    # Unpaired, the seed-to-seed spread swamps the same effect.
    unpaired = compare("h", "acc", CONTROL, TREATMENT)
    assert unpaired.suggested_verdict == "inconclusive"
    assert unpaired.p_value == pytest.approx(
        stats.ttest_ind(TREATMENT, CONTROL, equal_var=False).pvalue, rel=1e-9
    )


def test_too_few_pairs_is_inconclusive() -> None:
    result = compare("h", "acc", [], [], pairs=[(0.7, 0.71)])
    assert result.suggested_verdict == "inconclusive"
    assert result.reason == "too little data: 1 pair(s) of runs with acc; need at least 2 pairs"


@pytest.mark.parametrize(
    ("text", "metric", "upper", "margin", "relative"),
    [
        ("p99_ms<=+5%", "p99_ms", True, 0.05, True),
        ("accuracy >= -1%", "accuracy", False, -0.01, True),
        ("latency_ms<=3", "latency_ms", True, 3.0, False),
        ("fairness.gap<=0", "fairness.gap", True, 0.0, False),
    ],
)
def test_guardrails_parse(text, metric, upper, margin, relative) -> None:
    spec = parse_guardrail(text)
    assert (spec.metric, spec.upper, spec.relative) == (metric, upper, relative)
    assert spec.margin == pytest.approx(margin)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99_ms<5%", "bad guardrail 'p99_ms<5%': use METRIC<=CHANGE or METRIC>=CHANGE"),
        ("<=+5%", "bad guardrail '<=+5%'"),
        ("p99_ms<=-5%", "the margin allows the metric to get worse, so it is +N with <="),
        ("acc>=+1%", "the margin allows the metric to get worse, so it is -N with >="),
    ],
)
def test_bad_guardrails_are_rejected(text, message) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        parse_guardrail(text)


LATENCY_CONTROL = [40.0, 42.0, 41.0, 39.0, 43.0, 40.5]


def welch_interval(treatment: list[float], control: list[float]) -> tuple[float, float]:
    v1, v2, n1, n2 = (
        statistics.variance(treatment),
        statistics.variance(control),
        len(treatment),
        len(control),
    )
    se = math.sqrt(v1 / n1 + v2 / n2)
    df = (v1 / n1 + v2 / n2) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    effect = statistics.fmean(treatment) - statistics.fmean(control)
    q = stats.t.ppf(0.975, df)
    return effect - q * se, effect + q * se


@pytest.mark.parametrize(
    ("latency", "verdict", "suggested"),
    [
        ([40.2, 41.8, 41.1, 39.3, 42.7, 40.4], "holds", "validated"),  # the same latency
        ([48.0, 50.0, 49.0, 47.0, 51.0, 48.5], "breached", "invalidated"),  # +8 ms, margin +2.05
        ([40.0, 45.0, 39.0, 44.0, 43.0, 38.0], "inconclusive", "inconclusive"),
    ],
)
def test_a_guardrail_is_a_non_inferiority_check(latency, verdict, suggested) -> None:
    spec = parse_guardrail("p99_ms<=+5%")
    guardrail = GuardrailData(spec, LATENCY_CONTROL, latency)
    result = compare(
        "h", "ctr", [0.050, 0.052, 0.049, 0.051], [0.058, 0.060, 0.057, 0.059], guardrails=[guardrail]
    )
    [check] = result.guardrails
    low, high = welch_interval(latency, LATENCY_CONTROL)
    assert check.margin == pytest.approx(0.05 * statistics.fmean(LATENCY_CONTROL), rel=1e-12)
    assert check.estimate == pytest.approx(
        statistics.fmean(latency) - statistics.fmean(LATENCY_CONTROL), rel=1e-9
    )
    assert (check.ci_low, check.ci_high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert check.verdict == verdict
    assert result.suggested_verdict == suggested
    if verdict == "breached":
        assert result.reason.startswith(
            "guardrail p99_ms<=+5% breached (p99_ms rises by more than the margin"
        )


def test_a_guardrail_without_control_runs_cannot_hold() -> None:
    guardrail = GuardrailData(parse_guardrail("p99_ms<=+5%"), [], [41.0, 42.0])
    result = compare("h", "ctr", [], [0.058, 0.060, 0.057], baseline=0.05, guardrails=[guardrail])
    assert result.guardrails[0].verdict == "inconclusive"
    assert result.suggested_verdict == "inconclusive"
    assert "is not shown to hold yet (too little data" in result.reason


def test_pairs_and_guardrails_through_mlflow_and_the_cli(client, runner) -> None:
    experiment = client.create_experiment("seeds")
    control, treatment = [], []
    for seed, c, t in zip(SEEDS, CONTROL, TREATMENT, strict=True):
        control.append(make_run(client, experiment, {"acc": c, "p99_ms": 40.0 + int(seed) * 0.5}))
        treatment.append(make_run(client, experiment, {"acc": t, "p99_ms": 40.1 + int(seed) * 0.5}))
        for run_id in (control[-1], treatment[-1]):
            client.log_param(run_id, "seed", seed)
    lonely = make_run(client, experiment, {"acc": 0.9, "p99_ms": 41.0})
    client.log_param(lonely, "seed", "99")
    no_seed = make_run(client, experiment, {"acc": 0.9, "p99_ms": 41.0})
    result = invoke(
        runner,
        "ledger",
        "add",
        "Label smoothing lifts accuracy",
        "--id",
        "smooth",
        "--metric",
        "acc",
        "--pair-by",
        "params.seed",
        "--guardrail",
        "p99_ms<=+5%",
    )
    assert result.exit_code == 0, result.output
    hypothesis = get_hypothesis("smooth")
    assert (hypothesis.pair_by, hypothesis.guardrails) == ("params.seed", ["p99_ms<=+5%"])
    link_runs("smooth", control, arm="control")
    link_runs("smooth", [*treatment, lonely, no_seed])
    evaluation = evaluate_hypothesis("smooth")
    expected = stats.ttest_rel(TREATMENT, CONTROL)
    assert (evaluation.comparison, evaluation.pairs, evaluation.pair_by) == ("paired", 5, "params.seed")
    assert evaluation.unpaired_runs == sorted([lonely, no_seed])
    assert evaluation.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    [check] = evaluation.guardrails
    assert check.verdict == "holds" and check.estimate == pytest.approx(0.1)
    assert evaluation.suggested_verdict == "validated"
    shown = invoke(runner, "ledger", "evaluate", "smooth")
    assert shown.exit_code == 0
    assert "Hypothesis smooth: metric acc (paired by params.seed: 5 pairs)" in shown.output
    assert "  unpaired    2 run(s) without a partner: " in shown.output
    assert "  guardrail   p99_ms<=+5%: holds" in shown.output
    details = invoke(runner, "ledger", "show", "smooth")
    assert "  pair by: params.seed\n  guardrails: p99_ms<=+5%\n" in details.output
    tags = client.get_run(hypothesis.run_id).data.tags
    assert (tags["okr.ledger.pair_by"], tags["okr.ledger.guardrails"]) == ("params.seed", "p99_ms<=+5%")
    bad = invoke(runner, "ledger", "add", "X", "--pair-by", "seed")
    assert bad.exit_code == 2
    assert (
        "Error: --pair-by: bad pairing key 'seed': name a param or tag, e.g. params.seed or tags.split"
        in bad.output
    )
    bad_guardrail = invoke(runner, "ledger", "add", "X", "--guardrail", "p99_ms=5")
    assert bad_guardrail.exit_code == 2
    assert "Error: --guardrail: bad guardrail 'p99_ms=5'" in bad_guardrail.output


def test_from_the_second_look_a_guardrail_is_judged_on_the_confidence_sequence() -> None:
    control = [40.0, 42.0, 41.0, 39.0, 43.0, 40.5, 41.5, 40.2]
    latency = [40.1, 41.9, 41.2, 39.1, 42.8, 40.6, 41.4, 40.3]
    guardrail = GuardrailData(parse_guardrail("p99_ms<=+5%"), control, latency)
    ctr_control, ctr_treatment = [0.050, 0.052, 0.049, 0.051], [0.058, 0.060, 0.057, 0.059]
    first = compare("h", "ctr", ctr_control, ctr_treatment, guardrails=[guardrail])
    later = compare("h", "ctr", ctr_control, ctr_treatment, guardrails=[guardrail], looks=2)
    fixed_low, fixed_high = welch_interval(latency, control)
    assert (first.guardrails[0].ci_low, first.guardrails[0].ci_high) == (
        pytest.approx(fixed_low, rel=1e-9),
        pytest.approx(fixed_high, rel=1e-9),
    )
    assert first.guardrails[0].verdict == "holds"
    # The pooled-variance t-mixture sequence, by its formula: effect +- t* x pooled se, where t* is
    # where the Bayes factor reaches 1/alpha.
    n = len(control)
    pooled = (statistics.variance(latency) + statistics.variance(control)) / 2
    se = math.sqrt(pooled * 2 / n)
    nu, n_eff = 2 * n - 2, n / 2
    a, r = 1 + n_eff, (math.sqrt(1 + n_eff) / 0.05) ** (2 / (nu + 1))
    width = math.sqrt(nu * (r - 1) / (1 - r / a)) * se
    check = later.guardrails[0]
    assert (check.ci_low, check.ci_high) == (
        pytest.approx(check.estimate - width, rel=1e-9),
        pytest.approx(check.estimate + width, rel=1e-9),
    )
    # Wider than the fixed interval: the same runs no longer show the guardrail holds.
    assert check.ci_low < fixed_low and check.ci_high > fixed_high
    assert check.verdict == "inconclusive" and later.verdict_basis == "sequential"
