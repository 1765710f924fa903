"""apply, sync, status, checkin, `sync --check`, the live store and a server on real database servers.

Every test runs on PostgreSQL and on MariaDB (MySQL); the scenario also runs on SQLite, and each
server must give the same status as SQLite, field by field.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from tests.conftest import IN_CYCLE_MS, invoke, make_run, okr_store_registered
from tests.servers import mlflow_server

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: quality
    title: Better model
    category: product
    key_results:
      - id: accuracy
        metric: val_accuracy
        experiments: ["train-*"]
        baseline: 0.80
        target: 0.90
        guardrails:
          - {metric: latency_ms, max: 50}
      - id: loss
        metric: val_loss
        experiments: ["train-*"]
        filter: "tags.stage = 'candidate'"
        baseline: 1.0
        target: 0.5
      - id: csat
        metric: csat
        maintain: {min: 4.0}
  - id: ops
    title: Reliable serving
    category: operational
    key_results:
      - id: alerting
        source: manual
        target: 1
"""
AS_OF = ("--as-of", "2026-11-15")


def seed_runs(client: MlflowClient) -> dict[str, str]:
    """Source runs that exercise counted, pending, excluded and filtered-out verdicts."""
    train = client.create_experiment("train-main")
    other = client.create_experiment("other")
    return {
        "best": make_run(client, train, {"val_accuracy": 0.86, "latency_ms": 40, "val_loss": 0.7},
                         tags={"stage": "candidate"}),
        "slow": make_run(client, train, {"val_accuracy": 0.95, "latency_ms": 90}),
        "pending": make_run(client, train, {"val_accuracy": 0.99}, status=None),
        "failed": make_run(client, train, {"val_accuracy": 0.97, "latency_ms": 10}, status="FAILED"),
        "unfiltered": make_run(client, train, {"val_loss": 0.1}, tags={"stage": "dev"}),
        "elsewhere": make_run(client, other, {"val_accuracy": 0.99, "latency_ms": 1, "csat": 4.5}),
        "old": make_run(
            client, train, {"val_accuracy": 0.99, "latency_ms": 1}, start_time=IN_CYCLE_MS - 10**11
        ),
    }


@pytest.fixture
def okr_sql_server_uri(sql_server_uri: str) -> str:
    """`okr+` in front of sql_server_uri; skips where the plugin does not register that scheme."""
    scheme = "okr+" + sql_server_uri.split("://", 1)[0]
    if not okr_store_registered(scheme):
        pytest.skip(f"the okr+ tracking-store plugin does not register {scheme}")
    return "okr+" + sql_server_uri


def status_json(runner: CliRunner, uri: str) -> dict:
    result = invoke(runner, "status", "--format", "json", "--tracking-uri", uri, *AS_OF)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def run_scenario(runner: CliRunner, uri: str, spec_path) -> tuple[dict, dict[str, str]]:
    """Apply, add runs, detect drift, sync, check clean, check in; return final status and run ids."""
    client = MlflowClient(uri)
    result = invoke(runner, "apply", str(spec_path), "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    assert "create    kr        accuracy" in result.output

    runs = seed_runs(client)
    result = invoke(runner, "sync", "--check", "--tracking-uri", uri, *AS_OF)
    assert result.exit_code == 1, result.output
    assert "Drift in cycle 2026-Q4" in result.output
    assert "KR accuracy: current stored None, recomputed 0.86" in result.output

    result = invoke(runner, "sync", "--tracking-uri", uri, *AS_OF)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "sync", "--check", "--tracking-uri", uri, *AS_OF)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("No drift: cycle 2026-Q4, 6 runs checked.")

    result = invoke(runner, "checkin", "alerting", "1", "--note", "paged on drift", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "sync", "--check", "--tracking-uri", uri, *AS_OF)
    assert result.exit_code == 0, result.output
    return status_json(runner, uri), runs


def key_results(status: dict) -> dict[str, dict]:
    return {kr["id"]: kr for objective in status["objectives"] for kr in objective["key_results"]}


def test_cli_round_trip(sql_server_uri, runner, write_spec):
    status, runs = run_scenario(runner, sql_server_uri, write_spec(SPEC))
    krs = key_results(status)
    assert krs["accuracy"]["current"] == 0.86
    assert krs["accuracy"]["counted_runs"] == 1
    assert krs["accuracy"]["best_run_id"] == runs["best"]
    assert krs["accuracy"]["pending_runs"] == 1
    assert krs["accuracy"]["progress"] == pytest.approx(0.6)
    assert krs["loss"]["current"] == 0.7
    assert krs["loss"]["progress"] == pytest.approx(0.6)
    assert krs["csat"]["current"] == 4.5 and krs["csat"]["progress"] == 1.0
    assert krs["alerting"]["current"] == 1.0 and krs["alerting"]["status"] == "achieved"

    client = MlflowClient(sql_server_uri)
    tags = client.get_run(runs["slow"]).data.tags
    assert tags["okr.kr.accuracy"].startswith("excluded")
    assert client.get_run(runs["pending"]).data.tags["okr.kr.accuracy"] == "pending"
    found = client.search_runs(
        [client.get_experiment_by_name("train-main").experiment_id],
        filter_string="tags.`okr.kr.accuracy` = 'counted'",
    )
    assert [run.info.run_id for run in found] == [runs["best"]]


