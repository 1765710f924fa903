"""Every use of MLflow internals, each behind one small function.

MLflow's public API does not offer these. Each item names the MLflow versions it was checked
against; when MLflow changes one of them, this is the only file to read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Checked on MLflow 3.16.0 (the oldest release setup.cfg allows) and 3.17.2.
# The MLflow releases the tests ran on (scripts/test-mlflow-versions.sh): the oldest is setup.cfg's
# lower bound; a newer release than the newest fails tests/test_mlflow_range.py until the script
# has run on it and this line (with the README's) says so.
TESTED_MLFLOW = ("3.16.0", "3.17.2")


def run_matches_clause(run: Any, clause: dict[str, Any]) -> bool:
    """Whether `run` satisfies one parsed search clause, as MLflow's file store decides it.

    `SearchUtils._does_run_match_clause`: private, stable since MLflow 1.x; checked on 3.17.2.
    """
    from mlflow.utils.search_utils import SearchUtils

    return SearchUtils._does_run_match_clause(run, clause)


def clause_operand(clause: dict[str, Any]) -> Callable[[Any], Any] | None:
    """How `run_matches_clause` reads a run's side of one parsed clause (a metric, param, tag or
    attribute value), so that a caller may keep its answer per value; None for a dataset clause.

    The lookups of `SearchUtils._does_run_match_clause`, with its key aliases; checked on 3.17.2.
    """
    from mlflow.utils.search_utils import SearchUtils

    key = SearchUtils.translate_key_alias(clause["key"])
    kind = clause["type"]
    if kind == SearchUtils._METRIC_IDENTIFIER:
        return lambda run: run.data.metrics.get(key)
    if kind == SearchUtils._PARAM_IDENTIFIER:
        return lambda run: run.data.params.get(key)
    if kind == SearchUtils._TAG_IDENTIFIER:
        return lambda run: run.data.tags.get(key)
    if kind == SearchUtils._ATTRIBUTE_IDENTIFIER:
        return lambda run: getattr(run.info, key)
    return None


def tracking_store_builder(store_uri: str) -> Any:
    """The builder MLflow's tracking-store registry has for `store_uri` (sqlite://, http://, ...).

    `_tracking_store_registry`: module-private in mlflow.tracking._tracking_service.utils;
    checked on 3.17.2.
    """
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return _tracking_store_registry.get_store_builder(store_uri)


def registry_store_builder(store_uri: str) -> Any:
    """The builder MLflow's model-registry-store registry has for `store_uri`.

    `_get_store_registry`: private in mlflow.tracking._model_registry.utils; checked on 3.17.2.
    """
    from mlflow.tracking._model_registry.utils import _get_store_registry

    return _get_store_registry().get_store_builder(store_uri)


def current_tracking_store() -> Any:
    """The tracking store of the current tracking URI (what `mlflow.log_metric` writes to).

    `_get_store`: private in mlflow.tracking._tracking_service.utils; checked on 3.17.2.
    """
    from mlflow.tracking._tracking_service.utils import _get_store

    return _get_store()


def store_of(client: Any) -> Any:
    """The tracking store behind an `MlflowClient`.

    `MlflowClient._tracking_client.store`: private attributes; checked on 3.17.2.
    """
    return client._tracking_client.store


def is_sql_store(store: Any) -> bool:
    """Whether `store` is MLflow's SQL tracking store (SQLite, PostgreSQL, MySQL, MSSQL)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return isinstance(store, SqlAlchemyStore)


def sql_engine(store: Any) -> Any:
    """The SQLAlchemy engine a SqlAlchemyStore writes through.

    `SqlAlchemyStore.engine`: an attribute set in its __init__ (public name, no docs), the engine
    of the primary database when a read replica is configured; checked on 3.16.0 and 3.17.2.
    """
    return store.engine


def sql_session(store: Any, write: bool = False) -> Any:
    """A session (context manager) on a SqlAlchemyStore's database, for SQLAlchemy statements.

    `SqlAlchemyStore.ManagedSessionMaker`: an attribute set in its __init__ (public name, no
    docs), committing on exit. Its `read_only` flag (default True) routes a session to a read
    replica when one is configured, so writes must pass False; checked on 3.16.0 and 3.17.2.
    """
    return store.ManagedSessionMaker(read_only=not write)


