"""Server mode, in both deployments (`--app-name okr` over a plain URI, and an `okr+sqlite://`
backend URI) with 2 workers, and an `okr+http://` client-side hook against a plain server. Real
server subprocesses."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store

from mlflow_okr import compat, vocabulary
from mlflow_okr.store import OkrHooks
from mlflow_okr.sync import sync
from tests.live_fixtures import CYCLE, EXPERIMENT, kr_run, publish
from tests.servers import DEPLOYMENTS, basic_auth_config, deployment_args, mlflow_server

pytestmark = pytest.mark.server


def _settled(client: MlflowClient, seconds: float = 30) -> None:
    """Wait (bounded) until the server's writers have left no drift; never runs a sync."""
    deadline = time.monotonic() + seconds
    while True:
        result = sync(client, cycle=CYCLE, check=True)
        if not result.drifted:
            return
        if time.monotonic() > deadline:
            raise AssertionError((result.kr_drift, result.run_drift))
        time.sleep(0.5)


def _log_three_runs() -> dict[str, str]:
    """A counted run, a run that ends without its guardrail, and a failed run with the best value."""
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as counted:
        mlflow.log_metric("val_acc", 0.7)
        mlflow.log_metric("latency", 12)
        mlflow.set_tag("stage", "prod")
    with mlflow.start_run() as unguarded:
        mlflow.log_metric("val_acc", 0.8)
    with mlflow.start_run() as failed:
        mlflow.log_metrics({"val_acc": 0.99, "latency": 5})
        mlflow.end_run("FAILED")
    return {"counted": counted.info.run_id, "unguarded": unguarded.info.run_id, "failed": failed.info.run_id}


def _assert_live_state(client: MlflowClient, runs: dict[str, str]) -> None:
    acc = kr_run(client, "acc")
    assert acc.data.metrics[vocabulary.METRIC_VALUE] == 0.7
    assert acc.data.tags[vocabulary.TAG_BEST_RUN] == runs["counted"]
    assert acc.data.tags["okr.excluded_runs"] == "2"
    assert kr_run(client, "staged").data.metrics[vocabulary.METRIC_VALUE] == 0.7
    tags = {name: client.get_run(run_id).data.tags for name, run_id in runs.items()}
    assert tags["counted"]["okr.kr.acc"] == "counted"
    assert tags["counted"]["okr.krs"] == "acc,staged"
    assert tags["unguarded"]["okr.kr.acc"] == "excluded: guardrail latency never logged"
    assert tags["failed"]["okr.kr.acc"] == "excluded: run FAILED"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_server_mode_updates_krs_for_any_client(tmp_path: Path, deployment: str) -> None:
    database = f"sqlite:///{tmp_path / 'server.db'}"
    publish(database)
    backend, app_name = deployment_args(deployment, database)
    with mlflow_server(backend, tmp_path, workers=2, app_name=app_name) as server:
        mlflow.set_tracking_uri(server.url)  # the plain MLflow client: the hooks run in the server
        try:
            runs = _log_three_runs()
        finally:
            mlflow.set_tracking_uri(None)
        client = MlflowClient(database)
        _settled(client)
        _assert_live_state(client, runs)
        # Searchable over HTTP like any tag.
        found = MlflowClient(server.url).search_runs(
            [client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.`okr.kr.acc` = 'counted'"
        )
        assert [run.info.run_id for run in found] == [runs["counted"]]


def test_okr_http_hooks_client_side_against_a_plain_server(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'plain.db'}"
    publish(database)  # straight into the server's database: quicker than over HTTP
    with mlflow_server(database, tmp_path, workers=1) as server:
        mlflow.set_tracking_uri("okr+" + server.url)
        try:
            store = _get_store()
            assert isinstance(store, RestStore) and isinstance(store, OkrHooks)
            # A REST store's supports_* properties ask the server (with a 3 s timeout, so not here):
            # the hooked class answers with MLflow's own properties, never one of its own.
            plain_class = type(compat.tracking_store_builder(server.url)(store_uri=server.url))
            for name in ("supports_workspaces", "supports_trace_archival"):
                assert getattr(type(store), name) is getattr(plain_class, name), name
            runs = _log_three_runs()
        finally:
            mlflow.set_tracking_uri(None)
        client = MlflowClient(server.url)
        _settled(client, seconds=5)
        _assert_live_state(client, runs)
        # Settle and verify now, while the server is up: nothing is left for this process's exit.
        store.flush_okr()
        store.flush_okr()


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_basic_auth_server_updates_krs_in_both_deployments(
    tmp_path: Path, deployment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--app-name okr-auth` over a plain URI, and MLflow's basic-auth app over an okr+ URI."""
    database = f"sqlite:///{tmp_path / 'auth.db'}"
    publish(database)
    config = basic_auth_config(tmp_path, "admin", "admin-password-1234")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"}
    backend, app_name = deployment_args(deployment, database, auth=True)
    with mlflow_server(backend, tmp_path, app_name=app_name, extra_env=env) as server:
        search = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, timeout=30).status_code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-password-1234")
        mlflow.set_tracking_uri(server.url)
        try:
            runs = _log_three_runs()
        finally:
            mlflow.set_tracking_uri(None)
        client = MlflowClient(database)
        _settled(client)
        _assert_live_state(client, runs)
