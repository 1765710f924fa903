"""Many hypotheses and the track record: Benjamini-Hochberg q-values across a cycle, `count_only:
significant` ledger KRs, `ledger list --summary`, and `ledger plan`."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from mlflow_okr import state
from mlflow_okr.errors import InputError, SpecError
from mlflow_okr.ledger import (
    add_hypothesis,
    evaluate_hypothesis,
    ledger_summary,
    link_runs,
    list_hypotheses,
    plan_hypothesis,
    resolve_hypothesis,
)
from mlflow_okr.multiplicity import q_values
from mlflow_okr.spec import parse_spec
from tests.conftest import invoke, make_run

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Better recommendations
    category: product
    key_results:
      - id: ctr
        metric: ctr
        baseline: 0.5
        target: 0.6
      - id: wins
        source: ledger
        target: 4
      - id: real-wins
        source: ledger
        count_only: significant
        target: 4
"""
BASE = [0.50, 0.52, 0.49, 0.51, 0.53]
NOISE = [0.004, -0.003, 0.002, -0.001, 0.0]


def shifted(shift: float) -> list[float]:
    return [round(v + shift + e, 4) for v, e in zip(BASE, NOISE, strict=True)]


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.timezone.utc)


def bh_by_hand(p_values: dict[str, float]) -> dict[str, float]:
    """q_(i) = min over j >= i of p_(j) * m / j, p-values sorted ascending."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    m, q, running = len(ordered), {}, 1.0
    for rank in range(m, 0, -1):
        hypothesis_id, p = ordered[rank - 1]
        running = min(running, p * m / rank)
        q[hypothesis_id] = running
    return q


def test_q_values_match_statsmodels_and_the_formula() -> None:
    p = {"a": 0.001, "b": 0.04, "c": 0.03, "d": 0.5, "e": 0.012}
    expected = bh_by_hand(p)
    assert q_values(p) == pytest.approx(expected, rel=1e-12)
    ids = sorted(p)
    adjusted = multipletests([p[i] for i in ids], method="fdr_bh")[1]
    assert q_values(p) == pytest.approx(dict(zip(ids, adjusted, strict=True)), rel=1e-12)
    assert q_values({}) == {}


@pytest.fixture
def cycle_of_hypotheses(client, runner, write_spec):
    return make_cycle_of_hypotheses(client, runner, write_spec)


def make_cycle_of_hypotheses(client, runner, write_spec):
    """Four hypotheses of 2026-Q4 with real evidence: two clear wins, one marginal, one null."""
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    experiment = client.create_experiment("reco-ab")
    arms = {
        "bigger-pools": (shifted(0.1), "alice", "reco"),
        "fresh-items": (shifted(0.08), "bob", "reco"),
        "marginal": (shifted(0.023), "alice", "reco"),
        "null": ([0.51, 0.50, 0.53, 0.49, 0.52], "bob", None),
    }
    for day, (hypothesis_id, (treatment, owner, objective)) in enumerate(arms.items(), start=2):
        add_hypothesis(
            f"{hypothesis_id} lifts CTR",
            hypothesis_id=hypothesis_id,
            metric="ctr",
            owner=owner,
            objective=objective,
        )
        link_runs(hypothesis_id, [make_run(client, experiment, {"ctr": v}) for v in BASE], arm="control")
        link_runs(hypothesis_id, [make_run(client, experiment, {"ctr": v}) for v in treatment])
        evaluation = evaluate_hypothesis(hypothesis_id)
        verdict = evaluation.suggested_verdict
        resolve_hypothesis(hypothesis_id, verdict, f"{verdict} on the evidence", when=utc(2026, 11, day))
    return {h.id: h for h in list_hypotheses()}


def test_each_hypothesis_of_the_cycle_gets_its_q_value(cycle_of_hypotheses, client, runner) -> None:
    hypotheses = cycle_of_hypotheses
    assert {h.id: h.status for h in hypotheses.values()} == {
        "bigger-pools": "validated",
        "fresh-items": "validated",
        "marginal": "validated",
        "null": "inconclusive",
    }
    p_values = {h.id: h.verdict_p_value for h in hypotheses.values()}
    welch = stats.ttest_ind(shifted(0.023), BASE, equal_var=False).pvalue
    assert p_values["marginal"] == pytest.approx(welch, rel=1e-9)
    expected = bh_by_hand(p_values)
    assert {h.id: h.q_value for h in hypotheses.values()} == pytest.approx(expected, rel=1e-12)
    # p = 0.0396 < 0.05, yet among four tests its q-value is 0.0396 * 4 / 3 > 0.05.
    assert p_values["marginal"] < 0.05 < hypotheses["marginal"].q_value
    listed = invoke(runner, "ledger", "list", "--format", "json")
    assert {row["id"]: row["q_value"] for row in json.loads(listed.output)} == pytest.approx(
        expected, rel=1e-12
    )
    # The ledger KRs: `count_only: significant` leaves out the marginal "validated".
    published = state.load_published(client, "2026-Q4")
    assert state.ledger_validated_count(client, published.cycle, None) == 3
    assert state.ledger_validated_count(client, published.cycle, None, count_only="significant") == 2
    assert state.ledger_validated_count(client, published.cycle, "reco", count_only="significant") == 2
    # Evaluations and resolutions re-scored the ledger KRs: the stored state equals a recompute.
    checked = invoke(runner, "sync", "--check")
    assert checked.exit_code == 0, checked.output


def test_the_track_record_of_a_cycle(cycle_of_hypotheses, runner) -> None:
    hypotheses = cycle_of_hypotheses
    record = ledger_summary()
    assert record.cycle == "2026-Q4"
    assert (record.tried, record.validated, record.invalidated, record.inconclusive, record.open) == (
        4,
        3,
        0,
        1,
        0,
    )
    assert record.validated_above_alpha == ["marginal"]
    assert [(r.name, r.tried, r.resolved, r.validated, r.win_rate) for r in record.by_objective] == [
        ("reco", 3, 3, 3, 1.0),
        (None, 1, 1, 0, 0.0),
    ]
    assert [(r.name, r.validated, r.resolved, r.win_rate) for r in record.by_owner] == [
        ("alice", 2, 2, 1.0),
        ("bob", 1, 2, 0.5),
    ]
    effects = [hypotheses[h].evaluation["effect"] for h in ("bigger-pools", "fresh-items", "marginal")]
    expected_effect = math.fsum(
        statistics.fmean(shifted(s)) - statistics.fmean(BASE) for s in (0.1, 0.08, 0.023)
    )
    assert record.validated_effect == {"ctr": pytest.approx(math.fsum(effects), rel=1e-12)}
    assert record.validated_effect["ctr"] == pytest.approx(expected_effect, rel=1e-9)
    shown = invoke(runner, "ledger", "list", "--summary")
    assert shown.exit_code == 0
    assert shown.output.splitlines() == [
        "Track record 2026-Q4: 4 tried, 3 validated, 0 invalidated, 1 inconclusive, 0 open",
        "  win rate by objective: reco 3/3 (100%); (none) 0/1 (0%)",
        "  win rate by owner:     alice 2/2 (100%); bob 1/2 (50%)",
        f"  validated effect on ctr: {record.validated_effect['ctr']:+.6g}",
        "  validated but q-value above 0.05 (may be false discoveries): marginal",
    ]
    as_json = json.loads(invoke(runner, "ledger", "list", "--summary", "--format", "json").output)
    assert as_json["validated_above_alpha"] == ["marginal"] and as_json["tried"] == 4
    other = invoke(runner, "ledger", "list", "--cycle", "2027-Q1")
    assert other.exit_code == 2 and "cycle '2027-Q1' is not published" in other.output
    assert invoke(runner, "ledger", "list", "--summary", "--format", "csv").exit_code == 2


@pytest.mark.parametrize(
    ("kr", "message"),
    [
        (
            "{id: x, metric: m, baseline: 1, target: 2, count_only: significant}",
            "count_only only applies to `source: ledger` KRs",
        ),
        (
            "{id: x, source: manual, target: 1, count_only: significant}",
            "count_only only applies to `source: ledger` KRs",
        ),
        (
            "{id: x, source: ledger, target: 1, count_only: all}",
            "count_only: 'all' is not allowed: expected 'significant'",
        ),
    ],
)
def test_count_only_is_validated(kr, message) -> None:
    text = (
        f"version: 1\ncycle: 2026-Q4\nobjectives:\n  - id: o\n    title: O\n    category: product\n"
        f"    key_results:\n      - {kr}\n"
    )
    with pytest.raises(SpecError) as error:
        parse_spec(text, "okrs.yaml")
    assert message in "\n".join(error.value.problems)
    assert error.value.problems[0].startswith("okrs.yaml:8: objectives[0].key_results[0].count_only")


def power_by_hand(n: int, d: float, alpha: float, paired: bool) -> float:
    """Two-sided t-test power from the noncentral t distribution."""
    df = n - 1 if paired else 2 * n - 2
    nc = d * math.sqrt(n if paired else n / 2)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc)


def test_plan_gives_the_smallest_number_of_runs_with_the_power(client, runner) -> None:
    experiment = client.create_experiment("plan")
    control = [0.50, 0.52, 0.49, 0.51, 0.53]
    add_hypothesis("Bigger pools", hypothesis_id="pools", metric="ctr", expect="+2%")
    link_runs("pools", [make_run(client, experiment, {"ctr": v}) for v in control], arm="control")
    plan = plan_hypothesis("pools")
    sd, effect = statistics.stdev(control), 0.02 * statistics.fmean(control)
    assert (plan.sd, plan.effect, plan.sd_source) == (
        pytest.approx(sd, rel=1e-12),
        pytest.approx(effect, rel=1e-12),
        "5 control runs",
    )
    assert power_by_hand(plan.runs_per_arm, effect / sd, 0.05, paired=False) >= 0.8
    assert power_by_hand(plan.runs_per_arm - 1, effect / sd, 0.05, paired=False) < 0.8
    shown = invoke(runner, "ledger", "plan", "pools", "--power", "0.9", "--alpha", "0.01", "--format", "json")
    assert shown.exit_code == 0
    as_json = json.loads(shown.output)
    assert {key: as_json[key] for key in ("power", "alpha", "have_control", "have_treatment")} == {
        "power": 0.9,
        "alpha": 0.01,
        "have_control": 5,
        "have_treatment": 0,
    }
    n = as_json["runs_per_arm"]
    assert power_by_hand(n, effect / sd, 0.01, False) >= 0.9 > power_by_hand(n - 1, effect / sd, 0.01, False)
    table = invoke(runner, "ledger", "plan", "pools", "--expect", "0.05")
    assert table.exit_code == 0
    assert (
        "  effect      +0.05\n" in table.output and "  have        5 control, 0 treatment\n" in table.output
    )
    bad = invoke(runner, "ledger", "plan", "pools", "--power", "1.5")
    assert bad.exit_code == 2
    assert "Error: --power: power 1.5 must be above alpha (0.05) and below 1" in bad.output
    add_hypothesis("No spread yet", hypothesis_id="empty", metric="ctr", expect="+2%")
    with pytest.raises(
        InputError, match="no spread of ctr to plan from: hypothesis 'empty' has 0 control run"
    ):
        plan_hypothesis("empty")
    add_hypothesis("No expectation", hypothesis_id="vague", metric="ctr")
    with pytest.raises(InputError, match="has no expected effect; give one, e.g. \\+2%"):
        plan_hypothesis("vague")


def test_plan_uses_the_kr_counted_runs_without_control_and_pairs(client, runner, write_spec) -> None:
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    experiment = client.create_experiment("reco-train")
    counted = [0.50, 0.53, 0.49, 0.55]
    for value in counted:
        make_run(client, experiment, {"ctr": value})
    assert invoke(runner, "sync").exit_code == 0
    add_hypothesis("Re-ranking", hypothesis_id="rerank", kr="ctr", expect="0.03")
    plan = plan_hypothesis("rerank")
    assert plan.sd == pytest.approx(statistics.stdev(counted), rel=1e-12)
    assert plan.sd_source == "4 runs counted for KR ctr"
    d = 0.03 / statistics.stdev(counted)
    assert (
        power_by_hand(plan.runs_per_arm, d, 0.05, False)
        >= 0.8
        > power_by_hand(plan.runs_per_arm - 1, d, 0.05, False)
    )
    # Paired: with fewer than two pairs the spread of a difference is taken as sqrt(2) x sd.
    add_hypothesis("Seeds", hypothesis_id="seeds", kr="ctr", expect="0.03", pair_by="params.seed")
    paired = plan_hypothesis("seeds")
    assert paired.comparison == "paired" and paired.have_pairs == 0
    assert paired.sd == pytest.approx(math.sqrt(2) * statistics.stdev(counted), rel=1e-12)
    d = 0.03 / paired.sd
    assert (
        power_by_hand(paired.runs_per_arm, d, 0.05, True)
        >= 0.8
        > power_by_hand(paired.runs_per_arm - 1, d, 0.05, True)
    )
