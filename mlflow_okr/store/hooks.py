"""The `okr+<scheme>://` tracking store: the inner store's own class, plus hooks on writes.

`okr+sqlite:///mlflow.db` builds the store MLflow would build for `sqlite:///mlflow.db`, then
makes it an instance of a subclass of that store's class which adds the hooks, so every
`isinstance` check MLflow makes still holds. Everything not intercepted here passes through.
"""

from __future__ import annotations

import atexit
import inspect
import threading
from typing import Any

from mlflow.entities import RunStatus

from mlflow_okr import compat, state, vocabulary
from mlflow_okr.store.keepers import Keepers
from mlflow_okr.store.live import LiveKrs, fail_open

_hooked_classes: dict[tuple[type, type], type] = {}
_hooked_classes_lock = threading.Lock()


def inner_uri_of(store_uri: str) -> str:
    """`okr+sqlite:///x.db` -> `sqlite:///x.db`; other inner schemes raise UnsupportedStoreUri."""
    from mlflow_okr.store.uris import inner_uri_of as checked_inner_uri

    return checked_inner_uri(store_uri)


def _is_terminal(run_status: Any) -> bool:
    if run_status is None:
        return False
    name = run_status if isinstance(run_status, str) else RunStatus.to_string(run_status)
    return RunStatus.is_terminated(RunStatus.from_string(name))


class OkrHooks:
    """Mixed in before the inner store's class: each write first runs there, then is noted."""

    _okr_keepers: Keepers

    @property
    def _okr_live(self) -> LiveKrs:
        """The keeper of the workspace this write is made in (the only one without workspaces)."""
        return self._okr_keepers.current()

    def log_metric(self, run_id, metric):
        result = super().log_metric(run_id, metric)
        self._okr_live.written(run_id, metric_keys=(metric.key,))
        return result

    def log_batch(self, run_id, metrics, params, tags):
        result = super().log_batch(run_id, metrics, params, tags)
        self._okr_live.written(
            run_id,
            metric_keys=[metric.key for metric in metrics or ()],
            tag_keys=[tag.key for tag in tags or ()],
            param_keys=[param.key for param in params or ()],
        )
        return result

    def log_param(self, run_id, param):
        result = super().log_param(run_id, param)
        self._okr_live.written(run_id, param_keys=(param.key,))
        return result

    def set_experiment_tag(self, experiment_id, tag):
        result = super().set_experiment_tag(experiment_id, tag)
        # `apply` writes this tag last: a spec published through this store (a client applying
        # through the server) is loaded at once, not at the next write after REFRESH_INTERVAL.
        if tag.key == vocabulary.TAG_APPLIED_AT:
            self._okr_live.definitions_changed()
        return result

    def set_tag(self, run_id, tag):
        result = super().set_tag(run_id, tag)
        self._okr_live.written(run_id, tag_keys=(tag.key,))
        return result

    def delete_tag(self, run_id, key):
        result = super().delete_tag(run_id, key)
        self._okr_live.written(run_id, tag_keys=(key,))
        return result

    # The *_async variants are not overridden: they queue the write, and the queue calls this
    # class's `log_batch` once the write is stored (see `wrap_store`), so KRs are noted after the
    # data lands.

    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        # A new run has no metrics yet, so no KR can count it; its tags are noted for filters.
        run = super().create_run(experiment_id, user_id, start_time, tags, run_name)
        if tags:
            self._okr_live.written(run.info.run_id, tag_keys=[tag.key for tag in tags])
        return run

    def update_run_info(self, run_id, run_status, end_time, run_name):
        result = super().update_run_info(run_id, run_status, end_time, run_name)
        # Run end is the post-run hook: pending runs become excluded, a failed best run gives way.
        if _is_terminal(run_status):
            self._okr_live.run_changed(run_id)
        return result

    def delete_run(self, run_id):
        # Noted first: the writer must not tag a run on its way to deletion (`mlflow gc`).
        self._okr_live.deleting(run_id)
        result = super().delete_run(run_id)
        self._okr_live.run_changed(run_id)
        return result

    def restore_run(self, run_id):
        result = super().restore_run(run_id)
        self._okr_live.deleting(run_id, False)
        self._okr_live.run_changed(run_id)
        return result

    # Trace writes: the trace KRs of the experiment are re-measured by the writer (traces are
    # production traffic, so the write itself costs a set lookup). The signatures are MLflow's
    # AbstractStore's, checked on 3.16.0 and 3.17.2.

    def start_trace(self, trace_info):
        result = super().start_trace(trace_info)
        self._okr_live.traces_written(getattr(result, "experiment_id", None) or trace_info.experiment_id)
        return result

    def log_spans(self, location, spans, tracking_uri=None):
        result = super().log_spans(location, spans, tracking_uri=tracking_uri)
        self._okr_live.traces_written(location)
        return result

    def create_assessment(self, assessment):
        result = super().create_assessment(assessment)
        self._okr_live.traces_written(assessments=True)
        return result

    def update_assessment(self, *args, **kwargs):
        result = super().update_assessment(*args, **kwargs)
        self._okr_live.traces_written(assessments=True)
        return result

    def delete_assessment(self, trace_id, assessment_id):
        result = super().delete_assessment(trace_id, assessment_id)
        self._okr_live.traces_written(assessments=True)
        return result

    def _hard_delete_run(self, run_id):
        # `mlflow gc` calls this private method of SqlAlchemyStore (checked on MLflow 3.16.0, 3.17.2):
        # no okr.* tag may be written for the run while its rows are being removed.
        self._okr_live.deleting(run_id)
        return super()._hard_delete_run(run_id)

    def flush_okr(self) -> None:
        """Settle every pending KR update now (queued async writes first)."""
        try:
            self.flush_async_logging()
            for keeper in self._okr_keepers.all():
                keeper.flush()
        except Exception as error:  # noqa: BLE001 - fail-open
            fail_open(error)