def test_server_and_sqlite_give_the_same_status(sql_server_uri, tmp_path, write_spec):
    spec_path = write_spec(SPEC)
    on_server, server_runs = run_scenario(CliRunner(), sql_server_uri, spec_path)
    on_sqlite, lite_runs = run_scenario(CliRunner(), f"sqlite:///{tmp_path / 'same.db'}", spec_path)
    by_run_id = {run_id: name for runs in (server_runs, lite_runs) for name, run_id in runs.items()}

    def comparable(status: dict) -> dict:
        for kr in key_results(status).values():
            kr["run_id"] = None
            kr["best_run_id"] = by_run_id.get(kr["best_run_id"], kr["best_run_id"])
        return status

    assert comparable(on_server) == comparable(on_sqlite)


def test_stale_tags_are_repaired(sql_server_uri, runner, write_spec):
    _, runs = run_scenario(runner, sql_server_uri, write_spec(SPEC))
    client = MlflowClient(sql_server_uri)
    client.set_tag(runs["best"], "okr.kr.accuracy", "excluded: tampered")
    client.set_tag(runs["unfiltered"], "okr.kr.loss", "counted")
    result = invoke(runner, "sync", "--check", "--tracking-uri", sql_server_uri, *AS_OF)
    assert result.exit_code == 1
    assert f"run {runs['best']}: tag okr.kr.accuracy stored 'excluded: tampered', recomputed 'counted'" in (
        result.output
    )
    assert f"run {runs['unfiltered']}: tag okr.kr.loss stored 'counted', recomputed None" in result.output
    assert invoke(runner, "sync", "--tracking-uri", sql_server_uri, *AS_OF).exit_code == 0
    assert invoke(runner, "sync", "--check", "--tracking-uri", sql_server_uri, *AS_OF).exit_code == 0
    assert "okr.kr.loss" not in client.get_run(runs["unfiltered"]).data.tags


def test_live_store(sql_server_uri, okr_sql_server_uri, runner, write_spec):
    assert invoke(runner, "apply", str(write_spec(SPEC)), "--tracking-uri", sql_server_uri).exit_code == 0
    live = MlflowClient(okr_sql_server_uri)
    experiment_id = live.create_experiment("train-live")
    run = live.create_run(experiment_id, start_time=IN_CYCLE_MS)
    live.log_metric(run.info.run_id, "latency_ms", 20, timestamp=IN_CYCLE_MS + 1)
    live.log_metric(run.info.run_id, "val_accuracy", 0.88, timestamp=IN_CYCLE_MS + 2)
    # Ending the run settles its KRs before the call returns.
    live.set_terminated(run.info.run_id, "FINISHED", end_time=IN_CYCLE_MS + 3)

    krs = key_results(status_json(runner, sql_server_uri))
    assert krs["accuracy"]["current"] == 0.88
    assert krs["accuracy"]["best_run_id"] == run.info.run_id
    assert MlflowClient(sql_server_uri).get_run(run.info.run_id).data.tags["okr.kr.accuracy"] == "counted"
    result = invoke(runner, "sync", "--check", "--tracking-uri", sql_server_uri, *AS_OF)
    assert result.exit_code == 0, result.output


@pytest.mark.server
def test_okr_server(sql_server_uri, okr_sql_server_uri, runner, write_spec, tmp_path):
    assert invoke(runner, "apply", str(write_spec(SPEC)), "--tracking-uri", sql_server_uri).exit_code == 0
    with mlflow_server(okr_sql_server_uri, tmp_path, workers=2) as server:
        url = server.url
        mlflow.set_tracking_uri(url)
        remote = MlflowClient(url)
        experiment_id = remote.create_experiment("train-remote")
        run = remote.create_run(experiment_id, start_time=IN_CYCLE_MS)
        remote.log_batch(
            run.info.run_id,
            metrics=[
                mlflow.entities.Metric("latency_ms", 30, IN_CYCLE_MS + 1, 0),
                mlflow.entities.Metric("val_accuracy", 0.89, IN_CYCLE_MS + 1, 0),
            ],
        )
        # Ending the run settles its KRs in the worker before the call returns.
        remote.set_terminated(run.info.run_id, "FINISHED", end_time=IN_CYCLE_MS + 5)
        mlflow.set_tracking_uri(None)
    krs = key_results(status_json(runner, sql_server_uri))
    assert krs["accuracy"]["current"] == 0.89
    assert krs["accuracy"]["best_run_id"] == run.info.run_id
    assert invoke(runner, "sync", "--check", "--tracking-uri", sql_server_uri, *AS_OF).exit_code == 0
