"""Entry point of the `okr+<scheme>://` model registry stores (mlflow.model_registry_store)."""


def okr_registry_store(store_uri, tracking_uri=None):
    from mlflow_okr.store import build_registry_store

    return build_registry_store(store_uri, tracking_uri)
