"""An organization on one MLflow: team sets of one cycle, alignment roll-up, nested cycles."""

from __future__ import annotations

import datetime as dt
import json

import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mlflow_okr import cycles, state, vocabulary
from mlflow_okr.spec import parse_cycle
from mlflow_okr.store import flush
from mlflow_okr.sync import stored_cycle_status, sync
from tests.conftest import invoke, make_run, requires_okr_store
from tests.live_fixtures import (
    EXPERIMENT,
    live_spec_text,
    operation,
    publish,
    run_operations,
    use_okr_uri,
    wait_for,
)
from tests.servers import DEPLOYMENTS, deployment_args, mlflow_server

AS_OF = ("--as-of", "2026-11-15")


def team_spec(team: str | None, objective: str, kr_id: str, metric: str, extra: str = "") -> str:
    team_line = f"team: {team}\n" if team else ""
    return (
        f"version: 1\n{team_line}cycle: 2026-Q4\nobjectives:\n  - id: {objective}\n"
        f"    title: {objective.title()}\n    category: product\n{extra}    key_results:\n"
        f"      - {{id: {kr_id}, metric: {metric}, experiments: [train], baseline: 0.5, target: 0.9}}\n"
    )


def in_cycle(text: str, name: str, start: str, end: str) -> str:
    """`team_spec` text with cycle `name` running from `start` to `end` instead of 2026-Q4."""
    return text.replace("cycle: 2026-Q4", f"cycle: {{name: {name}, start: {start}, end: {end}}}")


COMPANY = """\
version: 1
cycle: 2026
objectives:
  - id: grow
    title: Grow the business
    category: product
    key_results:
      - {id: revenue, source: manual, target: 100}
"""


def apply(runner, write_spec, text: str, name: str):
    return invoke(runner, "apply", str(write_spec(text, name)))


