"""A small training script whose runs move the KRs of examples/okrs.yaml.

It trains a gradient-boosting regressor on scikit-learn's bundled diabetes data and logs, with
plain MLflow calls, the metrics the OKR spec looks at (`mape`, `p99_latency_ms`). Nothing in it
knows about OKRs: mlflow-okr reads the runs from the backend.

    export MLFLOW_TRACKING_URI=sqlite:///mlflow.db        # or okr+sqlite:///mlflow.db for live KRs
    mlflow-okr apply examples/okrs.yaml
    python examples/train.py --experiment forecast-gbm --n-estimators 200
    mlflow-okr sync && mlflow-okr status
"""

from __future__ import annotations

import argparse
import time

import mlflow
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import mean_absolute_percentage_error
from sklearn.model_selection import train_test_split


def p99_latency_ms(model: GradientBoostingRegressor, rows: np.ndarray, samples: int = 100) -> float:
    """The 99th percentile of single-row prediction time, in milliseconds."""
    timings = []
    for index in range(samples):
        started = time.perf_counter()
        model.predict(rows[index % len(rows)][None, :])
        timings.append(time.perf_counter() - started)
    return float(np.percentile(timings, 99) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="forecast-gbm", help="MLflow experiment name.")
    parser.add_argument("--n-estimators", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    args = parser.parse_args()

    features, labels = load_diabetes(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.25, random_state=0)

    mlflow.set_experiment(args.experiment)  # logs to MLFLOW_TRACKING_URI
    with mlflow.start_run(run_name=f"gbm-{args.n_estimators}x{args.max_depth}") as run:
        mlflow.set_tag("stage", "candidate")
        mlflow.log_params(vars(args))
        model = GradientBoostingRegressor(
            n_estimators=args.n_estimators,
            max_depth=args.max_depth,
            learning_rate=args.learning_rate,
            random_state=0,
        )
        model.fit(train_x, train_y)
        # MAPE as a percentage, the unit the spec's baseline (40.0) uses.
        mape = 100 * mean_absolute_percentage_error(test_y, model.predict(test_x))
        mlflow.log_metrics({"mape": mape, "p99_latency_ms": p99_latency_ms(model, test_x)})
    print(f"run {run.info.run_id}: mape={mape:.2f}%")


if __name__ == "__main__":
    main()
