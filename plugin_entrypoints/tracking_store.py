"""Entry point of the `okr+<scheme>://` tracking stores (mlflow.tracking_store)."""


def okr_tracking_store(store_uri, artifact_uri=None):
    from mlflow_okr.store import build_tracking_store

    return build_tracking_store(store_uri, artifact_uri)
