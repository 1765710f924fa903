"""Shared fixtures: a real MLflow tracking store on SQLite under tmp_path, and helpers."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlflow_okr.cli import cli
from tests.mysql import mysql_server, mysql_uri  # noqa: F401  (fixtures)
from tests.postgres import postgres_server, postgres_uri  # noqa: F401  (fixtures)

# Tests check KR state right after a run ends; on a loaded machine even a small store's recompute
# can pass the run-end budget, which would move that settling to the background writer.
# tests/test_store.py covers the deferred path explicitly.
os.environ.setdefault("MLFLOW_OKR_RUN_END_BUDGET", "300")

# A fixed moment inside 2026-Q4, so statuses and elapsed fractions are reproducible.
NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
IN_CYCLE_MS = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)


def okr_store_registered(scheme: str = "okr+sqlite") -> bool:
    """Whether the okr+ tracking-store plugin is installed (its entry points are registered)."""
    return any(ep.name == scheme for ep in entry_points(group="mlflow.tracking_store"))


requires_okr_store = pytest.mark.skipif(
    not okr_store_registered(), reason="the okr+ tracking-store plugin is not registered"
)


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def sql_server_uri(request: pytest.FixtureRequest) -> str:
    """A fresh database with MLflow's schema on a real server, once on PostgreSQL and once on MariaDB."""
    return request.getfixturevalue(f"{request.param}_uri")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's schema, created once: migrations take seconds per store."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: Path) -> str:
    """A fresh SQLite tracking store; MLFLOW_TRACKING_URI points at it for the test."""
    shutil.copyfile(sqlite_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run `mlflow-okr ARGS` in-process and return the click Result."""
    return runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write okrs.yaml text (dedented) under tmp_path and return its path."""

    def write(text: str, name: str = "okrs.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


def make_run(
    client: MlflowClient,
    experiment_id: str,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    start_time: int = IN_CYCLE_MS,
    status: str | None = "FINISHED",
    name: str | None = None,
) -> str:
    """Create a run with the given start time, metrics and tags; end it with `status` if given."""
    run = client.create_run(experiment_id, start_time=start_time, tags=tags or {}, run_name=name)
    for key, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, key, value, timestamp=start_time + 1000)
    if status is not None:
        client.set_terminated(run.info.run_id, status, end_time=start_time + 60_000)
    return run.info.run_id
