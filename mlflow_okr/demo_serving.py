"""The demo's production side: the screening model registered with `@champion`, and a traced
predict function whose clinician feedback drives a trace KR.

`mlflow-okr demo` calls these after training, through the same (okr+) tracking URI, so the
alias-following KR and the trace KR move as the alias is set and the feedback arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MODEL_NAME = "screener"
ALIAS = "champion"
SERVING_EXPERIMENT = "demo-serving"
PREDICTIONS = 300
# The registered versions, in order, by the screening run that trained them; the last is @champion.
VERSIONS = ("logistic-regression", "gradient-boosting")
FEEDBACK = "csat"  # 1-5: what a clinician thought of a screening


def register_champion(logging_uri: str, screening_experiment_id: str, say: Callable[[str], None]) -> str:
    """Register the screening runs of VERSIONS as versions of MODEL_NAME; @champion on the last."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=logging_uri, registry_uri=logging_uri)
    runs = {run.info.run_name: run.info.run_id for run in client.search_runs([screening_experiment_id])}
    client.create_registered_model(MODEL_NAME)
    version = ""
    for name in VERSIONS:
        source = f"runs:/{runs[name]}/model"
        version = client.create_model_version(MODEL_NAME, source, run_id=runs[name]).version
    client.set_registered_model_alias(MODEL_NAME, ALIAS, version)
    say(f"  {MODEL_NAME} versions 1-{version} registered; @{ALIAS} -> version {version} ({VERSIONS[-1]})")
    return str(version)


def serve(serving_experiment_id: str, say: Callable[[str], None]) -> int:
    """Call a traced predict function PREDICTIONS times; log a clinician's `csat` on each trace.

    The fluent API must already point at the demo's tracking URI.
    """
    import mlflow
    from mlflow.entities import AssessmentSource
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_breast_cancer(return_X_y=True)
    train = 400
    model: Any = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(features[:train], labels[:train])

    @mlflow.trace(name="screen")
    def predict(row: Any) -> int:
        return int(model.predict(row.reshape(1, -1))[0])

    mlflow.set_experiment(experiment_id=serving_experiment_id)
    served = []
    for index in range(PREDICTIONS):
        row = train + index % (len(labels) - train)
        predicted = predict(features[row])
        served.append((mlflow.get_last_active_trace_id(), predicted == labels[row]))
    mlflow.flush_trace_async_logging()  # traces are exported in the background
    clinician = AssessmentSource(source_type="HUMAN", source_id="clinician")
    for trace_id, correct in served:
        score = 5.0 if correct else 2.0
        mlflow.log_feedback(trace_id=trace_id, name=FEEDBACK, value=score, source=clinician)
    right = sum(correct for _, correct in served)
    say(f"  {PREDICTIONS} traced screenings in {SERVING_EXPERIMENT} ({right} right), {FEEDBACK} on each")
    return PREDICTIONS
