"""`suggest`: next cycle's draft okrs.yaml, calibrated from this cycle's okr.value history."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from mlflow_okr import state, vocabulary
from mlflow_okr.errors import InputError
from mlflow_okr.ledger import add_hypothesis, evaluate_hypothesis, link_runs, resolve_hypothesis
from mlflow_okr.spec import Cycle, load_spec, parse_cycle, parse_spec
from mlflow_okr.suggest import calibrate_metric, next_cycle_after, suggest_next_cycle
from tests.conftest import NOW, invoke, make_run

DAY_MS = 86_400_000
Q4 = parse_cycle("2026-Q4")
OBSERVED_DAYS = 45  # 2026-10-01 .. NOW (2026-11-15)
NEXT_DAYS = 90  # 2027-Q1

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Better recommendations
    category: product
    key_results:
      - id: ctr
        title: Raise CTR from 5% to 8%
        metric: online_ctr
        experiments: ["reco-*"]
        baseline: 0.05
        target: 0.08
        guardrails:
          - {metric: p99_latency_ms, max: 50}
      - id: mape
        metric: mape
        baseline: 12.0
        target: "-10%"
      - id: stalled
        metric: recall
        baseline: 0.5
        target: 0.6
      - id: csat
        metric: csat
        maintain: {min: 4.5}
      - id: learnings
        source: ledger
        target: 3
        linked_to: reco
      - id: alerting
        source: manual
        target: 1
"""


def day(offset: int) -> int:
    return Q4.start_ms + offset * DAY_MS


@pytest.mark.parametrize(
    ("cycle", "following"),
    [("2026-Q4", "2027-Q1"), ("2026-Q2", "2026-Q3"), ("2026-H2", "2027-H1"), ("2026-H1", "2026-H2"),
     ("2026", "2027"), ("Q4-2026", "2027-Q1")],
)
def test_next_cycle_after(cycle: str, following: str) -> None:
    assert next_cycle_after(parse_cycle(cycle)) == following


def test_next_cycle_of_a_custom_cycle_needs_a_name() -> None:
    custom = Cycle(name="autumn", start=dt.date(2026, 9, 1), end=dt.date(2026, 11, 30))
    with pytest.raises(InputError, match="which cycle follows 'autumn'; name the next one, e.g. 2027-Q1"):
        next_cycle_after(custom)


def test_calibration_expects_70_percent_attainment() -> None:
    history = [(day(10), 0.055), (day(35), 0.06)]
    calibrated = calibrate_metric(history, 0.05, 0.08, "maximize", Q4, day(OBSERVED_DAYS), NEXT_DAYS)
    projected = (0.06 - 0.05) / OBSERVED_DAYS * NEXT_DAYS
    assert calibrated.baseline == 0.06
    assert calibrated.target == pytest.approx(0.06 + projected / 0.7, rel=1e-3)
    assert projected / (calibrated.target - calibrated.baseline) == pytest.approx(0.7, abs=0.005)
    # Points after the moment of observation are not part of the record.
    later = calibrate_metric([*history, (day(60), 0.2)], 0.05, 0.08, "maximize", Q4, day(OBSERVED_DAYS), 90)
    assert later == calibrated


def test_calibration_of_a_minimized_metric_and_of_no_progress() -> None:
    down = calibrate_metric([(day(20), 11.5), (day(40), 11.0)], 12.0, 10.8, "minimize", Q4, day(45), 90)
    assert down.baseline == 11.0
    assert down.target == pytest.approx(11.0 - (1.0 / 45 * 90) / 0.7, rel=1e-3)
    flat = calibrate_metric([(day(20), 0.5)], 0.5, 0.6, "maximize", Q4, day(45), 90)
    assert (flat.baseline, flat.target) == (0.5, 0.6)
    assert "no improvement observed" in flat.comments[-1]
    assert calibrate_metric([], 0.5, 0.6, "maximize", Q4, day(45), 90) is None


def test_calibration_caps_ratios_below_one() -> None:
    capped = calibrate_metric([(day(40), 0.9)], 0.5, 0.95, "maximize", Q4, day(45), 90)
    assert capped.target == pytest.approx(0.95)
    assert "capped halfway to 1" in capped.comments[-1]
    # A non-negative metric (latency, error counts) is not asked to go below zero.
    latency = calibrate_metric([(day(40), 2.0)], 10.0, 8.0, "minimize", Q4, day(45), 90)
    assert latency.target == pytest.approx(1.0)
    assert latency.comments[-1] == "capped halfway to 0: the metric looks non-negative"


