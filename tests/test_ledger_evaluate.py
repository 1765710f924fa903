"""`ledger evaluate` statistics, checked against values computed here by hand formulas."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from mlflow_okr import vocabulary
from mlflow_okr.errors import InputError
from mlflow_okr.ledger import add_hypothesis, evaluate_hypothesis, get_hypothesis, link_runs
from mlflow_okr.ledger.evaluate import compare, suggest_verdict
from mlflow_okr.ledger.models import parse_expectation
from tests.conftest import invoke, make_run

CONTROL = [0.050, 0.052, 0.049, 0.051, 0.048]
TREATMENT = [0.056, 0.058, 0.055, 0.057, 0.061, 0.054]


def welch_by_hand(treatment: list[float], control: list[float]) -> dict[str, float]:
    """Welch's t-test from the textbook formulas (Welch-Satterthwaite degrees of freedom)."""
    m1, m2 = statistics.fmean(treatment), statistics.fmean(control)
    v1, v2 = statistics.variance(treatment), statistics.variance(control)
    n1, n2 = len(treatment), len(control)
    se = math.sqrt(v1 / n1 + v2 / n2)
    df = (v1 / n1 + v2 / n2) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    t = (m1 - m2) / se
    quantile = stats.t.ppf(0.975, df)
    return {
        "effect": m1 - m2,
        "relative": (m1 - m2) / m2,
        "p": 2 * stats.t.sf(abs(t), df),
        "low": m1 - m2 - quantile * se,
        "high": m1 - m2 + quantile * se,
    }


def test_welch_matches_hand_formulas() -> None:
    expected = welch_by_hand(TREATMENT, CONTROL)
    result = compare("h", "ctr", CONTROL, TREATMENT, expectation=parse_expectation("+5%"))
    assert result.comparison == "welch"
    assert result.control.n == 5 and result.treatment.n == 6
    assert result.control.mean == pytest.approx(statistics.fmean(CONTROL), rel=1e-12)
    assert result.treatment.mean == pytest.approx(statistics.fmean(TREATMENT), rel=1e-12)
    assert result.effect == pytest.approx(expected["effect"], rel=1e-12)
    assert result.relative_effect == pytest.approx(expected["relative"], rel=1e-12)
    assert result.p_value == pytest.approx(expected["p"], rel=1e-9)
    assert result.ci_low == pytest.approx(expected["low"], rel=1e-9)
    assert result.ci_high == pytest.approx(expected["high"], rel=1e-9)
    # +5% of the control mean is 0.0025; the interval excludes 0 and reaches it.
    assert result.expected_effect == pytest.approx(0.05 * statistics.fmean(CONTROL))
    assert result.suggested_verdict == "validated"


def test_one_sample_against_baseline_matches_hand_formulas() -> None:
    baseline = 0.05
    n = len(TREATMENT)
    mean, sd = statistics.fmean(TREATMENT), statistics.stdev(TREATMENT)
    se = sd / math.sqrt(n)
    t = (mean - baseline) / se
    quantile = stats.t.ppf(0.975, n - 1)
    result = compare("h", "ctr", [], TREATMENT, baseline=baseline)
    assert result.comparison == "one-sample"
    assert result.control.n == 0 and result.control.mean == baseline
    assert result.effect == pytest.approx(mean - baseline, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-9)
    assert result.ci_low == pytest.approx(mean - baseline - quantile * se, rel=1e-9)
    assert result.ci_high == pytest.approx(mean - baseline + quantile * se, rel=1e-9)
    assert result.suggested_verdict == "validated"


@pytest.mark.parametrize(
    ("control", "treatment", "baseline", "reason"),
    [
        ([0.05], [0.06, 0.07], None, "control has 1 run(s) with ctr"),
        ([0.05, 0.06], [0.07], None, "treatment has 1 run(s) with ctr"),
        ([], [0.06, 0.07], None, "control has 0 run(s) with ctr"),
        ([], [0.06], 0.05, "treatment has 1 run(s) with ctr"),
    ],
)
def test_too_little_data_is_inconclusive_and_says_why(control, treatment, baseline, reason) -> None:
    result = compare("h", "ctr", control, treatment, baseline=baseline)
    assert result.suggested_verdict == "inconclusive"
    assert reason in result.reason and "need at least 2 per arm" in result.reason
    assert result.p_value is None and result.ci_low is None


