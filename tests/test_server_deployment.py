"""The server deployment that keeps every MLflow feature: `mlflow server --backend-store-uri <plain
uri> --app-name okr`. In-process checks of the store the server builds, then real servers: MLflow's
job runner and trace rollups behind it, and no KR update lost when the server stops or is killed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.store.tracking.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore
from mlflow.tracking import MlflowClient

from mlflow_okr import compat, vocabulary
from mlflow_okr.store import OkrHooks
from mlflow_okr.store.serving import install_server_hooks
from mlflow_okr.sync import sync
from tests.live_fixtures import CYCLE, EXPERIMENT, kr_run, publish
from tests.servers import mlflow_server

JOB_SECONDS = 120  # MLflow's job runner starts its consumers and a subprocess per job


@pytest.fixture
def server_registry(sqlite_template: Path) -> Iterator[object]:
    """The server's store registry of this process, restored (with the model registry's) after the
    test hooks it."""
    from mlflow.server import handlers

    registry = compat.server_tracking_store_registry()
    model_registry = compat.server_registry_store_registry()
    saved, saved_models = dict(registry._registry), dict(model_registry._registry)
    saved_stores = handlers._tracking_store, handlers._model_registry_store
    yield registry
    for restored, entries in ((registry, saved), (model_registry, saved_models)):
        restored._registry.clear()
        restored._registry.update(entries)
    handlers._tracking_store, handlers._model_registry_store = saved_stores


def _sqlite_copy(template: Path, directory: Path) -> str:
    path = directory / "mlflow.db"
    path.write_bytes(template.read_bytes())
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("workspaces", "store_class"),
    [("false", SqlAlchemyStore), ("true", WorkspaceAwareSqlAlchemyStore)],
)
def test_the_app_makes_the_servers_own_store_hooked(
    server_registry, sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    workspaces: str, store_class: type,
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", workspaces)
    uri = _sqlite_copy(sqlite_template, tmp_path)
    install_server_hooks()
    install_server_hooks()  # a second app factory call must not hook twice
    store = server_registry.get_store_builder(uri)(uri, str(tmp_path / "artifacts"))
    try:
        assert isinstance(store, OkrHooks)
        assert type(store).__mro__[1:3] == (OkrHooks, store_class)
        assert store._okr_live.inner_uri == uri
    finally:
        store._okr_live.close()


def test_the_app_hooks_the_servers_model_registry_store_with_the_tracking_stores_keepers(
    server_registry, sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore

    from mlflow_okr.store.hooks import OkrRegistryHooks

    uri = _sqlite_copy(sqlite_template, tmp_path)
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, uri)
    install_server_hooks()
    install_server_hooks()
    registry_store = compat.server_registry_store_registry().get_store_builder(uri)(store_uri=uri)
    tracking_store = compat.server_tracking_store()
    try:
        assert type(registry_store).__mro__[1:3] == (OkrRegistryHooks, RegistryStore)
        # One writer per worker settles the alias moves and the tracking writes.
        assert registry_store._okr_keepers is tracking_store._okr_keepers
    finally:
        tracking_store._okr_live.close()


def _server_checked_properties() -> set[str]:
    """The `supports_*` names MLflow's server and CLI read, that a tracking store defines."""
    root = Path(mlflow.__file__).parent
    sources = [*sorted((root / "server").rglob("*.py")), root / "cli" / "__init__.py"]
    names = set()
    for path in sources:
        names.update(re.findall(r"\bsupports_[a-z_]+", path.read_text(encoding="utf-8")))
    return {name for name in names if isinstance(getattr(AbstractStore, name, None), property)}


@pytest.mark.parametrize("workspaces", ["false", "true"])
@pytest.mark.parametrize("deployment", ["okr-app", "okr-uri"])
def test_every_supports_property_answers_as_the_wrapped_store(
    server_registry, sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    workspaces: str, deployment: str,
) -> None:
    checked = _server_checked_properties()
    # What MLflow 3.17.2 checks; a property MLflow adds later is compared as well.
    assert {"supports_workspaces", "supports_trace_archival"} <= checked
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", workspaces)
    uri = _sqlite_copy(sqlite_template, tmp_path)
    artifacts = str(tmp_path / "artifacts")
    # The builders themselves: the registry's get_store caches stores by URI.
    plain = server_registry.get_store_builder(uri)(uri, artifacts)
    if deployment == "okr-app":
        install_server_hooks()
        hooked = server_registry.get_store_builder(uri)(uri, artifacts)
    else:
        from mlflow.tracking._tracking_service.utils import _get_store

        plain = compat.tracking_store_builder(uri)(store_uri=uri, artifact_uri=artifacts)
        hooked = _get_store("okr+" + uri, artifacts)
    try:
        assert isinstance(hooked, OkrHooks) and not isinstance(plain, OkrHooks)
        assert {name: getattr(hooked, name) for name in checked} == {
            name: getattr(plain, name) for name in checked
        }
        assert hooked.supports_workspaces is (workspaces == "true")
        assert hooked.supports_trace_archival is True
    finally:
        hooked._okr_live.close()