def status_json(runner, *args: str) -> dict:
    result = invoke(runner, "status", "--format", "json", *AS_OF, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_second_teams_apply_keeps_the_first_teams_okrs(client, runner, write_spec):
    assert apply(runner, write_spec, team_spec("team-a", "reco", "ctr", "ctr"), "a.yaml").exit_code == 0
    result = apply(runner, write_spec, team_spec("team-b", "fraud", "recall", "recall"), "b.yaml")
    assert result.exit_code == 0, result.output
    assert "okr/2026-Q4/team-b" in result.output
    assert "retire" not in result.output
    sets = {published.label: published for published in state.published_sets(client)}
    assert set(sets) == {"2026-Q4/team-a", "2026-Q4/team-b"}
    assert list(sets["2026-Q4/team-a"].kr_runs) == ["ctr"]
    assert sets["2026-Q4/team-a"].retired_kr_runs == {}
    payload = status_json(runner)
    assert [(o["team"], o["id"]) for o in payload["objectives"]] == [("team-a", "reco"), ("team-b", "fraud")]
    narrowed = status_json(runner, "--team", "team-b")
    assert [o["id"] for o in narrowed["objectives"]] == ["fraud"]
    table = invoke(runner, "status", *AS_OF).output
    assert "[team team-a]" in table and "[team team-b]" in table
    description = client.get_experiment_by_name("okr/2026-Q4/team-b").tags["mlflow.note.content"]
    assert description.startswith("# OKRs 2026\\-Q4 · team team\\-b: grade")


def test_a_kr_id_another_team_uses_is_refused_with_the_line(client, runner, write_spec):
    assert apply(runner, write_spec, team_spec("team-a", "reco", "ctr", "ctr"), "a.yaml").exit_code == 0
    path = write_spec(team_spec("team-b", "fraud", "ctr", "recall"), "b.yaml")
    assert_refused(client, runner, path, "okr/2026-Q4/team-b", (
        "9: objectives[0].key_results[0].id: KR id 'ctr' is already used by team 'team-a' of cycle "
        "2026-Q4; KR ids are unique across a cycle's sets"
    ))


def assert_refused(client, runner, path, experiment: str, where_and_why: str) -> None:
    """`apply path` is exit 2 with `Error: <path>:<where_and_why>` and creates no experiment."""
    result = invoke(runner, "apply", str(path))
    assert (result.exit_code, result.output) == (2, f"Error: {path}:{where_and_why}\n")
    assert client.get_experiment_by_name(experiment) is None


def test_a_cycle_name_another_team_published_with_other_dates_is_refused(client, runner, write_spec):
    def with_dates(text: str, start: str, end: str) -> str:
        return in_cycle(text, "fy-q3", start, end)

    team_a = team_spec("team-a", "reco", "ctr", "ctr")
    assert apply(runner, write_spec, with_dates(team_a, "2026-10-01", "2026-12-31"), "a.yaml").exit_code == 0
    team_b = team_spec("team-b", "fraud", "recall", "recall")
    path = write_spec(with_dates(team_b, "2026-11-01", "2026-12-31"), "b.yaml")
    assert_refused(client, runner, path, "okr/fy-q3/team-b", (
        "3: cycle: cycle 'fy-q3' runs 2026-10-01 .. 2026-12-31 in the set of team 'team-a'; the sets of "
        "a cycle share its dates: write those, or name another cycle"
    ))
    assert apply(runner, write_spec, with_dates(team_b, "2026-10-01", "2026-12-31"), "b.yaml").exit_code == 0
    # Moving the cycle's dates: a published set goes first, and names the sets left to move; until
    # they have, each set keeps its own dates, and can still be applied.
    new_dates = with_dates(team_a, "2026-10-01", "2027-01-15")
    for _ in range(2):
        moved = invoke(runner, "apply", str(write_spec(new_dates, "a.yaml")))
        assert moved.exit_code == 0, moved.output
        assert (
            "note: team 'team-b' of cycle fy-q3 says 2026-10-01 .. 2026-12-31, this set 2026-10-01 .. "
            "2027-01-15; apply the sets of a cycle with one date range\n"
        ) in moved.output
    team_c = team_spec("team-c", "growth", "signups", "signups")
    third = invoke(runner, "apply", str(write_spec(with_dates(team_c, "2026-09-01", "2026-12-31"), "c.yaml")))
    assert third.exit_code == 2
    assert (
        "runs 2026-10-01 .. 2027-01-15 in the set of team 'team-a', 2026-10-01 .. 2026-12-31 in the set "
        "of team 'team-b';"
    ) in third.output.replace("\n", "")
    assert apply(runner, write_spec, with_dates(team_c, "2026-10-01", "2027-01-15"), "c.yaml").exit_code == 0
    assert apply(runner, write_spec, with_dates(team_b, "2026-10-01", "2027-01-15"), "b.yaml").exit_code == 0
    ends = {spec.team: spec.cycle.end for spec, _ in state.published_specs(client)}
    assert ends == dict.fromkeys(("team-a", "team-b", "team-c"), dt.date(2027, 1, 15))
    assert "one date range" not in invoke(runner, "apply", str(write_spec(new_dates, "a.yaml"))).output


def test_sets_moving_their_cycles_dates_agree_on_a_runs_okr_cycle(client, runner, write_spec):
    """While team-a's fy-q3 runs to Oct 15 and team-b's to Sep 30, a run of Oct 10 that team-a and
    team-c (fy-q4) count names fy-q4 from both sets, and the tags stay settled."""
    def dated(team: str, metric: str, name: str, start: str, end: str) -> str:
        return in_cycle(team_spec(team, f"{team}-objective", metric, metric), name, start, end)

    train = client.create_experiment("train")
    october_10 = int(dt.datetime(2026, 10, 10, tzinfo=dt.timezone.utc).timestamp() * 1000)
    run_id = make_run(client, train, {"ctr": 0.7, "recall": 0.8}, start_time=october_10)
    for text, name in (
        (dated("team-b", "loss", "fy-q3", "2026-07-01", "2026-09-30"), "b.yaml"),
        (dated("team-a", "ctr", "fy-q3", "2026-07-01", "2026-09-30"), "a.yaml"),
        (dated("team-a", "ctr", "fy-q3", "2026-07-01", "2026-10-15"), "a.yaml"),  # moves its dates
        (dated("team-c", "recall", "fy-q4", "2026-10-01", "2026-12-31"), "c.yaml"),
    ):
        assert apply(runner, write_spec, text, name).exit_code == 0
    tags = client.get_run(run_id).data.tags
    assert (tags["okr.kr.ctr"], tags["okr.kr.recall"], tags["okr.cycle"]) == ("counted", "counted", "fy-q4")
    for cycle in ("fy-q3", "fy-q4"):
        checked = invoke(runner, "sync", "--check", "--cycle", cycle, "--as-of", "2026-10-10")
        assert checked.exit_code == 0, checked.output


def test_an_unnamed_set_stays_where_0_1_put_it(client, runner, write_spec):
    text = team_spec(None, "reco", "ctr", "ctr")
    assert apply(runner, write_spec, text, "okrs.yaml").exit_code == 0
    experiment = client.get_experiment_by_name("okr/2026-Q4")
    assert vocabulary.TAG_TEAM not in experiment.tags
    again = apply(runner, write_spec, text, "okrs.yaml")
    assert "0 change(s)" in again.output
    assert status_json(runner)["objectives"][0]["team"] is None


@pytest.mark.parametrize(
    ("aligns_to", "message"),
    [
        ("[nothing]", "aligns_to 'nothing' names no objective of another set of cycle 2026-Q4"),
        ("[2026-Q4:grow]", "aligns_to '2026-Q4:grow' names no objective"),
    ],
)
def test_an_unknown_parent_is_refused_with_file_and_line(client, runner, write_spec, aligns_to, message):
    assert apply(runner, write_spec, COMPANY, "company.yaml").exit_code == 0
    path = write_spec(team_spec("team-a", "reco", "ctr", "ctr", f"    aligns_to: {aligns_to}\n"), "a.yaml")
    result = invoke(runner, "apply", str(path))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {path}:8: objectives[0].aligns_to[0]: {message}")


def test_an_alignment_loop_is_refused(client, runner, write_spec):
    first = team_spec("team-a", "reco", "ctr", "ctr", "    aligns_to: [team-b/fraud]\n")
    second = team_spec("team-b", "fraud", "recall", "recall", "    aligns_to: [team-a/reco]\n")
    plain_second = team_spec("team-b", "fraud", "recall", "recall")
    assert apply(runner, write_spec, plain_second, "b0.yaml").exit_code == 0
    assert apply(runner, write_spec, first, "a.yaml").exit_code == 0
    path = write_spec(second, "b.yaml")
    result = invoke(runner, "apply", str(path))
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {path}:8: objectives[0].aligns_to: alignment loop 2026-Q4:team-b/fraud -> "
        "2026-Q4:team-a/reco -> 2026-Q4:team-b/fraud; an objective cannot serve itself\n"
    )


