"""Real MLflow clients through an okr+ URI: autologging, the model registry and MLflow's CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import vocabulary
from tests.live_fixtures import EXPERIMENT, assert_no_drift, kr_run, live_spec_text, publish, use_okr_uri

AUTOLOG_KR = textwrap.indent(
    textwrap.dedent(
        """
        - id: train-acc
          metric: training_accuracy_score
          experiments: ["train-*"]
          baseline: 0.5
          target: 1.0
        """
    ),
    " " * 6,
)


@pytest.fixture
def okr_uri(tracking_uri: str) -> str:
    publish(tracking_uri, live_spec_text() + AUTOLOG_KR.lstrip("\n"))
    uri = use_okr_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def _iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


def test_sklearn_autolog_updates_a_kr(okr_uri: str, client: MlflowClient) -> None:
    from sklearn.linear_model import LogisticRegression

    features, labels = _iris()
    mlflow.sklearn.autolog(log_models=False, log_datasets=False, silent=True)
    try:
        with mlflow.start_run() as run:
            LogisticRegression(max_iter=300).fit(features, labels)
    finally:
        mlflow.sklearn.autolog(disable=True)
    accuracy = client.get_run(run.info.run_id).data.metrics["training_accuracy_score"]
    kr = kr_run(client, "train-acc")
    assert kr.data.metrics[vocabulary.METRIC_VALUE] == accuracy
    assert kr.data.tags[vocabulary.TAG_BEST_RUN] == run.info.run_id
    assert client.get_run(run.info.run_id).data.tags["okr.kr.train-acc"] == "counted"
    assert_no_drift(client)


def test_register_model_through_an_okr_uri(okr_uri: str, tracking_uri: str, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    features, labels = _iris()
    with mlflow.start_run() as run:
        model = mlflow.sklearn.log_model(LogisticRegression(max_iter=300).fit(features, labels), name="model")
    version = mlflow.register_model(model.model_uri, "okr-model")
    assert int(version.version) == 1
    stored = MlflowClient(tracking_uri).get_model_version("okr-model", "1")
    assert stored.run_id == run.info.run_id


def _mlflow_cli(okr_uri: str, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": okr_uri}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_mlflows_own_cli_through_an_okr_uri(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run(run_name="cli-visible") as run:
        mlflow.log_metrics({"val_acc": 0.8, "latency": 3})
    experiments = _mlflow_cli(okr_uri, "experiments", "search")
    assert EXPERIMENT in experiments and "okr/live" in experiments
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = _mlflow_cli(okr_uri, "runs", "list", "--experiment-id", experiment_id)
    assert run.info.run_id in runs and "cli-visible" in runs