def test_no_variance_is_inconclusive() -> None:
    result = compare("h", "ctr", [0.05, 0.05], [0.06, 0.06])
    assert result.suggested_verdict == "inconclusive"
    assert "no variance" in result.reason
    assert result.effect == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("low", "high", "expected", "direction", "verdict"),
    [
        (0.01, 0.03, 0.02, None, "validated"),      # excludes 0, consistent with +0.02
        (0.001, 0.01, 0.02, None, "invalidated"),   # significant but wholly short of +0.02
        (-0.03, -0.01, 0.02, None, "invalidated"),  # the other way
        (-0.01, 0.03, 0.02, None, "inconclusive"),  # spans 0 and +0.02
        (-0.03, -0.01, -0.02, None, "validated"),   # expected decrease, found
        (-0.03, 0.01, -0.02, None, "inconclusive"),
        (-0.01, 0.02, -0.02, None, "invalidated"),  # a decrease of 0.02 is ruled out
        (0.01, 0.02, None, None, "validated"),      # no expectation: any increase
        (0.01, 0.02, None, "minimize", "invalidated"),
        (-0.02, 0.01, None, "minimize", "inconclusive"),
    ],
)
def test_verdict_rules(low, high, expected, direction, verdict) -> None:
    expectation = parse_expectation(expected) if expected is not None else None
    got, reason = suggest_verdict(low, high, expected, expectation, direction)
    assert got == verdict, reason


@pytest.mark.parametrize("text", ["abc", "2%%", "+0%", "0", "nan", "+ %"])
def test_bad_expectation_is_rejected(text: str) -> None:
    with pytest.raises(InputError, match="bad expected effect"):
        parse_expectation(text)


def test_expectations_parse() -> None:
    assert parse_expectation("+2%").value == pytest.approx(0.02)
    assert parse_expectation("-1.5%").absolute(-10.0) == pytest.approx(-0.15)
    assert parse_expectation("0.02").relative is False
    assert parse_expectation(-3).value == -3.0


def test_evaluate_reads_runs_from_mlflow_and_records_the_result(client, tracking_uri, monkeypatch) -> None:
    monkeypatch.setattr("mlflow_okr.ledger.evidence.RUN_IDS_PER_SEARCH", 2)  # several searches per arm
    experiment = client.create_experiment("reco-ab")
    control = [make_run(client, experiment, {"ctr": v}) for v in CONTROL]
    treatment = [make_run(client, experiment, {"ctr": v}) for v in TREATMENT]
    # Runs that cannot be evidence: failed, deleted, or without the metric.
    failed = make_run(client, experiment, {"ctr": 0.9}, status="FAILED")
    deleted = make_run(client, experiment, {"ctr": 0.9})
    client.delete_run(deleted)
    no_metric = make_run(client, experiment, {"other": 1.0})
    add_hypothesis("Bigger pools raise CTR", hypothesis_id="pools", metric="ctr", expect="+5%")
    link_runs("pools", control, arm="control")
    link_runs("pools", [*treatment, failed, deleted, no_metric], arm="treatment")
    result = evaluate_hypothesis("pools")
    expected = welch_by_hand(TREATMENT, CONTROL)
    assert (result.control.n, result.treatment.n) == (5, 6)
    assert result.p_value == pytest.approx(expected["p"], rel=1e-9)
    assert result.suggested_verdict == "validated"
    hypothesis = get_hypothesis("pools")
    assert [e.action for e in hypothesis.events] == ["add", "link", "link", "evaluate"]
    run = client.get_run(hypothesis.run_id)
    assert run.data.tags["okr.ledger.suggested_verdict"] == "validated"
    assert float(run.data.tags["okr.ledger.p_value"]) == pytest.approx(expected["p"], rel=1e-9)
    # The same result again adds no event.
    evaluate_hypothesis("pools")
    assert len(get_hypothesis("pools").events) == 4


def test_evaluate_without_control_uses_the_linked_kr_baseline(client, runner, write_spec) -> None:
    spec = write_spec(
        """
        version: 1
        cycle: 2026-Q4
        objectives:
          - id: reco
            title: Better recommendations
            category: product
            key_results:
              - id: ctr
                metric: ctr
                baseline: 0.05
                target: 0.08
        """
    )
    assert invoke(runner, "apply", str(spec)).exit_code == 0
    experiment = client.create_experiment("reco-ab")
    for value in TREATMENT:
        tags = {vocabulary.TAG_HYPOTHESIS: "lift", vocabulary.TAG_ARM: "treatment"}
        make_run(client, experiment, {"ctr": value}, tags=tags)
    add_hypothesis("Re-ranking lifts CTR", hypothesis_id="lift", kr="ctr")
    result = evaluate_hypothesis("lift")
    assert result.metric == "ctr"
    assert result.comparison == "one-sample"
    assert result.control.mean == 0.05 and result.treatment.n == len(TREATMENT)
    expected_t = stats.ttest_1samp(TREATMENT, 0.05)
    assert result.p_value == pytest.approx(expected_t.pvalue, rel=1e-9)
    assert result.suggested_verdict == "validated"