def test_a_company_objective_rolls_up_its_teams_scores(client, runner, write_spec):
    experiment = client.create_experiment("train")
    make_run(client, experiment, {"ctr": 0.7, "recall": 0.8})  # progress 0.5 and 0.75
    assert apply(runner, write_spec, COMPANY, "company.yaml").exit_code == 0
    team_a = team_spec("team-a", "reco", "ctr", "ctr", "    aligns_to: [grow]\n    alignment_weight: 2\n")
    team_b = team_spec("team-b", "fraud", "recall", "recall", "    aligns_to: [2026:grow]\n")
    assert apply(runner, write_spec, team_a, "a.yaml").exit_code == 0
    assert apply(runner, write_spec, team_b, "b.yaml").exit_code == 0
    assert invoke(runner, "checkin", "revenue", "20").exit_code == 0  # progress 0.2
    payload = status_json(runner)
    assert payload["cycle"]["name"] == "2026-Q4"
    reco, fraud = payload["objectives"]
    assert (reco["score"], fraud["score"]) == (pytest.approx(0.5, abs=1e-12), pytest.approx(0.75, abs=1e-12))
    assert reco["aligned_to"] == fraud["aligned_to"] == ["2026:grow"]
    (company,) = payload["enclosing_cycles"]
    (grow,) = company["objectives"]
    assert company["cycle"]["name"] == "2026"
    assert grow["own_score"] == 0.2
    # (0.2 x 1 + 0.5 x 2 + 0.75 x 1) / 4
    assert grow["score"] == pytest.approx((0.2 + 2 * reco["score"] + fraud["score"]) / 4, abs=1e-15)
    assert grow["aligned_children"] == ["2026-Q4:team-a/reco", "2026-Q4:team-b/fraud"]
    description = client.get_experiment_by_name("okr/2026-Q4/team-b").tags["mlflow.note.content"]
    assert "· serves `2026:grow`" in description
    table = invoke(runner, "status", *AS_OF).output
    assert "  2026:grow  0.49\n    2026-Q4:team-a/reco  0.50\n    2026-Q4:team-b/fraud  0.75" in table
    assert not sync(client, check=True, now=dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)).drifted


