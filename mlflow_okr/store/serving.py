"""The server deployment: `mlflow server --backend-store-uri postgresql://... --app-name okr`.

`mlflow server` reads its backend URI in more places than its tracking store: the workspace
store, the model registry, the job runner and its trace rollups, `mlflow gc`. An `okr+` URI is
foreign to all of them, so each one would switch its feature off. Here the URI stays MLflow's own,
and the `okr` and `okr-auth` server apps hook the one store that sees the writes: in each worker,
the server's store registry gets, for every SQL scheme, a builder that builds exactly the store
MLflow would (workspace-aware under `--enable-workspaces`, with its read replica) and hooks it as
an `okr+` URI does. Every `supports_*` property and `isinstance` check is then the inner store's. The
model registry store is hooked the same way, so an alias move updates the KRs that follow it.

The apps also settle what a worker has pending when uvicorn stops it (its lifespan's shutdown; a
SIGTERM ends a worker without Python's exit hooks) and, when a worker starts, catch up on the work
a killed worker left marked (`unsettled.py`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from mlflow_okr import compat
from mlflow_okr.store.hooks import OkrHooks, OkrRegistryHooks, settle_at_exit, wrap_registry_store, wrap_store
from mlflow_okr.store.uris import SQL_SCHEMES

logger = logging.getLogger("mlflow_okr")


def _hooking(builder: Any) -> Any:
    """A store builder that builds what `builder` builds, then hooks it."""

    @functools.wraps(builder)
    def build(store_uri: str, artifact_uri: str | None = None) -> Any:
        return wrap_store(builder(store_uri, artifact_uri), store_uri)

    build.okr_hooked = True  # type: ignore[attr-defined]
    return build


def _hooking_registry(builder: Any) -> Any:
    """A model registry store builder that builds what `builder` builds, then hooks it."""

    @functools.wraps(builder)  # MLflow passes what the wrapped builder's signature names
    def build(store_uri: str, tracking_uri: str | None = None) -> Any:
        store = builder(store_uri) if tracking_uri is None else builder(store_uri, tracking_uri)
        return _hook_registry_store(store)

    build.okr_hooked = True  # type: ignore[attr-defined]
    return build


def _hook_registry_store(store: Any) -> Any:
    """`store` with alias moves noted by the keepers of the server's (hooked) tracking store."""
    tracking = server_store()
    if tracking is None or isinstance(store, OkrRegistryHooks) or not compat.is_sql_registry_store(store):
        return store  # no hooked tracking store to settle in (a file store), or hooked already
    return wrap_registry_store(store, tracking._okr_keepers)


def install_server_hooks() -> None:
    """Make this worker's tracking and model registry stores (for plain SQL URIs) hooked ones.

    An `okr+` URI is left as it is: its store is hooked already.
    """
    for registry, hooking in (
        (compat.server_tracking_store_registry(), _hooking),
        (compat.server_registry_store_registry(), _hooking_registry),
    ):
        for scheme in SQL_SCHEMES:
            builder = compat.registered_builder(registry, scheme)
            if builder is not None and not getattr(builder, "okr_hooked", False):
                registry.register(scheme, hooking(builder))
    built = compat.built_server_tracking_store()
    if built is not None and not isinstance(built, OkrHooks) and compat.is_sql_store(built):
        wrap_store(built, compat.server_backend_store_uri())
    built_registry = compat.built_server_registry_store()
    if built_registry is not None:
        _hook_registry_store(built_registry)


def server_store() -> Any | None:
    """The server's tracking store when it is a hooked one, else None."""
    store = compat.server_tracking_store()
    return store if isinstance(store, OkrHooks) else None


def catch_up_at_start() -> None:
    """A starting worker: have each workspace's writer settle what killed workers left marked."""
    try:
        store = server_store()
        if store is None:
            return
        for workspace in compat.server_workspaces():
            store._okr_keepers.of(workspace).start_catch_up()
    except Exception as error:  # noqa: BLE001 - fail-open: a worker must start regardless
        from mlflow_okr.store.live import fail_open

        fail_open(error)


def settle_at_shutdown() -> None:
    """A stopping worker: settle and recount everything it has pending, then remove its markers."""
    store = compat.built_server_tracking_store()
    if store is not None:
        settle_at_exit(store)