def swap_class(store: Any, cls: type) -> None:
    """Make the already built `store` an instance of `cls`, a subclass of its own class.

    Plain Python, but it relies on MLflow's stores keeping no per-class state that a subclass
    would lose; checked on SqlAlchemyStore and RestStore of 3.17.2.
    """
    store.__class__ = cls


def rebuild_async_queue(store: Any) -> None:
    """Point the store's async logging queue at its (hooked) `log_batch`.

    `AbstractStore._async_logging_queue`: private attribute built in AbstractStore.__init__
    around the store's own `log_batch`; checked on 3.17.2.
    """
    from mlflow.utils.async_logging.async_logging_queue import AsyncLoggingQueue

    if hasattr(store, "_async_logging_queue"):
        store._async_logging_queue = AsyncLoggingQueue(logging_func=store.log_batch)


# -- the server deployment (`mlflow server --app-name okr` over a plain backend URI) ----------------


def server_tracking_store_registry() -> Any:
    """The store registry `mlflow server` builds its tracking store from (one per process).

    `mlflow.server.handlers._tracking_store_registry`: module-private; its `register(scheme,
    builder)` and `get_store_builder(uri)` are StoreRegistry's public methods. The server's builder
    for SQL schemes picks `WorkspaceAwareSqlAlchemyStore` under `--enable-workspaces` and passes the
    read replica URI, which the client registry does not; checked on 3.16.0 and 3.17.2.
    """
    from mlflow.server import handlers

    return handlers._tracking_store_registry


def registered_builder(registry: Any, scheme: str) -> Any:
    """The builder `registry` holds for exactly `scheme`, or None (StoreRegistry._registry)."""
    return registry._registry.get(scheme)


def built_server_tracking_store() -> Any:
    """The server's tracking store if this process built it already, else None.

    `mlflow.server.handlers._tracking_store`: module-private, set by `_get_tracking_store`;
    checked on 3.16.0 and 3.17.2.
    """
    from mlflow.server import handlers

    return handlers._tracking_store


def server_registry_store_registry() -> Any:
    """The store registry `mlflow server` builds its model registry store from (one per process).

    `mlflow.server.handlers._model_registry_store_registry`: module-private; as for the tracking
    registry, its SQL builder picks the workspace-aware store and the read replica; checked on
    3.16.0 and 3.17.2.
    """
    from mlflow.server import handlers

    return handlers._model_registry_store_registry


def built_server_registry_store() -> Any:
    """The server's model registry store if this process built it already, else None.

    `mlflow.server.handlers._model_registry_store`: module-private, set by
    `_get_model_registry_store`; checked on 3.16.0 and 3.17.2.
    """
    from mlflow.server import handlers

    return handlers._model_registry_store


def is_sql_registry_store(store: Any) -> bool:
    """Whether `store` is MLflow's SQL model registry store (SQLite, PostgreSQL, MySQL, MSSQL)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    return isinstance(store, SqlAlchemyStore)


def server_tracking_store() -> Any:
    """The server's tracking store, built now if no request built it yet (`_get_tracking_store`)."""
    from mlflow.server import handlers

    return handlers._get_tracking_store()


def server_backend_store_uri() -> str | None:
    """`--backend-store-uri` as `mlflow server` hands it to its workers (an environment variable)."""
    import os

    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR

    return os.environ.get(BACKEND_STORE_URI_ENV_VAR)


def in_server_worker() -> bool:
    """Whether this process is a worker that `mlflow server` started (uvicorn, gunicorn, waitress).

    `_MLFLOW_SGI_NAME`: private environment variable `mlflow server` sets for its workers only,
    not for its own process; checked on 3.16.0 and 3.17.2.
    """
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    return bool(_MLFLOW_SGI_NAME.get())


def wrap_lifespan(fastapi_app: Any, on_startup: Any, on_shutdown: Any) -> None:
    """Run `on_startup()` after and `on_shutdown()` before MLflow's own lifespan, in a thread each.

    MLflow's FastAPI app has its own lifespan context (so `add_event_handler` would be ignored);
    Starlette's `Router.lifespan_context` is the attribute it is kept in (Starlette 0.4x-1.x,
    MLflow 3.16.0 and 3.17.2). uvicorn runs the shutdown half on SIGTERM before it re-raises the
    signal, which ends the worker without Python's exit hooks.
    """
    from contextlib import asynccontextmanager

    import anyio

    inner = fastapi_app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any):
        async with inner(app) as state:
            await anyio.to_thread.run_sync(on_startup)
            try:
                yield state
            finally:
                await anyio.to_thread.run_sync(on_shutdown)

    fastapi_app.router.lifespan_context = lifespan