def _record(client, runner, write_spec, tmp_path):
    """A cycle with KR history written at known times, a validated hypothesis on a new metric, a
    validated one on a KR metric, and an invalidated one."""
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    published = state.load_published(client, "2026-Q4")
    for kr_id, points in {
        "ctr": [(10, 0.055), (35, 0.06)],
        "mape": [(20, 11.5), (40, 11.0)],
        "stalled": [(20, 0.5)],
    }.items():
        for offset, value in points:
            state.log_kr_state(client, published.kr_runs[kr_id], {vocabulary.METRIC_VALUE: value}, {}, Q4,
                               timestamp_ms=day(offset))
    experiment = client.create_experiment("serving-ab")
    control = [make_run(client, experiment, {"p99_latency_ms": v}) for v in (40.0, 42.0, 41.0)]
    treatment = [make_run(client, experiment, {"p99_latency_ms": v}) for v in (30.0, 31.0, 29.0)]
    add_hypothesis("A warm cache cuts p99", hypothesis_id="cache", metric="p99_latency_ms",
                   objective="reco", expect="-10%")
    link_runs("cache", control, arm="control")
    link_runs("cache", treatment, arm="treatment")
    assert evaluate_hypothesis("cache").suggested_verdict == "validated"
    resolve_hypothesis("cache", "validated", "Warm caches cut p99 by a quarter", when=dt.datetime(
        2026, 10, 20, tzinfo=dt.timezone.utc))
    add_hypothesis("Pools raise CTR", hypothesis_id="pools", kr="ctr")
    resolve_hypothesis("pools", "validated", "yes", when=dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc))
    add_hypothesis("Bigger batches", hypothesis_id="batches", kr="ctr")
    resolve_hypothesis("batches", "invalidated", "no", when=dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc))


def test_suggest_drafts_a_valid_spec_for_the_next_cycle(client, runner, write_spec, tmp_path) -> None:
    _record(client, runner, write_spec, tmp_path)
    draft = suggest_next_cycle(now=NOW)
    assert (draft.cycle, draft.source_cycle) == ("2027-Q1", "2026-Q4")
    spec = parse_spec(draft.text)
    assert spec.cycle.name == "2027-Q1"
    krs = {kr.id: kr for _, kr in spec.key_results()}
    assert draft.key_results == len(krs) == 7

    ctr = krs["ctr"]
    assert (ctr.baseline, ctr.target) == (0.06, pytest.approx(0.06 + (0.01 / 45 * 90) / 0.7, rel=1e-3))
    assert ctr.experiments == ["reco-*"] and ctr.guardrails[0].metric == "p99_latency_ms"
    mape = krs["mape"]
    assert (mape.baseline, mape.target) == (11.0, pytest.approx(11.0 - (1.0 / 45 * 90) / 0.7, rel=1e-3))
    assert (krs["stalled"].baseline, krs["stalled"].target) == (0.5, 0.6)
    assert krs["csat"].maintain.min == 4.5
    # Two validated hypotheses linked to reco in 45 days project 4 in 90; 4 / 0.7 rounds up to 6.
    assert krs["learnings"].target == 6
    assert krs["alerting"].target == 1

    # A new KR for the metric the validated cache hypothesis moved, under its objective.
    latency = krs["p99-latency-ms"]
    effect = 30.0 - 41.0
    assert latency.metric == "p99_latency_ms"
    assert latency.baseline == 30.0
    assert latency.target == pytest.approx(30.0 + effect / 0.7, rel=1e-3)
    assert latency.experiments == ["serving-ab"]
    assert spec.objectives[0].key_results[-1].id == "p99-latency-ms"

    # Every KR says where its numbers came from.
    text = draft.text
    assert "# 2026-Q4: okr.value 0.05 -> 0.06 over 45 days (2 points): +0.0002222/day" in text
    assert "target = 0.06 + 0.02 / 0.7" in text
    assert "# validated hypotheses on online_ctr: pools" in text
    assert "no improvement observed, so the unmet target 0.6 is kept" in text
    assert "# new KR: cache (-11) validated in 2026-Q4, moving p99_latency_ms by -11 in total" in text
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("- id:") and line.startswith("      "):
            assert lines[index - 1].strip().startswith("#"), f"no comment above {line.strip()}"


def test_suggest_cli_writes_a_file_that_validates(client, runner, write_spec, tmp_path) -> None:
    _record(client, runner, write_spec, tmp_path)
    path = tmp_path / "next.yaml"
    result = invoke(runner, "suggest", "--as-of", "2026-11-15", "-o", str(path))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Wrote {path}: cycle 2027-Q1, 7 KRs drafted from 2026-Q4.")
    validated = invoke(runner, "validate", str(path))
    assert validated.exit_code == 0, validated.output
    assert "valid. Cycle 2027-Q1 (2027-01-01 .. 2027-03-31), 1 objectives, 7 key results." in validated.output
    assert load_spec(path).cycle.name == "2027-Q1"
    again = invoke(runner, "suggest", "-o", str(path))
    assert again.exit_code == 2 and "already exists" in again.output

    custom = invoke(runner, "suggest", "--cycle", "winter-push", "--as-of", "2026-11-15")
    assert custom.exit_code == 0, custom.output
    spec = parse_spec(custom.output)
    assert (spec.cycle.name, spec.cycle.start, spec.cycle.end) == (
        "winter-push", dt.date(2027, 1, 1), dt.date(2027, 4, 2)  # as long as 2026-Q4: 92 days
    )
    assert math.isclose(spec.find_key_result("ctr").baseline, 0.06)


def test_suggest_with_nothing_published_is_bad_input(client, runner) -> None:
    result = invoke(runner, "suggest")
    assert result.exit_code == 2
    assert "no OKR cycle is published" in result.output