def hooked_class(store_class: type, hooks: type = OkrHooks) -> type:
    """`Okr<InnerStore>`: the inner store's class with the hooks in front; one per class."""
    with _hooked_classes_lock:
        if (store_class, hooks) not in _hooked_classes:
            hooked = type(f"Okr{store_class.__name__}", (hooks, store_class), {})
            _hooked_classes[(store_class, hooks)] = hooked
        return _hooked_classes[(store_class, hooks)]


def wrap_store(store: Any, inner_uri: str) -> Any:
    """Turn a freshly built inner store into its hooked subclass, in place.

    In a worker of `mlflow server` the keepers are durable (`unsettled.py`): a worker killed
    with pending KR updates leaves markers that the next one settles.
    """
    compat.swap_class(store, hooked_class(type(store)))
    store._okr_keepers = Keepers(inner_uri, durable=compat.in_server_worker())
    # The inner store built its async queue around its own `log_batch`; rebuild it around the
    # hooked one so async writes (`synchronous=False`, autologging) update KRs too.
    compat.rebuild_async_queue(store)
    atexit.register(_flush_at_exit, store)
    return store


def _flush_at_exit(store: Any) -> None:
    try:
        store.flush_async_logging()
    except Exception as error:  # noqa: BLE001 - fail-open
        fail_open(error)
    for keeper in store._okr_keepers.all():
        keeper.flush_at_exit()


def settle_at_exit(store: Any) -> None:
    """Settle what `store` has pending, as at process exit (a server worker that is stopping)."""
    if isinstance(store, OkrHooks):
        _flush_at_exit(store)


def build_tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    """The tracking store for `okr+<scheme>://rest`: the store for `<scheme>://rest`, hooked."""
    inner_uri = inner_uri_of(store_uri)
    builder = compat.tracking_store_builder(inner_uri)
    return wrap_store(builder(store_uri=inner_uri, artifact_uri=artifact_uri), inner_uri)


class OkrRegistryHooks:
    """Mixed in before the inner registry store's class: an alias move re-reads `model:` KRs."""

    _okr_keepers: Keepers

    def set_registered_model_alias(self, name, alias, version):
        result = super().set_registered_model_alias(name, alias, version)
        self._okr_keepers.current().model_changed(name)
        return result

    def delete_registered_model_alias(self, name, alias):
        result = super().delete_registered_model_alias(name, alias)
        self._okr_keepers.current().model_changed(name)
        return result

    def delete_model_version(self, name, version):
        result = super().delete_model_version(name, version)
        self._okr_keepers.current().model_changed(name)
        return result


def build_registry_store(store_uri: str, tracking_uri: str | None = None) -> Any:
    """The model registry store for `okr+<scheme>://rest`: MLflow's own for `<scheme>://rest`,
    hooked so that alias moves update the KRs that follow them."""
    inner_uri = inner_uri_of(store_uri)
    builder = compat.registry_store_builder(inner_uri)
    # As MLflow's registry does: not every registry store takes a tracking URI.
    if "tracking_uri" in inspect.signature(builder).parameters:
        store = builder(store_uri=inner_uri, tracking_uri=state.strip_plugin_scheme(tracking_uri))
    else:
        store = builder(store_uri=inner_uri)
    # The KRs live in the tracking store (usually the same database or server): settled there.
    tracking_inner = state.strip_plugin_scheme(tracking_uri) or inner_uri
    keepers = Keepers(tracking_inner, durable=compat.in_server_worker())
    atexit.register(_flush_keepers_at_exit, keepers)
    return wrap_registry_store(store, keepers)


def wrap_registry_store(store: Any, keepers: Keepers) -> Any:
    """Turn a freshly built model registry store into its hooked subclass, in place; its alias
    moves are noted by `keepers` (in a server, the tracking store's, so one writer settles both)."""
    compat.swap_class(store, hooked_class(type(store), OkrRegistryHooks))
    store._okr_keepers = keepers
    return store


def _flush_keepers_at_exit(keepers: Keepers) -> None:
    for keeper in keepers.all():
        keeper.flush_at_exit()


def flush(store: Any | None = None) -> None:
    """Settle pending live KR updates of `store` (default: the current tracking store)."""
    if store is None:
        store = compat.current_tracking_store()
    if isinstance(store, OkrHooks):
        store.flush_okr()
