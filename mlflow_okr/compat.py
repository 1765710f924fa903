"""Every use of MLflow internals, each behind one small function.

MLflow's public API does not offer these. Each item names the MLflow versions it was checked
against; when MLflow changes one of them, this is the only file to read.
"""

from __future__ import annotations

from typing import Any

# Checked on MLflow 3.16.0 (the oldest release setup.cfg allows) and 3.17.2.


def run_matches_clause(run: Any, clause: dict[str, Any]) -> bool:
    """Whether `run` satisfies one parsed search clause, as MLflow's file store decides it.

    `SearchUtils._does_run_match_clause`: private, stable since MLflow 1.x; checked on 3.17.2.
    """
    from mlflow.utils.search_utils import SearchUtils

    return SearchUtils._does_run_match_clause(run, clause)


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
