"""The live store's definitions: a spec applied while a process runs is picked up, and the writes
that process noted before it reloaded the definitions are counted too."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from mlflow_okr import vocabulary
from mlflow_okr.store import live
from tests.live_fixtures import EXPERIMENT, assert_no_drift, kr_run, publish


def test_writes_noted_before_a_new_spec_was_loaded_are_counted(
    tracking_uri: str, client: MlflowClient
) -> None:
    keeper = live.LiveKrs(tracking_uri)
    try:
        assert keeper.watched.cycles == {}  # loaded before the apply
        publish(tracking_uri)
        experiment_id = client.create_experiment(EXPERIMENT)
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "val_acc", 0.7)
        client.log_metric(run_id, "latency", 12)
        keeper.written(run_id, metric_keys=["val_acc", "latency"])  # as the hooks note a write
        assert keeper._marks.runs == {}  # looked up in the definitions of before the apply
        assert keeper.refresh() is True
        keeper.flush()
        assert kr_run(client, "acc").data.metrics[vocabulary.METRIC_VALUE] == 0.7
        assert client.get_run(run_id).data.tags["okr.kr.acc"] == "counted"
        assert_no_drift(client)
    finally:
        keeper.close()
