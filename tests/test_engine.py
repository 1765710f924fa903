"""The scoring engine: each rule of DESIGN section 2, and the properties that must always hold."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlflow_okr.engine as engine
from mlflow_okr.engine import (
    Bound,
    ReasonKind,
    RunFacts,
    RunRule,
    Tally,
    Verdict,
    classify_run,
    counter_progress,
    infer_direction,
    maintain_progress,
    metric_progress,
    score_counter_kr,
    score_metric_kr,
    status_of,
    summaries_agree,
    verdict_from_tag,
    weighted_mean,
)
from mlflow_okr.results import cycle_status, kr_status
from mlflow_okr.spec import parse_spec

CTR = RunRule(
    metric="ctr",
    guardrails=(Bound("p99_latency_ms", max=50), Bound("precision", min=0.9)),
)


def run(metrics: dict[str, float], status: str = "FINISHED", deleted: bool = False) -> RunFacts:
    return RunFacts(run_id="r1", start_time=1, status=status, metrics=metrics, deleted=deleted)


GOOD = {"ctr": 0.07, "p99_latency_ms": 40.0, "precision": 0.95}

# ---------------------------------------------------------------------------------------------
# classify_run


def test_a_run_within_every_guardrail_counts():
    verdict = classify_run(CTR, run(GOOD))
    assert (verdict.state, verdict.value, verdict.tag_value) == ("counted", 0.07, "counted")


def test_guardrail_bounds_are_inclusive():
    verdict = classify_run(CTR, run({**GOOD, "p99_latency_ms": 50.0, "precision": 0.9}))
    assert verdict.state == "counted"


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_failed_and_killed_runs_are_excluded(status):
    verdict = classify_run(CTR, run(GOOD, status=status))
    assert verdict.state == "excluded"
    assert verdict.tag_value == f"excluded: run {status}"
    assert not verdict.is_guardrail_breach


def test_a_run_without_the_metric_or_deleted_does_not_concern_the_kr():
    assert classify_run(CTR, run({"p99_latency_ms": 1.0, "precision": 1.0})) is None
    assert classify_run(CTR, run(GOOD, deleted=True)) is None


@pytest.mark.parametrize(
    "breach, reason",
    [
        ({"p99_latency_ms": 51.0}, "guardrail p99_latency_ms = 51 breaks <= 50"),
        ({"precision": 0.5}, "guardrail precision = 0.5 breaks >= 0.9"),
    ],
)
def test_guardrail_breach_excludes(breach, reason):
    verdict = classify_run(CTR, run({**GOOD, **breach}))
    assert verdict.state == "excluded"
    assert verdict.reason == reason
    assert verdict.tag_value == "excluded: " + reason
    assert verdict.is_guardrail_breach


def test_guardrail_missing_while_running_is_pending():
    verdict = classify_run(CTR, run({"ctr": 0.07, "precision": 0.95}, status="RUNNING"))
    assert (verdict.state, verdict.reason) == ("pending", "waiting for p99_latency_ms")
    assert verdict.tag_value == "pending"


def test_guardrail_missing_at_end_is_excluded():
    verdict = classify_run(CTR, run({"ctr": 0.07}, status="FINISHED"))
    assert verdict.state == "excluded"
    assert verdict.reason == "guardrail p99_latency_ms, precision never logged"
    assert not verdict.is_guardrail_breach


def test_a_breach_wins_over_a_missing_guardrail_while_running():
    verdict = classify_run(CTR, run({"ctr": 0.07, "precision": 0.1}, status="RUNNING"))
    assert verdict.state == "excluded" and verdict.is_guardrail_breach


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_is_excluded(value):
    verdict = classify_run(RunRule("ctr"), run({"ctr": value}))
    assert verdict.state == "excluded"
    assert verdict.reason == f"ctr is {value}, not a finite number"


def test_a_nan_guardrail_is_a_breach():
    verdict = classify_run(CTR, run({**GOOD, "precision": math.nan}))
    assert verdict.state == "excluded" and verdict.reason.startswith("guardrail precision = nan")


def test_a_running_run_with_all_metrics_counts():
    assert classify_run(CTR, run(GOOD, status="RUNNING")).state == "counted"


# ---------------------------------------------------------------------------------------------
# Tally: the aggregates


VALUES = [("a", 0.3, 10), ("b", 0.9, 30), ("c", 0.6, 20)]


def tally_of(aggregate: str, direction="maximize", values=VALUES, maintain=None) -> Tally:
    tally = Tally(RunRule("m", aggregate=aggregate, maintain=maintain), direction)
    for run_id, value, start in values:
        tally.add(run_id, value, start)
    return tally


@pytest.mark.parametrize(
    "aggregate, direction, expected",
    [
        ("best", "maximize", (0.9, "b")),
        ("best", "minimize", (0.3, "a")),
        ("best", None, (0.9, "b")),
        ("latest", "maximize", (0.9, "b")),
        ("min", "maximize", (0.3, "a")),
        ("max", "minimize", (0.9, "b")),
        ("mean", "maximize", (pytest.approx(0.6), "b")),
        ("mean", "minimize", (pytest.approx(0.6), "a")),
        ("sum", "maximize", (pytest.approx(1.8), "b")),
        ("count", "maximize", (3.0, "b")),
    ],
)
def test_aggregates(aggregate, direction, expected):
    assert tally_of(aggregate, direction).current() == expected


def test_latest_is_the_run_that_started_last_not_the_last_added():
    values = [("late", 0.1, 99), ("early", 0.8, 1)]
    assert tally_of("latest", values=values).current() == (0.1, "late")


def test_ties_break_on_run_id_in_any_order():
    tied = [("z", 0.5, 5), ("a", 0.5, 5), ("m", 0.5, 5)]
    for order in (tied, tied[::-1], tied[1:] + tied[:1]):
        assert tally_of("best", "maximize", order).current() == (0.5, "a")
        assert tally_of("best", "minimize", order).current() == (0.5, "a")
        assert tally_of("min", values=order).current() == (0.5, "a")
        assert tally_of("max", values=order).current() == (0.5, "a")
        assert tally_of("latest", values=order).current() == (0.5, "z")


def test_an_empty_tally_has_no_current_value():
    for aggregate in ("best", "latest", "mean", "sum", "count", "min", "max"):
        assert Tally(RunRule("m", aggregate=aggregate)).current() == (None, None)


def test_sum_is_exact_whatever_the_order():
    values = [("a", 1e16, 1), ("b", 1.0, 2), ("c", -1e16, 3)]
    assert tally_of("sum", values=values).current()[0] == 1.0
    assert tally_of("sum", values=values[::-1]).current()[0] == 1.0


def test_sums_and_means_of_huge_values_stay_finite():
    values = [("a", 1e308, 1), ("b", 1e308, 2), ("c", -1e308, 3)]
    for order in (values, values[::-1], values[1:] + values[:1]):
        assert tally_of("mean", values=order).current()[0] == pytest.approx(1e308 / 3)
    # A sum beyond the float range saturates at the largest float, which MLflow can store.
    assert tally_of("sum", values=values[:2]).current()[0] == sys.float_info.max
    assert tally_of("sum", values=[("a", -1e308, 1), ("b", -1e308, 2)]).current()[0] == -sys.float_info.max


# ---------------------------------------------------------------------------------------------
# Progress


@pytest.mark.parametrize(
    "current, baseline, target, expected",
    [
        (0.065, 0.05, 0.08, 0.5),
        (0.08, 0.05, 0.08, 1.0),
        (0.2, 0.05, 0.08, 1.0),
        (0.01, 0.05, 0.08, 0.0),
        (125.0, 200.0, 50.0, 0.5),
        (20.0, 200.0, 50.0, 1.0),
        (300.0, 200.0, 50.0, 0.0),
        (None, 0.05, 0.08, 0.0),
        (0.06, None, 0.08, 0.0),
        (0.06, 0.05, None, 0.0),
        (math.nan, 0.05, 0.08, 0.0),
    ],
)
def test_metric_progress_is_clamped_share_of_the_way(current, baseline, target, expected):
    assert metric_progress(current, baseline, target) == pytest.approx(expected)


def test_maintain_progress_holds_or_breaks():
    bound = Bound("csat", min=4.5)
    assert maintain_progress(3, 4.5, bound) == 1.0
    assert maintain_progress(3, 4.4, bound) == 0.0
    assert maintain_progress(0, None, bound) == 0.0


def test_maintain_current_is_the_worst_value():
    low = Bound("csat", min=4.5)
    values = [("a", 4.9, 1), ("b", 4.6, 2), ("c", 4.8, 3)]
    assert tally_of("best", values=values, maintain=low).current() == (4.6, "b")
    band = Bound("temp", min=10, max=20)
    values = [("a", 12.0, 1), ("b", 19.5, 2), ("c", 15.0, 3)]
    assert tally_of("best", values=values, maintain=band).current() == (19.5, "b")


def test_maintain_kr_scores_one_while_it_holds():
    bound = Bound("csat", min=4.5)
    holds = tally_of("best", values=[("a", 4.7, 1), ("b", 4.5, 2)], maintain=bound)
    scored = score_metric_kr(holds, None, None, elapsed=0.5, cycle_over=False)
    assert (scored.current, scored.progress, scored.status, scored.counted_runs) == (4.5, 1.0, "achieved", 2)
    breaks = tally_of("best", values=[("a", 4.7, 1), ("b", 4.2, 2)], maintain=bound)
    scored = score_metric_kr(breaks, None, None, elapsed=0.5, cycle_over=False)
    assert (scored.current, scored.progress, scored.best_run_id) == (4.2, 0.0, "b")
    assert scored.status == "off-track"
    empty = Tally(RunRule("csat", maintain=bound))
    scored = score_metric_kr(empty, None, None, elapsed=0.5, cycle_over=False)
    assert (scored.progress, scored.status) == (0.0, "not-started")


def test_counter_krs():
    assert counter_progress(2, 3) == pytest.approx(2 / 3)
    assert counter_progress(5, 3) == 1.0
    assert counter_progress(None, 3) == 0.0
    scored = score_counter_kr(2.0, 2, 4.0, elapsed=0.5, cycle_over=False)
    assert (scored.progress, scored.status, scored.counted_runs, scored.baseline) == (0.5, "on-track", 2, 0.0)
    assert score_counter_kr(0.0, 0, 4.0, elapsed=0.5, cycle_over=False).status == "not-started"
    assert score_counter_kr(1.0, 1, 1.0, elapsed=0.1, cycle_over=False).status == "achieved"
    assert score_counter_kr(None, 0, 1.0, elapsed=1.0, cycle_over=True).status == "missed"


def test_metric_kr_without_a_baseline_is_not_started():
    tally = tally_of("best")
    scored = score_metric_kr(tally, None, 1.0, elapsed=0.5, cycle_over=False)
    assert (scored.status, scored.progress, scored.counted_runs) == ("not-started", 0.0, 3)
    assert scored.notes == ("baseline not resolved yet",)


def test_infer_direction():
    assert infer_direction(0.05, 0.08, None) == "maximize"
    assert infer_direction(200, 50, None) == "minimize"
    assert infer_direction(1, 1, None) is None
    assert infer_direction(1, 2, "minimize") == "minimize"


# ---------------------------------------------------------------------------------------------
# Status


@pytest.mark.parametrize(
    "progress, has_data, elapsed, expected",
    [
        (1.0, True, 0.1, "achieved"),
        (0.0, False, 0.5, "not-started"),
        (0.35, True, 0.5, "on-track"),  # 0.35 >= 0.7 x 0.5
        (0.34, True, 0.5, "at-risk"),
        (0.20, True, 0.5, "at-risk"),  # 0.20 >= 0.4 x 0.5
        (0.19, True, 0.5, "off-track"),
        (0.0, True, 0.0, "on-track"),  # nothing is expected on day one
        (0.69, True, 1.0, "at-risk"),
    ],
)
def test_status_during_the_cycle(progress, has_data, elapsed, expected):
    assert status_of(progress, has_data, elapsed, cycle_over=False) == expected


def test_status_uses_the_thresholds():
    assert status_of(0.29, True, 0.5, False, on_track=0.6, at_risk=0.5) == "at-risk"
    assert status_of(0.3, True, 0.5, False, on_track=0.5, at_risk=0.2) == "on-track"
    assert status_of(0.05, True, 0.5, False, on_track=0.5, at_risk=0.2) == "off-track"


@pytest.mark.parametrize(
    "progress, has_data, expected",
    [(1.0, True, "achieved"), (0.7, True, "met"), (0.69, True, "missed"), (0.0, False, "missed")],
)
def test_status_after_the_cycle(progress, has_data, expected):
    assert status_of(progress, has_data, 1.0, cycle_over=True) == expected


def test_weighted_mean():
    assert weighted_mean([(1.0, 1), (0.0, 3)]) == 0.25
    assert weighted_mean([(0.5, 2)]) == 0.5
    assert weighted_mean([]) == 0.0


# ---------------------------------------------------------------------------------------------
# Properties

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)
any_float = st.floats(allow_nan=True, allow_infinity=True)


@given(current=any_float, baseline=any_float, target=any_float)
def test_progress_is_always_between_0_and_1(current, baseline, target):
    progress = metric_progress(current, baseline, target)
    assert 0.0 <= progress <= 1.0


@given(low=finite, high=finite, baseline=finite, target=finite)
def test_progress_is_monotone_in_the_krs_direction(low, high, baseline, target):
    low, high = sorted((low, high))
    if target == baseline:
        return
    if target > baseline:  # maximize: a higher current value never lowers progress
        assert metric_progress(low, baseline, target) <= metric_progress(high, baseline, target)
    else:  # minimize: a lower current value never lowers progress
        assert metric_progress(high, baseline, target) <= metric_progress(low, baseline, target)


@given(
    values=st.lists(st.tuples(finite, st.integers(0, 10**12)), min_size=1, max_size=20),
    aggregate=st.sampled_from(["best", "latest", "mean", "sum", "count", "min", "max"]),
    direction=st.sampled_from(["maximize", "minimize", None]),
    maintain=st.sampled_from([None, Bound("m", min=0.0), Bound("m", min=-5.0, max=5.0)]),
    data=st.data(),
)
def test_tally_does_not_depend_on_the_order_of_adds(values, aggregate, direction, maintain, data):
    runs = [(f"run-{index:02d}", value, start) for index, (value, start) in enumerate(values)]
    shuffled = data.draw(st.permutations(runs))
    first = tally_of(aggregate, direction, runs, maintain)
    second = tally_of(aggregate, direction, shuffled, maintain)
    assert first.current() == second.current()
    assert first.count == second.count == len(runs)


@given(
    values=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=10),
    low=finite,
    high=finite,
)
def test_best_is_monotone_when_a_better_run_arrives(values, low, high):
    tally = tally_of("best", "maximize", [(f"r{i}", v, i) for i, v in enumerate(values)])
    before = metric_progress(tally.current()[0], 0.0, 1.0)
    tally.add("new", max(values) + abs(high - low), 99)
    assert metric_progress(tally.current()[0], 0.0, 1.0) >= before


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 100)), min_size=1, max_size=10))
def test_weighted_mean_is_within_the_values_and_matches_the_formula(pairs):
    mean = weighted_mean(pairs)
    expected = sum(value * weight for value, weight in pairs) / sum(weight for _, weight in pairs)
    assert mean == pytest.approx(expected)
    assert min(v for v, _ in pairs) - 1e-12 <= mean <= max(v for v, _ in pairs) + 1e-12


def _spec_with(weights: list[list[float]]) -> str:
    lines = ["version: 1", "cycle: 2026-Q4", "objectives:"]
    for o_index, objective in enumerate(weights):
        lines += [f"  - id: o{o_index}", "    title: Objective", "    category: product", "    key_results:"]
        for k_index, weight in enumerate(objective):
            lines.append(f"      - {{id: k{o_index}-{k_index}, source: manual, target: 1, weight: {weight}}}")
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.floats(0, 1), st.floats(0.1, 10)), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_objective_and_cycle_scores_are_weighted_means(objectives):
    spec = parse_spec(_spec_with([[weight for _, weight in krs] for krs in objectives]))
    now = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
    statuses = {}
    for (_, kr), (progress, _) in zip(
        spec.key_results(), [pair for krs in objectives for pair in krs], strict=True
    ):
        scored = score_counter_kr(progress, 1, 1.0, elapsed=0.5, cycle_over=False)
        statuses[kr.id] = kr_status(kr, scored)
    status = cycle_status(spec, statuses, now)
    objective_scores = []
    for objective_status, krs in zip(status.objectives, objectives, strict=True):
        expected = sum(p * w for p, w in krs) / sum(w for _, w in krs)
        assert objective_status.score == expected
        objective_scores.append(objective_status.score)
    assert status.score == sum(objective_scores) / len(objective_scores)
    assert 0.0 <= status.score <= 1.0


def test_a_resolved_baseline_on_the_wrong_side_of_the_target_scores_nothing():
    tally = tally_of("best", "maximize")  # best 0.9
    scored = score_metric_kr(tally, 0.95, 0.9, elapsed=0.5, cycle_over=False)
    assert scored.progress == 0.0
    assert scored.notes == ("baseline 0.95 -> target 0.9 contradicts direction maximize",)
    equal = score_metric_kr(tally, 0.9, 0.9, elapsed=0.5, cycle_over=False)
    assert equal.progress == 0.0 and equal.notes[0].endswith("contradicts direction maximize")
    agreeing = score_metric_kr(tally, 0.5, 1.3, elapsed=0.5, cycle_over=False)
    assert agreeing.progress == pytest.approx(0.5) and agreeing.notes == ()


# ---------------------------------------------------------------------------------------------
# Reason kinds, and tallies saved and revised run by run


def test_every_reason_reads_back_from_its_tag() -> None:
    from mlflow_okr.engine import verdict_from_tag

    rule = RunRule("acc", guardrails=(Bound("latency", max=50),))
    cases = {
        ReasonKind.NONE: RunFacts("a", 1, "FINISHED", {"acc": 0.9, "latency": 10}),
        ReasonKind.WAITING: RunFacts("b", 1, "RUNNING", {"acc": 0.9}),
        ReasonKind.GUARDRAIL_MISSING: RunFacts("c", 1, "FINISHED", {"acc": 0.9}),
        ReasonKind.GUARDRAIL_BREACH: RunFacts("d", 1, "FINISHED", {"acc": 0.9, "latency": 80}),
        ReasonKind.RUN_NOT_COUNTED: RunFacts("e", 1, "KILLED", {"acc": 0.9, "latency": 10}),
        ReasonKind.NOT_A_NUMBER: RunFacts("f", 1, "FINISHED", {"acc": float("nan"), "latency": 10}),
    }
    for kind, facts in cases.items():
        verdict = classify_run(rule, facts)
        assert verdict is not None and verdict.reason_kind is kind
        read = verdict_from_tag(verdict.tag_value)
        reason = verdict.reason if verdict.state == "excluded" else ""  # only exclusions say why
        assert (read.state, read.reason, read.reason_kind) == (verdict.state, reason, kind)
    assert verdict_from_tag(None) is None
    assert verdict_from_tag("excluded: a reason from another version").reason_kind is ReasonKind.UNKNOWN
    assert classify_run(rule, cases[ReasonKind.GUARDRAIL_BREACH]).is_guardrail_breach
    assert not classify_run(rule, cases[ReasonKind.GUARDRAIL_MISSING]).is_guardrail_breach


AGGREGATES = ["best", "latest", "mean", "sum", "count", "min", "max"]
run_values = st.sampled_from([0.1, 0.5, 0.5, 0.9, 1e300, -2.5])
run_event = st.tuples(
    st.integers(0, 4),  # which run
    st.one_of(st.none(), run_values),  # None: the run no longer counts; a value: counted with it
    st.sampled_from(["counted", "pending", "excluded"]),
)


@settings(max_examples=300, deadline=None)
@given(
    aggregate=st.sampled_from(AGGREGATES + ["maintain"]),
    direction=st.sampled_from(["maximize", "minimize"]),
    events=st.lists(run_event, max_size=25),
    leaders=st.sampled_from([1, 2, 8]),  # 1 and 2: boards that run dry and refill, over 5 runs
)
def test_a_tally_revised_run_by_run_equals_a_recount(aggregate, direction, events, leaders) -> None:
    with boards_of(leaders):
        revise_and_recount(aggregate, direction, events)


@contextlib.contextmanager
def boards_of(leaders: int):
    """Tallies keep `leaders` runs per extreme inside the block."""
    kept, engine.LEADERS = engine.LEADERS, leaders
    try:
        yield
    finally:
        engine.LEADERS = kept


def revise_and_recount(aggregate, direction, events) -> None:
    """Each event revised into the saved tally, checked against a recount of all runs."""
    import json

    from mlflow_okr.compute import VerdictChange, revise_tally
    from mlflow_okr.engine import summaries_agree, value_text, verdict_from_tag

    if aggregate == "maintain":
        rule = RunRule("m", maintain=Bound("m", min=0.2))
    else:
        rule = RunRule("m", aggregate=aggregate)
    verdicts: dict[str, Verdict] = {}
    saved = Tally(rule, direction).summary()
    for index, value, state in events:
        run_id = f"run-{index}"
        if value is None:
            new = None
        elif state == "counted":
            new = Verdict("counted", "", value)
        elif state == "pending":
            new = Verdict("pending", "waiting for latency", value, ReasonKind.WAITING)
        else:
            reason = "guardrail latency = 80 breaks <= 50"
            new = Verdict("excluded", reason, value, ReasonKind.GUARDRAIL_BREACH)
        old = verdicts.get(run_id)
        if new is None:
            verdicts.pop(run_id, None)
        else:
            verdicts[run_id] = new
        recount = Tally(rule, direction)
        for other, verdict in sorted(verdicts.items()):
            recount.note(other, verdict, int(other[-1]))
        # The old verdict is read back from the run's tags: only a sum or mean keeps its value.
        value_tag = value_text(old.value) if old is not None and rule.sums else None
        old_read = None if old is None else verdict_from_tag(old.tag_value, value_tag)
        tally = Tally.from_summary(rule, direction, json.loads(json.dumps(saved)))
        if revise_tally(tally, [VerdictChange(run_id, index, old_read, new)]):
            assert summaries_agree(tally.summary(), recount.summary()), (tally.summary(), recount.summary())
            assert tally.current() == recount.current()
            saved = tally.summary()  # revised boards may list fewer runner-ups: go on from them
        else:
            saved = recount.summary()  # a tally that could not be revised is recounted


@pytest.mark.parametrize("aggregate", ["mean", "sum"])
def test_a_sum_or_mean_is_revised_with_the_value_its_run_keeps_in_a_tag(aggregate) -> None:
    from mlflow_okr.compute import VerdictChange, revise_tally
    from mlflow_okr.engine import value_text, verdict_from_tag

    rule = RunRule("m", aggregate=aggregate)
    values = {"run-a": 0.25, "run-b": 0.5, "run-c": 0.9}  # run-c holds the best
    tally = Tally(rule, "maximize")
    for run_id, value in values.items():
        tally.note(run_id, Verdict("counted", "", value), 1)
    # run-b moves from 0.5 to 0.75; its okr.kr.<id>.value tag still says 0.5.
    old = verdict_from_tag("counted", value_text(0.5))
    assert old is not None and old.value == 0.5
    without_value = Tally.from_summary(rule, "maximize", tally.summary())
    moved = Verdict("counted", "", 0.75)
    assert not revise_tally(without_value, [VerdictChange("run-b", 1, verdict_from_tag("counted"), moved)])
    assert revise_tally(tally, [VerdictChange("run-b", 1, old, Verdict("counted", "", 0.75))])
    recount = Tally(rule, "maximize")
    for run_id, value in {**values, "run-b": 0.75}.items():
        recount.note(run_id, Verdict("counted", "", value), 1)
    assert tally.summary() == recount.summary()
    assert tally.current() == recount.current() == ((1.9 if aggregate == "sum" else 1.9 / 3), "run-c")
    # Leaving the count takes the kept value out too.
    leaving = verdict_from_tag("counted", value_text(0.25))
    assert revise_tally(tally, [VerdictChange("run-a", 1, leaving, None)])
    remaining = Fraction(0.75) + Fraction(0.9)
    assert tally.current()[0] == float(remaining if aggregate == "sum" else remaining / 2)
    assert verdict_from_tag("counted", "not a number").value is None


def test_the_next_runner_up_takes_over_when_the_best_run_gets_worse() -> None:
    from mlflow_okr.compute import VerdictChange, revise_tally

    tally = Tally(RunRule("acc"), "maximize")
    for run_id, value in {"a": 0.9, "b": 0.8, "c": 0.7}.items():
        tally.note(run_id, Verdict("counted", "", value), 1)
    counted = verdict_from_tag("counted")
    assert revise_tally(tally, [VerdictChange("a", 1, counted, Verdict("counted", "", 0.5))])
    assert tally.current() == (0.8, "b")
    assert revise_tally(tally, [VerdictChange("b", 1, counted, Verdict("excluded", "run FAILED", 0.8))])
    assert tally.current() == (0.7, "c") and tally.count == 2
    with boards_of(1):
        short = Tally(RunRule("acc"), "maximize")
        for run_id, value in {"a": 0.9, "b": 0.8}.items():
            short.note(run_id, Verdict("counted", "", value), 1)
        assert short.boards["highest"] == [(0.9, "a")]
        # The runner-up was not kept: the best run getting worse needs a recount.
        assert not revise_tally(short, [VerdictChange("a", 1, counted, Verdict("counted", "", 0.5))])
    assert not summaries_agree({"highest": [[0.9, "a"]]}, {"highest": [[0.9, "b"]]})
    revised = {"highest": [[0.9, "a"]], "count": 2}
    recounted = {"highest": [[0.9, "a"], [0.8, "b"]], "count": 2}
    assert summaries_agree(revised, recounted)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_a_tallys_sum_is_the_exact_sum_of_its_floats_and_survives_its_summary(values) -> None:
    import json

    tally = Tally(RunRule("m", aggregate="sum"), "maximize")
    for index, value in enumerate(values):
        tally.note(f"run-{index}", Verdict("counted", "", value), index)
    assert tally.exact_sum == sum((Fraction(value) for value in values), Fraction(0))
    saved = json.loads(json.dumps(tally.summary()))
    assert Tally.from_summary(tally.rule, "maximize", saved).exact_sum == tally.exact_sum


def test_a_saved_sum_that_no_floats_add_up_to_is_refused() -> None:
    saved = Tally(RunRule("m", aggregate="mean"), "maximize").summary()
    saved["sum"] = ["1", "3"]  # 1/3: no float, and no sum of floats, is a third
    with pytest.raises(ValueError, match="not a sum of floats"):
        Tally.from_summary(RunRule("m", aggregate="mean"), "maximize", saved)