def test_the_current_cycles_are_innermost_first():
    year, half, quarter = parse_cycle("2026"), parse_cycle("2026-H2"), parse_cycle("2026-Q4")
    now = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
    current = cycles.current([year, quarter, half], now, lambda cycle: cycle)
    assert [c.name for c in current] == ["2026-Q4", "2026-H2", "2026"]
    after = dt.datetime(2027, 2, 1, tzinfo=dt.timezone.utc)
    assert [c.name for c in cycles.current([year, quarter, half], after, lambda cycle: cycle)] == ["2026-Q4"]


def test_overlapping_cycles_give_one_answer_everywhere(client, runner, write_spec):
    from mlflow_okr.store.definitions import load_watched_krs

    for cycle in ("2026", "2026-Q4", "2026-H2"):
        text = team_spec(None, "reco", f"ctr-{cycle.lower()}", "ctr")
        text = text.replace("cycle: 2026-Q4", f"cycle: {cycle}")
        assert apply(runner, write_spec, text, f"{cycle}.yaml").exit_code == 0
    now = dt.datetime.now(dt.timezone.utc)
    published = [parse_cycle(name) for name in ("2026", "2026-Q4", "2026-H2")]
    expected = [c.name for c in cycles.current(published, now, lambda cycle: cycle)]
    watched = load_watched_krs(client).current_cycle(now)
    assert watched is not None and watched.cycle.name == expected[0]
    assert state.load_published(client, now=now.timestamp()).cycle.name == expected[0]
    payload = json.loads(invoke(runner, "status", "--format", "json").output)
    assert [payload["cycle"]["name"]] + [c["cycle"]["name"] for c in payload["enclosing_cycles"]] == expected


def test_a_kr_id_two_nested_cycles_share_is_tagged_with_its_cycle(client, runner, write_spec):
    experiment = client.create_experiment("train")
    run_id = make_run(client, experiment, {"ctr": 0.7})
    quarter = team_spec(None, "reco", "ctr", "ctr")
    assert apply(runner, write_spec, quarter, "q.yaml").exit_code == 0
    assert client.get_run(run_id).data.tags["okr.kr.ctr"] == "counted"
    year = quarter.replace("cycle: 2026-Q4", "cycle: 2026")
    assert apply(runner, write_spec, year, "y.yaml").exit_code == 0
    tags = client.get_run(run_id).data.tags
    assert "okr.kr.ctr" not in tags
    assert tags["okr.kr.ctr/2026-Q4"] == tags["okr.kr.ctr/2026"] == "counted"
    assert tags["okr.krs"] == "ctr/2026,ctr/2026-Q4"
    found = client.search_runs([experiment], "tags.`okr.kr.ctr/2026` = 'counted'")
    assert [run.info.run_id for run in found] == [run_id]
    for cycle in ("2026", "2026-Q4"):
        assert invoke(runner, "sync", "--check", "--cycle", cycle, *AS_OF).exit_code == 0