# ---------------------------------------------------------------------------------------------
# Real servers over a plain URI with --app-name okr.


def _job_runner_log_lines(server) -> list[str]:
    return [line for line in server.log().splitlines() if "job execution requirements not met" in line]


def test_a_job_runs_and_trace_rollups_start_behind_the_okr_app(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true", "MLFLOW_SQL_TRACE_ROLLUPS_ENABLED": "true"}
    with mlflow_server(database, tmp_path, app_name="okr", extra_env=env) as server:
        assert _job_runner_log_lines(server) == []
        assert isinstance(MlflowClient(server.url).search_experiments(), list)
        # The cheapest job MLflow ships: online scoring of an experiment with no scorers.
        submitted = requests.post(
            f"{server.url}/ajax-api/3.0/jobs/",
            json={
                "job_name": "run_online_trace_scorer",
                "params": {"experiment_id": "0", "online_scorers": []},
            },
            timeout=30,
        )
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        deadline = time.monotonic() + JOB_SECONDS
        while True:
            job = requests.get(f"{server.url}/ajax-api/3.0/jobs/{job_id}", timeout=30).json()
            if job["status"] not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert job["status"] == "SUCCEEDED", job
        if importlib.util.find_spec("mlflow.tracing.trace_rollup_service") is not None:  # 3.17+
            registered = "Registered sql_trace_rollup_scheduler periodic task"
            deadline = time.monotonic() + JOB_SECONDS
            while registered not in server.log() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert registered in server.log()


# ---------------------------------------------------------------------------------------------
# A stop or a kill loses no KR update.


def _log_runs(url: str, count: int) -> list[str]:
    """`count` runs that count for `acc` (one with the best value), written through the server."""
    mlflow.set_tracking_uri(url)
    try:
        mlflow.set_experiment(EXPERIMENT)
        run_ids = []
        for index in range(count):
            with mlflow.start_run() as run:
                mlflow.log_metrics({"val_acc": 0.6 + index / 100, "latency": 10, "val_loss": 0.9})
                mlflow.set_tag("stage", "prod")
            run_ids.append(run.info.run_id)
        return run_ids
    finally:
        mlflow.set_tracking_uri(None)


def _markers(client: MlflowClient) -> dict[str, str]:
    experiment = client.get_experiment_by_name(vocabulary.OKR_EXPERIMENT_PREFIX + CYCLE)
    prefix = vocabulary.UNSETTLED_MARKER_PREFIX
    return {key: value for key, value in experiment.tags.items() if key.startswith(prefix)}


def _assert_settled(client: MlflowClient, run_ids: list[str]) -> None:
    result = sync(client, cycle=CYCLE, check=True)
    assert not result.drifted, (result.kr_drift, result.run_drift)
    acc = kr_run(client, "acc")
    assert acc.data.metrics[vocabulary.METRIC_VALUE] == pytest.approx(0.6 + (len(run_ids) - 1) / 100)
    assert acc.data.tags[vocabulary.TAG_BEST_RUN] == run_ids[-1]
    assert _markers(client) == {}


def test_a_stopped_server_has_settled_its_last_writes(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'stop.db'}"
    publish(database)
    env = {"MLFLOW_OKR_RUN_END_BUDGET": "0", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with mlflow_server(database, tmp_path, workers=2, app_name="okr", extra_env=env) as server:
        run_ids = _log_runs(server.url, 6)
    # Stopped (SIGTERM) right after the last write: the workers settled before they ended.
    _assert_settled(MlflowClient(database), run_ids)


def test_a_killed_servers_unsettled_work_is_settled_by_the_next_start(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'kill.db'}"
    publish(database)
    client = MlflowClient(database)
    env = {"MLFLOW_OKR_RUN_END_BUDGET": "0", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with mlflow_server(database, tmp_path, workers=1, app_name="okr", extra_env=env) as server:
        run_ids = _log_runs(server.url, 4)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
    # The worker had work pending (its recount waits for a 2 s pause): its marker stands.
    assert len(_markers(client)) == 1, server.log()[-3000:]
    with mlflow_server(database, tmp_path, workers=1, app_name="okr", extra_env=env) as restarted:
        # No write and no sync: the starting worker finds the marker of a process that is gone.
        deadline = time.monotonic() + 60
        while _markers(client) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _markers(client) == {}, restarted.log()[-3000:]
        _assert_settled(client, run_ids)
