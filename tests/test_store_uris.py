"""Every database URI MLflow documents works behind okr+, and any other okr+ URI fails clearly."""

from __future__ import annotations

import shutil
from importlib.metadata import entry_points
from pathlib import Path

import mlflow
import pytest
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistrySqlAlchemyStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from mlflow_okr.errors import InputError
from mlflow_okr.store import OkrHooks
from mlflow_okr.store.uris import (
    INNER_SCHEMES,
    REJECTED_SCHEMES,
    REST_SCHEMES,
    SQL_SCHEMES,
    UnsupportedStoreUri,
    inner_uri_of,
)
from plugin_entrypoints.registry_store import okr_registry_store
from plugin_entrypoints.tracking_store import okr_tracking_store
from tests.conftest import invoke, requires_okr_store

pytestmark = requires_okr_store

SUPPORTED = (
    "okr+sqlite, okr+postgresql, okr+postgresql+psycopg2, okr+postgresql+psycopg, "
    "okr+postgresql+pg8000, okr+mysql, okr+mysql+pymysql, okr+mysql+mysqldb, "
    "okr+mysql+mysqlconnector, okr+mssql, okr+mssql+pyodbc, okr+http, okr+https"
)
# Drivers MLflow documents whose packages the test extras do not install: the scheme is
# registered and reaches MLflow's SQLAlchemy store, which then needs the driver.
UNINSTALLED_DRIVERS = ("postgresql+pg8000", "mysql+mysqldb", "mysql+mysqlconnector", "mssql+pyodbc")


def unsupported(scheme: str) -> str:
    return (
        f"unsupported store URI scheme {scheme!r}: okr+ wraps a database or an MLflow server; "
        f"use one of {SUPPORTED}"
    )


def example_uri(scheme: str) -> str:
    return "okr+sqlite:///tmp/x.db" if scheme == "sqlite" else f"okr+{scheme}://user:secret@db-host/mlflow"


def test_the_supported_schemes_are_the_documented_ones():
    assert INNER_SCHEMES == (
        "sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+pg8000",
        "mysql", "mysql+pymysql", "mysql+mysqldb", "mysql+mysqlconnector", "mssql", "mssql+pyodbc",
        "http", "https",
    )
    assert set(UNINSTALLED_DRIVERS) < set(SQL_SCHEMES)


@pytest.mark.parametrize(
    ("group", "target"),
    [
        ("mlflow.tracking_store", "plugin_entrypoints.tracking_store:okr_tracking_store"),
        ("mlflow.model_registry_store", "plugin_entrypoints.registry_store:okr_registry_store"),
    ],
)
def test_setup_cfg_registers_exactly_the_schemes_of_uris_py(group, target):
    registered = {ep.name: ep.value for ep in entry_points(group=group) if ep.name.startswith("okr+")}
    expected = {f"okr+{scheme}": target for scheme in INNER_SCHEMES + REJECTED_SCHEMES}
    assert registered == expected


@pytest.mark.parametrize("scheme", INNER_SCHEMES + REJECTED_SCHEMES)
def test_mlflow_hands_every_okr_scheme_to_mlflow_okr(scheme):
    uri = example_uri(scheme)
    assert tracking_utils._tracking_store_registry.get_store_builder(uri) is okr_tracking_store
    assert registry_utils._get_store_registry().get_store_builder(uri) is okr_registry_store


@pytest.mark.parametrize("scheme", SQL_SCHEMES)
def test_every_database_scheme_wraps_mlflows_sqlalchemy_store(scheme):
    inner = inner_uri_of(example_uri(scheme))
    assert inner == example_uri(scheme).removeprefix("okr+")
    tracking_builder = tracking_utils._tracking_store_registry.get_store_builder(inner)
    assert tracking_builder is tracking_utils._get_sqlalchemy_store
    registry_builder = registry_utils._get_store_registry().get_store_builder(inner)
    assert registry_builder is registry_utils._get_sqlalchemy_store


@pytest.mark.parametrize("scheme", REST_SCHEMES)
def test_http_schemes_wrap_mlflows_rest_store(scheme):
    inner = inner_uri_of(f"okr+{scheme}://mlflow.example:5000")
    assert inner == f"{scheme}://mlflow.example:5000"
    assert tracking_utils._tracking_store_registry.get_store_builder(inner) is tracking_utils._get_rest_store
    assert registry_utils._get_store_registry().get_store_builder(inner) is registry_utils._get_rest_store