def test_a_runs_okr_cycle_names_the_innermost_cycle_containing_its_start(client, runner, write_spec):
    train, other = client.create_experiment("train"), client.create_experiment("other")
    march = 1772323200000 + 9 * 86_400_000  # 2026-03-10
    in_both = make_run(client, train, {"ctr": 0.7})  # in 2026-Q4: both sets count it
    company_only = make_run(client, other, {"ctr": 0.8})  # in 2026-Q4, but only the company reads it
    in_the_year = make_run(client, other, {"ctr": 0.6}, start_time=march)
    company = (
        'version: 1\nteam: company\ncycle: "2026"\nobjectives:\n  - id: grow\n    title: Grow\n'
        "    category: product\n    key_results:\n"
        "      - {id: company-ctr, metric: ctr, experiments: [train, other], baseline: 0.5, target: 1.0}\n"
    )
    assert apply(runner, write_spec, company, "company.yaml").exit_code == 0

    def cycle_tags() -> list[str]:
        runs = (in_both, company_only, in_the_year)
        return [client.get_run(run_id).data.tags["okr.cycle"] for run_id in runs]

    assert cycle_tags() == ["2026", "2026", "2026"]
    # The first set of 2026-Q4 makes it the innermost cycle of the runs started in it, those only
    # the company counts included: its apply re-tags the company's runs too.
    assert apply(runner, write_spec, team_spec("team-a", "reco", "ctr", "ctr"), "a.yaml").exit_code == 0
    assert cycle_tags() == ["2026-Q4", "2026-Q4", "2026"]
    quarter = client.search_runs([train, other], "tags.`okr.cycle` = '2026-Q4'")
    assert {run.info.run_id for run in quarter} == {in_both, company_only}
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0
    # What a store of the previous release holds: a run's okr.cycle named by the last set whose
    # tags changed on it. sync names the drift and repairs it.
    client.set_tag(in_both, "okr.cycle", "2026")
    checked = sync(client, check=True, now=dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc))
    assert [(d.run_id, d.tag, d.stored, d.computed) for d in checked.run_drift] == [
        (in_both, "okr.cycle", "2026", "2026-Q4")
    ]
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    assert cycle_tags() == ["2026-Q4", "2026-Q4", "2026"]


@requires_okr_store
def test_live_writes_keep_every_teams_set_and_the_roll_up_current(client, tracking_uri, runner, write_spec):
    today = dt.datetime.now(dt.timezone.utc).date()
    window = f"{{name: live, start: {today - dt.timedelta(days=30)}, end: {today + dt.timedelta(days=30)}}}"
    days = dt.timedelta(days=60)
    outer = f"{{name: live-year, start: {today - days}, end: {today + days}}}"
    company = COMPANY.replace("cycle: 2026", f"cycle: {outer}")
    assert invoke(runner, "apply", str(write_spec(company, "company.yaml"))).exit_code == 0
    for team, objective, kr_id in (("team-a", "reco", "ctr"), ("team-b", "fraud", "recall")):
        text = team_spec(team, objective, kr_id, kr_id, "    aligns_to: [grow]\n")
        text = text.replace("cycle: 2026-Q4", f"cycle: {window}")
        assert invoke(runner, "apply", str(write_spec(text, f"{team}.yaml"))).exit_code == 0
    mlflow.set_tracking_uri("okr+" + tracking_uri)
    mlflow.set_experiment("train")
    with mlflow.start_run() as run:
        mlflow.log_metrics({"ctr": 0.7, "recall": 0.9})
    assert client.get_run(run.info.run_id).data.tags["okr.cycle"] == "live"
    mlflow.set_tracking_uri(tracking_uri)
    payload = json.loads(invoke(runner, "status", "--format", "json").output)
    scores = {o["id"]: o["score"] for o in payload["objectives"]}
    assert scores == {"reco": pytest.approx(0.5, abs=1e-12), "fraud": 1.0}
    (grow,) = payload["enclosing_cycles"][0]["objectives"]
    assert grow["score"] == pytest.approx((0 + scores["reco"] + 1.0) / 3, abs=1e-15)
    assert not sync(client, check=True).drifted


