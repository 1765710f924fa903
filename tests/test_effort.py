"""Effort: runs, people, run-hours and improving runs per KR, objective, owner and team, and the
cycle's unaligned runs, equal to a hand count on a store with known runs."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import compat, effort, effort_reads, practice, state
from mlflow_okr.api import apply_spec, sync
from mlflow_okr.spec import parse_cycle, parse_spec
from tests.conftest import NOW, invoke
from tests.specs import ON_CALL, objective, okrs_yaml, ops, reco

HOUR_MS = 3_600_000
NOV_1 = parse_cycle("2026-Q4").start_ms + 31 * 24 * HOUR_MS
SPEC = okrs_yaml(
    reco(
        "{id: ctr, metric: online_ctr, measures: product, experiments: [reco], baseline: 0.05, target: 0.08}",
        "{id: csat, metric: csat, measures: business, experiments: [reco], maintain: {min: 4.0}}",
    ),
    ops("{id: latency, metric: p99, experiments: [serving], baseline: 100, target: 50}", ON_CALL),
)


def run(client, experiment_id, user, start_hour, hours=None, metrics=None, status="FINISHED") -> str:
    """A run by `user` starting `start_hour` hours after 2026-11-01, lasting `hours` (None: running)."""
    start = NOV_1 + int(start_hour * HOUR_MS)
    created = client.create_run(experiment_id, start_time=start, tags={"mlflow.user": user})
    run_id = created.info.run_id
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value, timestamp=start + 1000)
    if hours is not None:
        client.set_terminated(run_id, status, end_time=start + int(hours * HOUR_MS))
    return run_id


@pytest.fixture
def store(client):
    """Known runs: who, how long, which KR; the hand count is in each test."""
    apply_spec(parse_spec(SPEC), tracking_uri=client.tracking_uri)
    reco = client.create_experiment("reco")
    serving = client.create_experiment("serving")
    scratch = client.create_experiment("scratch")
    runs = {
        "r1": run(client, reco, "ann", 0, 2, {"online_ctr": 0.06, "csat": 4.5}),
        "r2": run(client, reco, "bob", 10, 1, {"online_ctr": 0.055, "csat": 4.2}),
        # Still running at NOW (2026-11-15 00:00): 12 hours so far.
        "r3": run(client, reco, "ann", 13 * 24 + 12, None, {"online_ctr": 0.07, "csat": 4.1}),
        "r4": run(client, reco, "bob", 20, 5, {"online_ctr": 0.09, "csat": 4.9}),  # deleted below
        "r5": run(client, reco, "carol", 30, 3, {"online_ctr": 0.1, "csat": 4.9}, status="FAILED"),
        "s1": run(client, serving, "carol", 40, 4, {"p99": 80}),
        "s2": run(client, serving, "dave", 50, 1, {"p99": 90}),
        "x1": run(client, scratch, "ann", 60, 10),
        "x2": run(client, scratch, "erin", 70, 6),
        "x3": run(client, scratch, "erin", -24 * 40, 6),  # started in 2026-Q3
    }
    client.delete_run(runs["r4"])
    sync(tracking_uri=client.tracking_uri, now=NOW)
    return runs


def test_effort_equals_a_hand_count(client, store) -> None:
    status = practice.effort_status(tracking_uri=client.tracking_uri, now=NOW)
    krs = {kr.id: kr.effort.model_dump() for kr in status.key_results()}
    # ctr: r1, r2 and r3 (running, 12 h so far); r4 is deleted, r5 failed. r1 and r3 raised the best.
    assert krs["ctr"] == {"runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 2}
    # A maintain KR holds or breaks; no run moves it.
    assert krs["csat"] == {"runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 0}
    # s1 (p99 80) moved latency 40% of the way; s2 (90) did not beat it.
    assert krs["latency"] == {"runs": 2, "people": 2, "run_hours": 5.0, "improving_runs": 1}
    assert krs["on-call"] == {"runs": 0, "people": 0, "run_hours": 0.0, "improving_runs": 0}
    objectives = {o.id: o.effort.model_dump() for o in status.objectives}
    assert objectives == {
        "reco": {"runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 2},  # each run once
        "ops": {"runs": 2, "people": 2, "run_hours": 5.0, "improving_runs": 1},
    }
    assert [owner.model_dump() for owner in status.effort.owners] == [
        {"id": "platform", "runs": 2, "people": 2, "run_hours": 5.0, "improving_runs": 1},
        {"id": "reco-team", "runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 2},
    ]
    assert status.effort.teams == []  # one unnamed set
    # Every run of the cycle outside okr/: r1 r2 r3 r5 s1 s2 x1 x2 (x3 started in Q3, r4 deleted).
    assert (status.effort.runs, status.effort.people, status.effort.run_hours) == (8, 5, 39.0)
    # Unaligned: the failed r5 (3 h) and scratch's x1 (10 h) and x2 (6 h).
    assert status.unaligned.model_dump() == {
        "runs": 3,
        "run_hours": 19.0,
        "runs_share": 3 / 8,
        "hours_share": 19 / 39,
        "top_experiments": [
            {"experiment_id": client.get_experiment_by_name("scratch").experiment_id, "name": "scratch",
             "runs": 2, "run_hours": 16.0},
            {"experiment_id": client.get_experiment_by_name("reco").experiment_id, "name": "reco",
             "runs": 1, "run_hours": 3.0},
        ],
    }


def test_search_runs_reads_the_same_facts_as_sql(client, store) -> None:
    status = practice.effort_status(tracking_uri=client.tracking_uri, now=NOW)
    metric_krs = effort.metric_krs_of(status, state.current_sets(client, "2026-Q4"))
    cycle = parse_cycle("2026-Q4")
    now_ms = int(NOW.timestamp() * 1000)
    by_sql = effort_reads.sql_facts(compat.store_of(client), cycle, now_ms, metric_krs)
    by_search = effort_reads.search_facts(client, cycle, now_ms, metric_krs)
    key = lambda g: (sorted(g.krs), g.user, g.experiment_id)  # noqa: E731
    assert sorted(by_sql.groups, key=key) == sorted(by_search.groups, key=key)
    # search_runs reads every counted run; SQL only those that beat every earlier one (r2 did not).
    assert {run.run_id for run in by_search.candidates["ctr"]} == {store["r1"], store["r2"], store["r3"]}
    assert {run.run_id for run in by_sql.candidates["ctr"]} == {store["r1"], store["r3"]}
    improving = [
        {tag_id: [run.run_id for run in runs] for tag_id, runs in effort.improving_by_kr(
            client, cycle, facts, metric_krs).items()}
        for facts in (by_sql, by_search)
    ]
    assert improving[0] == improving[1] == {"ctr": [store["r1"], store["r3"]], "latency": [store["s1"]]}


AGGREGATES = okrs_yaml(objective(
    "lab",
    "{id: mean-loss, metric: loss, aggregate: mean, experiments: [lab], baseline: 1.0, target: 0.5}",
    "{id: total-gain, metric: gain, aggregate: sum, experiments: [lab], baseline: 0, target: 10}",
    "{id: latest-acc, metric: acc, aggregate: latest, experiments: [lab], baseline: 0.5, target: 0.9}",
    "{id: acc-runs, metric: acc, aggregate: count, experiments: [lab], baseline: 1, target: 3}",
    "{id: tie, metric: tie, aggregate: mean, experiments: [lab], baseline: 0.5, target: 1.0}",
    title="Every aggregate", category="operational", owner="lab-team",
))


def check_every_aggregate(tracking_uri: str) -> None:
    """Runs a, b, c, d in that order; the improving runs of each aggregate, by hand:

    mean-loss (1.0 -> 0.5): running means 0.9, 0.8, 0.85, 0.7375: a, b and d lower it further.
    total-gain (0 -> 10): running sums 2, 1, 6, 12: a, c and d raise it.
    latest-acc (0.5 -> 0.9): 0.6, 0.55, 0.8, 0.95: a, c and d each beat the best so far.
    acc-runs (count, 1 -> 3): progress rises at the 2nd and 3rd run, b and c.
    tie (mean, 0.5 -> 1.0): 0.9 four times: the mean never moves after a.
    """
    client = MlflowClient(tracking_uri)
    apply_spec(parse_spec(AGGREGATES), tracking_uri=tracking_uri)
    lab = client.create_experiment("lab")
    runs = {
        name: run(client, lab, "ann", hour, 1, {"loss": loss, "gain": gain, "acc": acc, "tie": 0.9})
        for name, hour, loss, gain, acc in (
            ("a", 0, 0.9, 2, 0.6), ("b", 1, 0.7, -1, 0.55), ("c", 2, 0.95, 5, 0.8), ("d", 3, 0.4, 6, 0.95),
        )
    }
    sync(tracking_uri=tracking_uri, now=NOW)
    status = practice.effort_status(tracking_uri=tracking_uri, now=NOW)
    expected = {"mean-loss": "abd", "total-gain": "acd", "latest-acc": "acd", "acc-runs": "bc", "tie": "a"}
    assert {kr.id: kr.effort.improving_runs for kr in status.key_results()} == {
        kr_id: len(names) for kr_id, names in expected.items()
    }
    metric_krs = effort.metric_krs_of(status, state.current_sets(client, "2026-Q4"))
    cycle, now_ms = parse_cycle("2026-Q4"), int(NOW.timestamp() * 1000)
    by_sql = effort_reads.sql_facts(compat.store_of(client), cycle, now_ms, metric_krs)
    by_search = effort_reads.search_facts(client, cycle, now_ms, metric_krs)
    for facts in (by_sql, by_search):
        found = effort.improving_by_kr(client, cycle, facts, metric_krs)
        assert {kr_id: [r.run_id for r in found[kr_id]] for kr_id in expected} == {
            kr_id: [runs[name] for name in names] for kr_id, names in expected.items()
        }
    # SQL returns only the runs that can have moved each KR; four equal means are too close to
    # call in floats and go to the exact tally.
    assert {r.run_id for r in by_sql.candidates["latest-acc"]} == {runs["a"], runs["c"], runs["d"]}
    assert [r.run_id for r in by_sql.ranked["acc-runs"]] == [runs["b"], runs["c"]]
    items = {item.tag_id: item for item in metric_krs}
    assert effort.improving_running(items["mean-loss"], by_sql.running["mean-loss"]) is not None
    assert effort.improving_running(items["tie"], by_sql.running["tie"]) is None


def test_every_aggregate_s_improving_runs(tracking_uri) -> None:
    check_every_aggregate(tracking_uri)


def test_every_aggregate_s_improving_runs_on_a_sql_server(sql_server_uri) -> None:
    check_every_aggregate(sql_server_uri)


def test_count_steps_are_where_the_engine_s_tally_rises() -> None:
    assert effort.count_steps(1, 3) == (2, 3)
    assert effort.count_steps(0, 100_000) == (1, 100_000)
    assert effort.count_steps(2.5, 4.2) == (3, 5)
    assert effort.count_steps(5, 2) == (1, 1)  # falling: only the first run can raise it
    assert effort.count_steps(0.5, 0) == (1, 0)
    assert effort.count_steps(3, 3) == effort.count_steps(None, 3) == (1, 0)
    assert effort.count_steps(0, 2.0**53) is None  # consecutive counts may round to one progress
    for baseline, target in ((1, 3), (2.5, 4.2), (5, 2), (-3, 2), (0.5, 0), (0, 0.5)):
        kr = parse_spec(okrs_yaml(objective(
            "o", f"{{id: k, metric: m, aggregate: count, baseline: {baseline}, target: {target}}}", title="O",
        ))).find_key_result("k")
        direction = "maximize" if target > baseline else "minimize"
        item = effort_reads.MetricKr("k", kr, direction, baseline, target)
        runs = [effort_reads.CountedRun(f"run-{place}", place, 0.0) for place in range(1, 9)]
        first, last = effort.count_steps(baseline, target)
        places = range(first, min(last, 8) + 1)
        assert effort.improving_runs(kr, item, runs) == [f"run-{place}" for place in places]


def test_status_effort_json_csv_and_table(client, store, runner) -> None:
    args = ["status", "--effort", "--as-of", "2026-11-15", "--tracking-uri", client.tracking_uri]
    result = invoke(runner, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    ctr = payload["objectives"][0]["key_results"][0]
    assert ctr["effort"] == {"runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 2}
    assert payload["unaligned"]["runs"] == 3 and payload["unaligned"]["runs_share"] == 0.375
    csv = invoke(runner, *args, "--format", "csv")
    assert csv.exit_code == 0
    lines = csv.output.splitlines()
    assert lines[0] == "level,id,runs,people,run_hours,improving_runs,runs_share,hours_share,cycle"
    assert "kr,ctr,3,2,15.0,2,,,2026-Q4" in lines
    assert "unaligned-experiment,scratch,2,0,16.0,0,,,2026-Q4" in lines
    table = invoke(runner, *args)
    assert table.exit_code == 0
    assert "Unaligned (count for no KR): 3 runs (38%), 19.0 run-hours (49%)." in table.output
    assert "  scratch: 2 runs, 16.0 run-hours" in table.output


ANNUAL = okrs_yaml(objective(
    "growth", "{id: ctr-year, metric: online_ctr, experiments: [reco], baseline: 0.05, target: 0.1}",
    title="Grow engagement this year", owner="exec",
), cycle="2026")


def test_status_effort_covers_every_current_cycle(client, store, runner) -> None:
    """2026 encloses 2026-Q4: each gets its own effort, over the runs that started in it.

    2026 adds q3 (reco, dave, 2 h, online_ctr 0.08, started 2026-09-02) and x3 (scratch, 2026-09-22)
    to the quarter's runs: 10 runs, 5 people, 39 + 2 + 6 = 47 run-hours. ctr-year counts r1, r2,
    r3 and q3 (17 h; ann, bob, dave); q3 came first with the best value, the only improving run.
    Unaligned in 2026: r5, x1, x2 and x3 (s1 and s2 count for a quarter KR).
    """
    apply_spec(parse_spec(ANNUAL), tracking_uri=client.tracking_uri)
    q3 = run(client, client.get_experiment_by_name("reco").experiment_id, "dave", -24 * 60, 2,
             {"online_ctr": 0.08})
    sync(tracking_uri=client.tracking_uri, now=NOW)
    args = ["status", "--effort", "--as-of", "2026-11-15", "--tracking-uri", client.tracking_uri]
    payload = json.loads(invoke(runner, *args, "--format", "json").output)
    assert payload["cycle"]["name"] == "2026-Q4"
    assert payload["objectives"][0]["key_results"][0]["effort"] == {
        "runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 2,
    }
    assert (payload["effort"]["runs"], payload["unaligned"]["runs"]) == (8, 3)  # the quarter as before
    [year] = payload["enclosing_cycles"]
    assert year["cycle"]["name"] == "2026"
    ctr_year = {"runs": 4, "people": 3, "run_hours": 17.0, "improving_runs": 1}
    assert year["objectives"][0]["key_results"][0]["effort"] == ctr_year
    assert year["objectives"][0]["effort"] == ctr_year
    assert year["effort"] == {
        "runs": 10, "people": 5, "run_hours": 47.0, "owners": [{"id": "exec", **ctr_year}], "teams": [],
    }
    scratch = client.get_experiment_by_name("scratch").experiment_id
    reco_id = client.get_experiment_by_name("reco").experiment_id
    assert year["unaligned"] == {
        "runs": 4, "run_hours": 25.0, "runs_share": 4 / 10, "hours_share": 25 / 47,
        "top_experiments": [
            {"experiment_id": scratch, "name": "scratch", "runs": 3, "run_hours": 22.0},
            {"experiment_id": reco_id, "name": "reco", "runs": 1, "run_hours": 3.0},
        ],
    }
    year_cycle = parse_cycle("2026")
    year_status = practice.effort_status(tracking_uri=client.tracking_uri, now=NOW).enclosing_cycles[0]
    metric_krs = effort.metric_krs_of(year_status, state.current_sets(client, "2026"))
    facts = effort.read_effort_facts(client, year_cycle, NOW, metric_krs)
    improving = effort.improving_by_kr(client, year_cycle, facts, metric_krs)
    assert [r.run_id for r in improving["ctr-year"]] == [q3]
    table = invoke(runner, *args).output
    assert table.index("Effort in 2026-Q4:") < table.index("Effort in 2026:")
    assert "Unaligned (count for no KR): 4 runs (40%), 25.0 run-hours (53%)." in table
    csv = invoke(runner, *args, "--format", "csv").output.splitlines()
    assert "kr,ctr-year,4,3,17.0,1,,,2026" in csv and "kr,ctr,3,2,15.0,2,,,2026-Q4" in csv
    # One cycle asked for: that cycle alone.
    alone = json.loads(invoke(runner, *args, "--cycle", "2026", "--format", "json").output)
    assert alone["cycle"]["name"] == "2026" and alone["enclosing_cycles"] == []
    assert alone["effort"] == year["effort"]


def test_status_json_without_effort_has_no_effort_fields(client, store, runner) -> None:
    result = invoke(runner, "status", "--format", "json", "--tracking-uri", client.tracking_uri)
    payload = json.loads(result.output)
    assert "unaligned" not in payload and "effort" not in payload
    assert "effort" not in payload["objectives"][0]["key_results"][0]


def test_the_report_has_an_effort_section_with_a_chart(client, store, runner) -> None:
    args = ["report", "--as-of", "2026-11-15", "--tracking-uri", client.tracking_uri]
    markdown = invoke(runner, *args)
    assert markdown.exit_code == 0, markdown.output
    assert (
        "8 runs by 5 people, 39.0 run-hours this cycle; 3 runs (38%) and 19.0 run-hours (49%) counted "
        "for no KR. Top unaligned experiments: scratch (16.0 h), reco (3.0 h)."
    ) in markdown.output
    assert "| reco | ctr | 3 | 2 | 15.0 | 2 |" in markdown.output
    page = invoke(runner, *args, "--format", "html")
    chart = '<img class="chart" alt="Run-hours per key result and unaligned" src="data:image/svg+xml;base64,'
    assert chart in page.output
    payload = json.loads(invoke(runner, *args, "--format", "json").output)
    assert payload["unaligned"]["runs"] == 3 and payload["effort"]["runs"] == 8


def test_the_board_shows_effort_with_its_details(client, store) -> None:
    from mlflow_okr.board.data import board_state

    board = board_state(client.tracking_uri, None, now=NOW)
    ctr = {"runs": 3, "people": 2, "run_hours": 15.0, "improving_runs": 2}
    assert board["effort"]["key_results"]["ctr"] == ctr
    assert board["effort"]["unaligned"]["runs_share"] == 3 / 8
    assert board["effort"]["cycle"]["run_hours"] == 39.0
