"""apply, sync, status, checkin and `sync --check` against a real PostgreSQL backend.

The same scenario also runs on SQLite; both backends must give the same status, field by field.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from tests.conftest import IN_CYCLE_MS, invoke, make_run, okr_store_registered

pytestmark = pytest.mark.postgres
requires_okr_postgres = pytest.mark.skipif(
    not okr_store_registered("okr+postgresql"), reason="the okr+ tracking-store plugin is not registered"
)

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


def test_cli_round_trip_on_postgres(postgres_uri, runner, write_spec):
    status, runs = run_scenario(runner, postgres_uri, write_spec(SPEC))
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

    tags = MlflowClient(postgres_uri).get_run(runs["slow"]).data.tags
    assert tags["okr.kr.accuracy"].startswith("excluded")
    assert MlflowClient(postgres_uri).get_run(runs["pending"]).data.tags["okr.kr.accuracy"] == "pending"
    found = MlflowClient(postgres_uri).search_runs(
        [MlflowClient(postgres_uri).get_experiment_by_name("train-main").experiment_id],
        filter_string="tags.`okr.kr.accuracy` = 'counted'",
    )
    assert [run.info.run_id for run in found] == [runs["best"]]


def test_postgres_and_sqlite_give_the_same_status(postgres_uri, tmp_path, write_spec):
    spec_path = write_spec(SPEC)
    on_postgres, pg_runs = run_scenario(CliRunner(), postgres_uri, spec_path)
    on_sqlite, lite_runs = run_scenario(CliRunner(), f"sqlite:///{tmp_path / 'same.db'}", spec_path)
    by_run_id = {pg_runs[name]: name for name in pg_runs} | {lite_runs[name]: name for name in lite_runs}

    def comparable(status: dict) -> dict:
        for kr in key_results(status).values():
            kr["run_id"] = None
            kr["best_run_id"] = by_run_id.get(kr["best_run_id"], kr["best_run_id"])
        return status

    assert comparable(on_postgres) == comparable(on_sqlite)


def test_stale_tags_are_repaired_on_postgres(postgres_uri, runner, write_spec):
    _, runs = run_scenario(runner, postgres_uri, write_spec(SPEC))
    client = MlflowClient(postgres_uri)
    client.set_tag(runs["best"], "okr.kr.accuracy", "excluded: tampered")
    client.set_tag(runs["unfiltered"], "okr.kr.loss", "counted")
    result = invoke(runner, "sync", "--check", "--tracking-uri", postgres_uri, *AS_OF)
    assert result.exit_code == 1
    assert f"run {runs['best']}: tag okr.kr.accuracy stored 'excluded: tampered', recomputed 'counted'" in (
        result.output
    )
    assert f"run {runs['unfiltered']}: tag okr.kr.loss stored 'counted', recomputed None" in result.output
    assert invoke(runner, "sync", "--tracking-uri", postgres_uri, *AS_OF).exit_code == 0
    assert invoke(runner, "sync", "--check", "--tracking-uri", postgres_uri, *AS_OF).exit_code == 0
    assert "okr.kr.loss" not in client.get_run(runs["unfiltered"]).data.tags


@requires_okr_postgres
def test_live_store_on_postgres(postgres_uri, runner, write_spec):
    assert invoke(runner, "apply", str(write_spec(SPEC)), "--tracking-uri", postgres_uri).exit_code == 0
    live = MlflowClient("okr+" + postgres_uri)
    experiment_id = live.create_experiment("train-live")
    run = live.create_run(experiment_id, start_time=IN_CYCLE_MS)
    live.log_metric(run.info.run_id, "latency_ms", 20, timestamp=IN_CYCLE_MS + 1)
    live.log_metric(run.info.run_id, "val_accuracy", 0.88, timestamp=IN_CYCLE_MS + 2)
    # Ending the run settles its KRs before the call returns.
    live.set_terminated(run.info.run_id, "FINISHED", end_time=IN_CYCLE_MS + 3)

    krs = key_results(status_json(runner, postgres_uri))
    assert krs["accuracy"]["current"] == 0.88
    assert krs["accuracy"]["best_run_id"] == run.info.run_id
    assert MlflowClient(postgres_uri).get_run(run.info.run_id).data.tags["okr.kr.accuracy"] == "counted"
    result = invoke(runner, "sync", "--check", "--tracking-uri", postgres_uri, *AS_OF)
    assert result.exit_code == 0, result.output


@pytest.mark.server
@requires_okr_postgres
def test_server_on_okr_postgres(postgres_uri, runner, write_spec, tmp_path):
    servers = pytest.importorskip("tests.servers", reason="tests/servers.py (the server helper) is missing")
    assert invoke(runner, "apply", str(write_spec(SPEC)), "--tracking-uri", postgres_uri).exit_code == 0
    with servers.mlflow_server("okr+" + postgres_uri, tmp_path, workers=2) as server:
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
    krs = key_results(status_json(runner, postgres_uri))
    assert krs["accuracy"]["current"] == 0.89
    assert krs["accuracy"]["best_run_id"] == run.info.run_id
    assert invoke(runner, "sync", "--check", "--tracking-uri", postgres_uri, *AS_OF).exit_code == 0
