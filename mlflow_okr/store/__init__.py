"""Live KR updates: the `okr+<scheme>://` tracking store, its hooks and the run context."""

from mlflow_okr.store.hooks import OkrHooks, build_registry_store, build_tracking_store, flush

__all__ = ["OkrHooks", "build_registry_store", "build_tracking_store", "flush"]