def active_workspace() -> str | None:
    """The MLflow workspace of this request or thread, None when workspaces are off.

    `mlflow.utils.workspace_context.get_request_workspace` and `MLFLOW_ENABLE_WORKSPACES`: checked
    on 3.16.0 and 3.17.2.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.utils.workspace_context import get_request_workspace

    if not MLFLOW_ENABLE_WORKSPACES.get():
        return None
    return get_request_workspace()


def workspace_scope(workspace: str | None) -> Any:
    """A context manager in which MLflow's stores act for `workspace` (a no-op for None).

    `ServerWorkspaceContext` sets the request-scoped context variable only, never the process
    environment, so two writer threads of different workspaces do not see each other's; a new
    thread starts without it. Checked on 3.16.0 and 3.17.2.
    """
    from contextlib import nullcontext

    if workspace is None:
        return nullcontext()
    from mlflow.utils.workspace_context import ServerWorkspaceContext

    return ServerWorkspaceContext(workspace)


def experiment_workspace_column() -> Any:
    """`SqlExperiment.workspace`, the column that puts an experiment in a workspace, or None."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment

    return getattr(SqlExperiment, "workspace", None)


def server_workspaces() -> list[str | None]:
    """Every workspace of this server's workspace store; [None] when workspaces are off.

    `mlflow.server.workspace_helpers._get_workspace_store`: module-private, memoized per process;
    `list_workspaces()` is the workspace store's public method. Checked on 3.16.0 and 3.17.2.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES

    if not MLFLOW_ENABLE_WORKSPACES.get():
        return [None]
    from mlflow.server.workspace_helpers import _get_workspace_store

    return [workspace.name for workspace in _get_workspace_store().list_workspaces()]


# -- trace KRs ------------------------------------------------------------------------------------


def trace_metric_aggregations() -> dict[str, dict[str, frozenset[str]]]:
    """What `query_trace_metrics` computes: view (TRACES, SPANS, ASSESSMENTS) -> metric name ->
    the aggregation types (COUNT, SUM, AVG, MIN, MAX, PERCENTILE) it supports for that metric.

    `VIEW_TYPE_CONFIGS`: module-level in mlflow.store.tracking.utils.sql_trace_metrics_utils, the
    table MLflow validates every query against (also behind REST); checked on 3.17.2.
    """
    from mlflow.store.tracking.utils.sql_trace_metrics_utils import VIEW_TYPE_CONFIGS

    return {
        view.value: {
            str(metric): frozenset(aggregation.value for aggregation in config.aggregation_types)
            for metric, config in metrics.items()
        }
        for view, metrics in VIEW_TYPE_CONFIGS.items()
    }


def act_in_requested_workspace(name: str, path: str) -> None:
    """Bind this Flask request to workspace `name`, as MLflow binds one named by its header.

    `resolve_workspace_for_request_if_enabled` checks the workspace exists (and that workspaces
    are on), `set_server_request_workspace` binds it; both as MLflow's own before-request handler
    uses them (mlflow.server.workspace_helpers, mlflow.utils.workspace_context; checked on 3.17.2).
    """
    from mlflow.server.workspace_helpers import resolve_workspace_for_request_if_enabled
    from mlflow.utils.workspace_context import set_server_request_workspace

    workspace = resolve_workspace_for_request_if_enabled(path, name)
    set_server_request_workspace(workspace.name if workspace else None)


# -- model registry --------------------------------------------------------------------------------


def logged_model_id_of_source(source: str | None) -> str | None:
    """The logged model id in a model version's `models:/<model_id>` source, else None.

    MLflow's SQL registry store does not keep `ModelVersion.model_id` (always None on 3.16.0 and
    3.17.2); the id survives only in the source. `_parse_model_uri`: module-private in
    mlflow.store.artifact.utils.models; checked on 3.17.2.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import _parse_model_uri

    if not source or not source.startswith("models:/"):
        return None
    try:
        return _parse_model_uri(source).model_id
    except MlflowException:
        return None