# ---------------------------------------------------------------------------------------------
# The invariant over an organization: several sets of a cycle, an enclosing cycle whose KR shares
# an id with the inner cycle's (qualified run tags), and an objective aligned across cycles.


def organization_texts() -> list[str]:
    """The live fixtures' unnamed set, a company set of an enclosing cycle, and a team set."""
    today = dt.datetime.now(dt.timezone.utc).date()
    quarter, half = dt.timedelta(days=45), dt.timedelta(days=90)
    year = f"{{name: live-year, start: {today - half}, end: {today + half}}}"
    live = f"{{name: live, start: {today - quarter}, end: {today + quarter}}}"
    company = (
        f"version: 1\ncycle: {year}\nobjectives:\n  - id: company-quality\n    title: Company quality\n"
        "    category: product\n    key_results:\n"
        "      - {id: acc, metric: val_acc, experiments: [train-*], baseline: 0.5, target: 1.0}\n"
    )
    team = (
        f"version: 1\nteam: vision\ncycle: {live}\nobjectives:\n  - id: vision-quality\n"
        "    title: Vision quality\n    category: product\n    aligns_to: [live-year:company-quality]\n"
        "    key_results:\n"
        "      - {id: acc-mean, metric: val_acc, experiments: [train-*], baseline: 0.5, target: 1.0,\n"
        "         aggregate: mean}\n"
    )
    return [live_spec_text(), company, team]


@pytest.fixture
def organization_uri(tracking_uri: str) -> str:
    for text in organization_texts():
        publish(tracking_uri, text)
    uri = use_okr_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def objective_scores(status) -> dict[str, float]:
    return {
        f"{cycle.cycle.name}:{objective.team}/{objective.id}": objective.score
        for cycle in [status, *status.enclosing_cycles]
        for objective in cycle.objectives
    }


@requires_okr_store
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=12))
def test_an_organizations_live_state_equals_a_recompute(organization_uri, client, operations):
    run_operations(MlflowClient(organization_uri), client, operations, flush)
    flush()
    result = sync(client, check=True)
    assert sorted(result.sets) == ["live", "live-year", "live/vision"]
    assert not result.drifted, (result.kr_drift, result.run_drift)
    stored = stored_cycle_status(client)
    assert objective_scores(stored) == objective_scores(result.status)
    for run in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]):
        assert "okr.kr.acc" not in run.data.tags  # shared by live and live-year: qualified