def _assert_hooked_sql_store(uri: str, driver: str) -> None:
    """Build the okr+ store through MLflow's registries, check its class, write and read through it."""
    store = tracking_utils._tracking_store_registry.get_store(uri)
    try:
        assert isinstance(store, SqlAlchemyStore) and isinstance(store, OkrHooks)
        assert issubclass(type(store), SqlAlchemyStore)
        assert store.engine.dialect.driver == driver
        registry = registry_utils._get_store_registry().get_store(uri, uri)
        assert isinstance(registry, RegistrySqlAlchemyStore)
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("uri-check")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "accuracy", 0.9733333333333334)
        plain = MlflowClient(uri.removeprefix("okr+"))
        assert plain.get_run(run.info.run_id).data.metrics == {"accuracy": 0.9733333333333334}
        client.create_registered_model("uri-check-model")
        assert plain.get_registered_model("uri-check-model").name == "uri-check-model"
    finally:
        store.flush_okr()
        # The database goes away with the test; the exit-time settle must not reach for it.
        store._okr_live.close()


def test_okr_sqlite_is_built_through_mlflows_registry(tmp_path: Path, sqlite_template: Path):
    shutil.copyfile(sqlite_template, tmp_path / "mlflow.db")
    _assert_hooked_sql_store(f"okr+sqlite:///{tmp_path / 'mlflow.db'}", "pysqlite")


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_okr_postgresql_with_a_driver(postgres_uri: str, driver: str):
    uri = "okr+" + postgres_uri.replace("postgresql://", f"postgresql+{driver}://", 1)
    _assert_hooked_sql_store(uri, driver)


@pytest.mark.mysql
def test_okr_mysql_with_pymysql(mysql_uri: str):
    assert mysql_uri.startswith("mysql+pymysql://")
    _assert_hooked_sql_store("okr+" + mysql_uri, "pymysql")


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("okr+file:///tmp/mlruns", "okr+file"),
        ("okr+databricks://my-profile", "okr+databricks"),
        ("okr+databricks", "okr+databricks"),
        ("okr+databricks-uc://my-profile", "okr+databricks-uc"),
        ("okr+sqlit:///mlflow.db", "okr+sqlit"),
        ("okr+postgres://user:secret@db/mlflow", "okr+postgres"),
        ("okr+/tmp/mlruns", "okr+/tmp/mlruns"),
        ("sqlite:///mlflow.db", "sqlite"),
    ],
)
def test_any_other_scheme_is_refused_naming_the_supported_ones(uri, scheme):
    with pytest.raises(UnsupportedStoreUri) as raised:
        inner_uri_of(uri)
    assert str(raised.value) == unsupported(scheme)
    assert isinstance(raised.value, InputError)
    assert "secret" not in str(raised.value)


@pytest.fixture
def restore_tracking_uri():
    yield
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [("okr+file:///tmp/mlruns", "okr+file"), ("okr+databricks://my-profile", "okr+databricks")],
)
def test_mlflow_client_reports_the_clear_error(uri, scheme, restore_tracking_uri):
    mlflow.set_tracking_uri(uri)
    with pytest.raises(UnsupportedStoreUri) as tracking_error:
        MlflowClient().search_experiments()
    assert str(tracking_error.value) == unsupported(scheme)
    with pytest.raises(UnsupportedStoreUri) as registry_error:
        MlflowClient(registry_uri=uri).search_registered_models()
    assert str(registry_error.value) == unsupported(scheme)


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("okr+file:///tmp/mlruns", "okr+file"),
        ("okr+databricks", "okr+databricks"),
        ("okr+sqlit:///x.db", "okr+sqlit"),
    ],
)
def test_the_cli_exits_2_with_the_clear_error(runner, uri, scheme, monkeypatch):
    result = invoke(runner, "status", "--tracking-uri", uri)
    assert result.exit_code == 2
    assert f"Invalid value for '--tracking-uri': {unsupported(scheme)}" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = invoke(runner, "sync", "--check")
    assert result.exit_code == 2
    assert unsupported(scheme) in result.output
