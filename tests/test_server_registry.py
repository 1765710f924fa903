"""Alias and trace KRs behind a real `mlflow server`: an alias move through the server updates the
KR live in both deployments, and a killed server's unsettled trace work is settled by the next start."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from mlflow.entities import TraceInfo, TraceLocation, TraceState
from mlflow.tracking import MlflowClient

from mlflow_okr import compat, vocabulary
from mlflow_okr.sync import sync
from tests.live_fixtures import CYCLE, kr_run, publish, spec_around_today, wait_for
from tests.servers import DEPLOYMENTS, deployment_args, mlflow_server

pytestmark = pytest.mark.server

SERVER_ENV = {"MLFLOW_OKR_RUN_END_BUDGET": "0", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
AUCS = {"1": 0.85, "2": 0.88}  # model version -> the auc of the run behind it


def spec_text() -> str:
    """A cycle around today: a KR following screener@champion and a max-latency trace KR."""
    return spec_around_today(
        """
        - id: ship
          title: Ship a better screening model
          category: product
          key_results:
            - id: champion-auc
              metric: auc
              model: {name: screener, alias: champion}
              baseline: 0.8
              target: 0.9
            - id: slowest
              source: traces
              trace_metric: latency
              aggregation: max
              experiments: [svc]
              baseline: 1000
              target: 100
        """
    )


@pytest.fixture
def database(sqlite_template: Path, tmp_path: Path) -> str:
    """A store with versions 1 and 2 of `screener` (one run each), an `svc` experiment, the spec."""
    path = tmp_path / "registry.db"
    path.write_bytes(sqlite_template.read_bytes())
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("train")
    client.create_experiment("svc")
    client.create_registered_model("screener")
    for auc in AUCS.values():
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "auc", auc)
        client.set_terminated(run_id)
        client.create_model_version("screener", f"runs:/{run_id}/model", run_id=run_id)
    publish(uri, spec_text())
    return uri


def champion(client: MlflowClient) -> tuple[float | None, str | None]:
    run = kr_run(client, "champion-auc")
    return run.data.metrics.get(vocabulary.METRIC_VALUE), run.data.tags.get(vocabulary.TAG_COUNTED)


def slowest(client: MlflowClient) -> tuple[float | None, str | None]:
    run = kr_run(client, "slowest")
    return run.data.metrics.get(vocabulary.METRIC_VALUE), run.data.tags.get(vocabulary.TAG_COUNTED)


def markers(client: MlflowClient) -> dict[str, str]:
    experiment = client.get_experiment_by_name(vocabulary.OKR_EXPERIMENT_PREFIX + CYCLE)
    prefix = vocabulary.UNSETTLED_MARKER_PREFIX
    return {key: value for key, value in experiment.tags.items() if key.startswith(prefix)}


def assert_no_drift(client: MlflowClient) -> None:
    result = sync(client, cycle=CYCLE, check=True)
    assert not result.drifted, (result.kr_drift, result.run_drift)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_an_alias_move_through_the_server_moves_the_kr_live(
    database: str, tmp_path: Path, deployment: str
) -> None:
    client = MlflowClient(tracking_uri=database, registry_uri=database)
    backend, app_name = deployment_args(deployment, database)
    with mlflow_server(backend, tmp_path, app_name=app_name, extra_env=SERVER_ENV) as server:
        through_server = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        for version in ("1", "2"):
            through_server.set_registered_model_alias("screener", "champion", version)
            assert wait_for(lambda v=version: champion(client) == (AUCS[v], "1")), server.log()[-3000:]
        through_server.delete_registered_model_alias("screener", "champion")
        assert wait_for(lambda: champion(client)[1] == "0"), server.log()[-3000:]
    assert_no_drift(client)


def test_a_killed_servers_unsettled_trace_work_is_settled_by_the_next_start(
    database: str, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri=database, registry_uri=database)
    svc = client.get_experiment_by_name("svc").experiment_id
    with mlflow_server(database, tmp_path, app_name="okr", extra_env=SERVER_ENV) as server:
        through_server = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        # An alias move is measured at once (its marker comes and goes); a trace waits for a pause.
        through_server.set_registered_model_alias("screener", "champion", "2")
        assert wait_for(lambda: champion(client) == (AUCS["2"], "1")), server.log()[-3000:]
        assert wait_for(lambda: markers(client) == {}), server.log()[-3000:]
        # One finished trace, written in one REST call (MLflow's trace exporter would write it from
        # a queue, which a killed server leaves retrying).
        trace = TraceInfo(
            trace_id=f"tr-{uuid.uuid4().hex}", trace_location=TraceLocation.from_experiment_id(svc),
            request_time=int(time.time() * 1000) - 1_000, execution_duration=700, state=TraceState.OK,
        )
        compat.store_of(through_server).start_trace(trace)
        # Killed at once: the worker waits for a pause in the trace writes before it measures them.
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
    assert len(markers(client)) == 1, server.log()[-3000:]
    assert slowest(client)[1] != "1"  # left unsettled
    with mlflow_server(database, tmp_path, app_name="okr", extra_env=SERVER_ENV) as restarted:
        # No write and no sync: the starting worker finds the marker of a process that is gone.
        assert wait_for(lambda: markers(client) == {}, 60), restarted.log()[-3000:]
        assert champion(client) == (AUCS["2"], "1")
        assert slowest(client) == (700.0, "1")
    assert_no_drift(client)