def okr_state(client) -> dict[str, tuple]:
    """Every okr.* tag and every metric of every run in the store, by run id."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {
        run.info.run_id: (
            {k: v for k, v in run.data.tags.items() if k.startswith("okr.") or k == "mlflow.note.content"},
            dict(run.data.metrics),
        )
        for run in client.search_runs(experiments, max_results=1000)
    }


def test_a_0_1_spec_on_a_store_of_this_release_changes_nothing(client, runner):
    """examples/okrs.yaml is a spec written for 0.1: no team, no alignment, one cycle."""
    from pathlib import Path

    spec = Path(__file__).resolve().parent.parent / "examples" / "okrs.yaml"
    experiment = client.create_experiment("reco-ranker")
    make_run(client, experiment, {"online_ctr": 0.07, "p99_latency_ms": 30, "precision": 0.95})
    assert invoke(runner, "apply", str(spec)).exit_code == 0
    before = okr_state(client)
    cycle_tags = client.get_experiment_by_name("okr/2026-Q4").tags
    again = invoke(runner, "apply", str(spec))
    assert again.exit_code == 0 and "0 change(s)" in again.output, again.output
    assert okr_state(client) == before
    assert client.get_experiment_by_name("okr/2026-Q4").tags == cycle_tags
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0


@pytest.mark.server
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_a_server_keeps_every_set_and_the_roll_up_current(tmp_path, deployment):
    database = f"sqlite:///{tmp_path / 'server.db'}"
    for text in organization_texts():
        publish(database, text)
    backend, app_name = deployment_args(deployment, database)
    with mlflow_server(backend, tmp_path, workers=2, app_name=app_name) as server:
        mlflow.set_tracking_uri(server.url)  # a plain client: the hooks run in the server
        try:
            mlflow.set_experiment(EXPERIMENT)
            with mlflow.start_run() as run:
                mlflow.log_metrics({"val_acc": 0.7, "latency": 12})
        finally:
            mlflow.set_tracking_uri(None)
        client = MlflowClient(database)
        assert wait_for(lambda: not sync(client, check=True).drifted, 60), sync(client, check=True).kr_drift
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["okr.kr.acc/live"] == tags["okr.kr.acc/live-year"] == tags["okr.kr.acc-mean"] == "counted"
    stored = stored_cycle_status(client)
    scores = objective_scores(stored)
    # acc (live-year) 0.4 and vision-quality's acc-mean 0.4 roll up into company-quality.
    assert scores["live:vision/vision-quality"] == pytest.approx(0.4)
    assert scores["live-year:None/company-quality"] == pytest.approx(0.4)


def test_the_ledger_narrows_to_a_teams_hypotheses(client, runner, write_spec):
    assert apply(runner, write_spec, team_spec("team-a", "reco", "ctr", "ctr"), "a.yaml").exit_code == 0
    team_b = team_spec("team-b", "fraud", "recall", "recall")
    assert apply(runner, write_spec, team_b, "b.yaml").exit_code == 0
    for hypothesis, kr in (("wider", "ctr"), ("rules", "recall")):
        result = invoke(runner, "ledger", "add", f"{hypothesis} helps", "--id", hypothesis, "--kr", kr)
        assert result.exit_code == 0, result.output
    listed = invoke(runner, "ledger", "list", "--team", "team-a", "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert [(h["id"], h["objective"]) for h in json.loads(listed.output)] == [("wider", "reco")]
    unknown = invoke(runner, "ledger", "list", "--team", "team-z")
    assert unknown.exit_code == 2 and "team 'team-z' has no set" in unknown.output


def test_a_sets_sync_reads_no_run_another_teams_set_counted(client, runner, write_spec):
    from mlflow_okr.sync import runs_left_behind

    ours, theirs = client.create_experiment("train"), client.create_experiment("fraud-train")
    make_run(client, ours, {"ctr": 0.7})
    other_run = make_run(client, theirs, {"recall": 0.8})
    assert apply(runner, write_spec, team_spec("team-a", "reco", "ctr", "ctr"), "a.yaml").exit_code == 0
    team_b = team_spec("team-b", "fraud", "recall", "recall").replace("[train]", "[fraud-train]")
    assert apply(runner, write_spec, team_b, "b.yaml").exit_code == 0
    assert client.get_run(other_run).data.tags["okr.krs"] == "recall"
    team_a = state.load_published(client, "2026-Q4", team="team-a")
    assert list(runs_left_behind(client, team_a.spec)) == []


def test_one_sync_reads_each_run_once_and_tags_a_run_all_sets_count(client, runner, write_spec, monkeypatch):
    from mlflow_okr import facts

    train, other = client.create_experiment("train"), client.create_experiment("other")
    march, june = 1772323200000 + 9 * 86_400_000, 1780272000000  # 2026-03-10, 2026-06-01
    shared = make_run(client, train, {"ctr": 0.7, "recall": 0.8})  # in 2026-Q4: every set counts it
    make_run(client, train, {"ctr": 0.6}, start_time=march)  # the company's year only
    make_run(client, other, {"ctr": 0.9}, start_time=june)
    company = (
        'version: 1\nteam: company\ncycle: "2026"\nobjectives:\n  - id: grow\n    title: Grow\n'
        "    category: product\n    key_results:\n"
        "      - {id: company-ctr, metric: ctr, experiments: [train, other], baseline: 0.5, target: 1.0}\n"
    )
    for text, name in ((company, "company.yaml"), (team_spec("team-a", "reco", "ctr", "ctr"), "a.yaml"),
                       (team_spec("team-b", "fraud", "recall", "recall"), "b.yaml")):
        assert apply(runner, write_spec, text, name).exit_code == 0
    expected = client.get_run(shared).data.tags
    assert expected["okr.krs"] == "company-ctr,ctr,recall"
    for key in ("okr.krs", "okr.kr.ctr", "okr.kr.recall", "okr.kr.company-ctr"):
        client.delete_tag(shared, key)

    read: list[str] = []
    scan = facts.SqlFacts.scan

    def counting_scan(self, *args, **kwargs):
        for run in scan(self, *args, **kwargs):
            read.append(run.info.run_id)
            yield run

    monkeypatch.setattr(facts.SqlFacts, "scan", counting_scan)
    now = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
    checked = sync(client, check=True, now=now)
    # Each set (innermost cycle first) finds the run's okr.krs and its own verdict tag missing; the
    # later sets see the okr.krs the earlier ones planned.
    assert [(d.tag, d.stored, d.computed) for d in checked.run_drift] == [
        ("okr.kr.ctr", None, "counted"), ("okr.krs", None, "ctr"),
        ("okr.kr.recall", None, "counted"), ("okr.krs", None, "ctr,recall"),
        ("okr.kr.company-ctr", None, "counted"), ("okr.krs", None, "company-ctr,ctr,recall"),
    ]
    assert "okr.krs" not in client.get_run(shared).data.tags
    read.clear()
    result = sync(client, now=now)
    assert result.sets == ["2026-Q4/team-a", "2026-Q4/team-b", "2026/company"]
    assert len(read) == len(set(read)) == result.runs_scanned == 3
    assert result.run_drift_count == 6
    assert client.get_run(shared).data.tags == expected
    assert expected["okr.cycle"] == "2026-Q4"  # the innermost cycle containing its start
    assert not sync(client, check=True, now=now).drifted
    read.clear()
    narrowed = sync(client, team="team-a", now=now)  # one set: the runs of its experiments and cycle
    assert (narrowed.sets, read, narrowed.drifted) == (["2026-Q4/team-a"], [shared], False)


def test_one_sync_clears_a_sets_tags_on_a_run_another_set_reads(client, tracking_uri, runner, write_spec):
    from mlflow_okr import apply_spec, parse_spec

    train, other = client.create_experiment("train"), client.create_experiment("other")
    make_run(client, train, {"ctr": 0.6})
    moved = make_run(client, other, {"ctr": 0.7, "recall": 0.8})
    team_a = team_spec("team-a", "reco", "ctr", "ctr").replace("[train]", "[train, other]")
    team_b = team_spec("team-b", "fraud", "recall", "recall").replace("[train]", "[other]")
    for text, name in ((team_a, "a.yaml"), (team_b, "b.yaml")):
        assert apply(runner, write_spec, text, name).exit_code == 0
    assert client.get_run(moved).data.tags["okr.krs"] == "ctr,recall"
    # Team A stops looking at `other`; published without its sync, so the sync of every set finds
    # the tags left behind, on a run it reads for team B.
    narrowed = team_spec("team-a", "reco", "ctr", "ctr")
    apply_spec(parse_spec(narrowed, "a.yaml"), tracking_uri=tracking_uri, sync_after=False)
    now = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
    result = sync(client, now=now)
    assert result.runs_scanned == 2
    assert [(d.run_id, d.tag, d.stored, d.computed) for d in result.run_drift] == [
        (moved, "okr.krs", "ctr,recall", "recall"), (moved, "okr.kr.ctr", "counted", None),
    ]
    tags = client.get_run(moved).data.tags
    assert "okr.kr.ctr" not in tags and tags["okr.krs"] == "recall" and tags["okr.kr.recall"] == "counted"
    assert not sync(client, check=True, now=now).drifted
