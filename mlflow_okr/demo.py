"""A real end-to-end example: scikit-learn models logged to an embedded SQLite MLflow store, scored as OKRs.

Three teams, one objective each: a product team screening tumours (breast cancer data), an
operations team keeping predictions fast and a form reader accurate (digits), and a research team
asking whether non-linear models forecast disease progression better (diabetes). Each KR counts
only the experiments whose models it is about. The research question is also a ledger hypothesis:
linear regression (control) against a random forest (treatment) on the same cross-validation
folds, evaluated and resolved, so the report and the board show the ledger. Every data set ships
with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow_okr import api, demo_serving, practice
from mlflow_okr.errors import InputError
from mlflow_okr.results import CycleStatus
from mlflow_okr.review import Review
from mlflow_okr.spec import load_spec
from mlflow_okr.vocabulary import OKR_SCHEME_PREFIX

STORE_FILE = "mlflow.db"
SPEC_FILE = "okrs.yaml"
ARTIFACTS_DIR = "mlartifacts"
LIVE_SCHEME = OKR_SCHEME_PREFIX + "sqlite"
LATENCY_SAMPLES = 60
SEED = 0
STUDY_EXPERIMENT = "demo-forecast-study"
STUDY_FOLDS = 5
HYPOTHESIS_ID = "forest-beats-linear"
REGRESSION_EXPERIMENTS = ("demo-forecast", STUDY_EXPERIMENT)

SPEC_TEMPLATE = """\
# The demo's OKRs: one product, one operational and one research objective.
version: 1
cycle: {cycle}
status_thresholds: {{on_track: 0.7, at_risk: 0.4}}
objectives:
  - id: trusted-screening
    title: Ship a tumour-screening model that clinicians can trust
    category: product
    owner: screening-team
    key_results:
      - id: recall
        title: Raise recall on malignant cases from 0.90 to 0.99 without hurting precision
        metric: val_recall
        measures: product                 # missed cancers: what the clinicians' workflow sees
        experiments: [demo-screening]
        baseline: 0.90
        target: 0.99
        guardrails:
          - {{metric: val_precision, min: 0.95}}
          - {{metric: p99_latency_ms, max: 50}}
      - id: f1-vs-first-model
        title: Beat the first model's F1 by 2%
        metric: val_f1
        experiments: [demo-screening]
        baseline: {{filter: "tags.role = 'baseline'", experiments: [demo-screening]}}
        target: "+2%"
      - id: champion-recall
        title: The model at @champion catches 97% of malignant cases
        metric: val_recall
        model: {{name: screener, alias: champion}}   # only the version that serves counts
        baseline: 0.90
        target: 0.97
      - id: clinician-csat
        title: Keep clinicians' rating of served screenings at 4/5 or above
        source: traces
        assessment: csat                   # feedback logged on each traced screening
        aggregation: avg
        experiments: [demo-serving]
        maintain: {{min: 4}}
  - id: fast-serving
    title: Keep predictions fast and reliable
    category: operational
    owner: platform-team
    key_results:
      - id: p99-latency
        title: Reduce the served classifiers' p99 single-prediction latency from 10 ms to 0.5 ms
        metric: p99_latency_ms
        unit: ms
        experiments: [demo-screening, demo-digits]
        filter: "tags.stage = 'candidate'"
        baseline: 10
        target: 0.5
      - id: reader-accuracy
        title: Keep the form reader's accuracy at or above 0.95
        metric: val_accuracy
        experiments: [demo-digits]
        maintain: {{min: 0.95}}
      - id: alerting-live
        title: Alerting on model drift is live
        source: manual
        target: 1
  - id: forecast-research
    title: Learn whether non-linear models forecast disease progression better
    category: research
    owner: research-team
    key_results:
      - id: forecast-mae
        title: Cut forecast MAE 10% below the linear baseline
        metric: val_mae
        experiments: [demo-forecast]
        baseline: {{filter: "tags.role = 'baseline'", experiments: [demo-forecast]}}
        target: "-10%"
        direction: minimize
      - id: validated-learnings
        title: Validate a forecasting hypothesis in the ledger
        source: ledger
        linked_to: forecast-mae
        target: 1
"""


@dataclass(frozen=True)
class Candidate:
    """One model to train and log: which experiment, what to call it, how to build it."""

    experiment: str
    name: str
    build: Callable[[], Any]
    tags: dict[str, str]
    threshold: float | None = None  # a decision threshold other than predict()'s, for recall


@dataclass
class DemoResult:
    """What the demo created and the cycle's status after the final sync."""

    directory: Path
    spec_path: Path
    store_uri: str
    logging_uri: str
    status: CycleStatus
    training_runs: int
    seconds: float
    effort: CycleStatus | None = None  # the status with effort and confidence (status --effort)
    review: Review | None = None  # the last 7 days: everything the demo just did

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {shlex.quote(self.store_uri)}"


def current_quarter(today: dt.date | None = None) -> str:
    """The quarter `today` falls in, e.g. 2026-Q4, so the demo's statuses are live."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return f"{today.year}-Q{(today.month - 1) // 3 + 1}"


def demo_spec(cycle: str | None = None) -> str:
    """The demo's okrs.yaml text for `cycle` (default: the current quarter)."""
    return SPEC_TEMPLATE.format(cycle=cycle or current_quarter())


def live_updates_available() -> bool:
    """True when the okr+sqlite tracking store is installed, so logged metrics move KRs at once."""
    return any(
        entry_point.name == LIVE_SCHEME
        for entry_point in metadata.entry_points(group="mlflow.tracking_store")
    )


def check_directory(directory: Path, force: bool) -> None:
    """Refuse to overwrite an earlier demo or a user's own files unless `force` is given."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a directory")
    if force:
        return
    existing = [name for name in (STORE_FILE, SPEC_FILE) if (directory / name).exists()]
    if existing:
        raise InputError(
            f"{directory.resolve()} already has {' and '.join(existing)}; the demo never overwrites "
            "data: let it replace them, or choose another directory",
            parameter="force",
        )


def run_demo(
    directory: str | Path = ".",
    force: bool = False,
    cycle: str | None = None,
    report: Callable[[str], None] | None = None,
) -> DemoResult:
    """Create a store and okrs.yaml in `directory`, train and log models, apply, sync; return the status."""
    started = time.perf_counter()
    say = report or (lambda message: None)
    directory = Path(directory)
    check_directory(directory, force)
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    for name in (STORE_FILE, SPEC_FILE):
        (directory / name).unlink(missing_ok=True)

    spec_path = directory / SPEC_FILE
    spec_path.write_text(demo_spec(cycle), encoding="utf-8")
    spec = load_spec(spec_path)
    store_uri = f"sqlite:///{directory / STORE_FILE}"
    # Through the okr+ store every logged metric updates its KRs as it arrives; the final sync
    # then finds nothing to repair. Without it, the sync computes the same state in one pass.
    logging_uri = OKR_SCHEME_PREFIX + store_uri if live_updates_available() else store_uri

    say(f"Publishing {spec_path.name} (cycle {spec.cycle.name}) to {store_uri}")
    api.apply_spec(spec, tracking_uri=store_uri)

    live = " (okr+ store: KRs update as metrics arrive)" if logging_uri != store_uri else ""
    say(f"Training scikit-learn models and logging them to MLflow{live}")
    with _tracking_uri(logging_uri):
        training_runs = _train_all(directory, say)

    api.checkin(
        "alerting-live", 1, note="Drift alerts wired to the on-call channel", tracking_uri=store_uri,
        cycle=spec.cycle.name, who="platform-team",
    )
    say("Registering the screening model and serving it: @champion, traced predictions, clinician feedback")
    with _tracking_uri(logging_uri):
        demo_serving.register_champion(logging_uri, _experiment_id("demo-screening", directory), say)
        demo_serving.serve(_experiment_id(demo_serving.SERVING_EXPERIMENT, directory), say)
    say("Testing a hypothesis in the ledger: does a random forest forecast better than linear regression?")
    with _tracking_uri(logging_uri):
        arms = _train_study(directory)
    training_runs += sum(len(runs) for runs in arms.values())
    verdict = _record_hypothesis(store_uri, arms)
    say(f"  {HYPOTHESIS_ID}: {verdict}, {STUDY_FOLDS} folds per arm (mlflow-okr ledger show {HYPOTHESIS_ID})")
    result = api.sync(tracking_uri=store_uri, cycle=spec.cycle.name)
    return DemoResult(
        directory=directory,
        spec_path=spec_path,
        store_uri=store_uri,
        logging_uri=logging_uri,
        status=result.status,
        training_runs=training_runs,
        seconds=time.perf_counter() - started,
        effort=practice.effort_status(tracking_uri=store_uri, cycle=spec.cycle.name),
        review=practice.weekly_review("7d", tracking_uri=store_uri, cycle=spec.cycle.name),
    )


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for the block, then restore what the caller had."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


# ---------------------------------------------------------------------------------------------
# Training


def _candidates() -> list[Candidate]:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    def scaled(model: Any) -> Callable[[], Any]:
        return lambda: make_pipeline(StandardScaler(), model)

    candidate = {"stage": "candidate"}
    return [
        Candidate("demo-screening", "logistic-regression", scaled(LogisticRegression(max_iter=1000)),
                  {"role": "baseline", **candidate}),
        Candidate("demo-screening", "random-forest",
                  lambda: RandomForestClassifier(n_estimators=30, random_state=SEED), candidate),
        Candidate("demo-screening", "gradient-boosting",
                  lambda: GradientBoostingClassifier(random_state=SEED), candidate),
        Candidate("demo-screening", "svc-rbf", scaled(SVC(random_state=SEED)), candidate),
        # Chasing recall with a low threshold costs precision: the guardrail keeps it out of the KR.
        Candidate("demo-screening", "logistic-regression-threshold-0.3",
                  scaled(LogisticRegression(max_iter=1000)), {"stage": "experiment"}, threshold=0.3),
        Candidate("demo-digits", "logistic-regression", scaled(LogisticRegression(max_iter=1000)), candidate),
        Candidate("demo-digits", "svc-rbf", scaled(SVC(random_state=SEED)), candidate),
        Candidate("demo-forecast", "linear-regression", lambda: LinearRegression(),
                  {"role": "baseline", **candidate}),
        Candidate("demo-forecast", "ridge", lambda: Ridge(alpha=0.1), candidate),
        Candidate("demo-forecast", "random-forest",
                  lambda: RandomForestRegressor(n_estimators=50, min_samples_leaf=5, random_state=SEED),
                  {"stage": "experiment"}),
    ]


def _datasets() -> dict[str, tuple[str, Any]]:
    """Experiment name -> (data set name, loader); all bundled with scikit-learn."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

    return {
        "demo-screening": ("breast_cancer", load_breast_cancer),
        "demo-digits": ("digits", load_digits),
        "demo-forecast": ("diabetes", load_diabetes),
    }


def _train_all(directory: Path, say: Callable[[str], None]) -> int:
    import mlflow
    from sklearn.model_selection import train_test_split

    datasets = _datasets()
    splits = {}
    for experiment, (_, loader) in datasets.items():
        features, labels = loader(return_X_y=True)
        stratify = labels if experiment != "demo-forecast" else None
        splits[experiment] = train_test_split(
            features, labels, test_size=0.25, random_state=SEED, stratify=stratify
        )
    experiment_ids = {name: _experiment_id(name, directory) for name in datasets}
    candidates = _candidates()
    for candidate in candidates:
        train_x, test_x, train_y, test_y = splits[candidate.experiment]
        with mlflow.start_run(experiment_id=experiment_ids[candidate.experiment], run_name=candidate.name):
            mlflow.set_tags({**candidate.tags, "dataset": datasets[candidate.experiment][0]})
            model = candidate.build()
            mlflow.log_params(_params(model, candidate))
            fit_started = time.perf_counter()
            model.fit(train_x, train_y)
            metrics = {"train_seconds": time.perf_counter() - fit_started}
            metrics.update(_quality(model, candidate, test_x, test_y))
            metrics["p99_latency_ms"] = _p99_latency_ms(model, test_x)
            mlflow.log_metrics(metrics)
        say(f"  {candidate.experiment:<15} {candidate.name:<34} " + _headline(metrics))
    return len(candidates)


def _train_study(directory: Path) -> dict[str, list[str]]:
    """Linear regression and a random forest on the same folds: the hypothesis's control and treatment."""
    import mlflow
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import KFold

    features, labels = load_diabetes(return_X_y=True)
    experiment_id = _experiment_id(STUDY_EXPERIMENT, directory)
    arms = {"control": [], "treatment": []}
    folds = KFold(n_splits=STUDY_FOLDS, shuffle=True, random_state=SEED).split(features)
    for fold, (train, test) in enumerate(folds):
        for arm, candidate in (("control", _study_models()[0]), ("treatment", _study_models()[1])):
            name = f"{candidate.name}-fold-{fold}"
            with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
                mlflow.set_tags({**candidate.tags, "dataset": "diabetes", "fold": str(fold)})
                model = candidate.build()
                mlflow.log_params(_params(model, candidate))
                model.fit(features[train], labels[train])
                mlflow.log_metrics(_quality(model, candidate, features[test], labels[test]))
            arms[arm].append(run.info.run_id)
    return arms


def _study_models() -> tuple[Candidate, Candidate]:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    study = {"stage": "study"}
    return (
        Candidate(STUDY_EXPERIMENT, "linear-regression", lambda: LinearRegression(), study),
        Candidate(
            STUDY_EXPERIMENT, "random-forest",
            lambda: RandomForestRegressor(n_estimators=50, min_samples_leaf=5, random_state=SEED), study,
        ),
    )


def _record_hypothesis(store_uri: str, arms: dict[str, list[str]]) -> str:
    """Add the hypothesis, link both arms, evaluate, and resolve it as the evaluation suggests."""
    from mlflow_okr import ledger

    ledger.add_hypothesis(
        "A random forest forecasts disease progression with a lower MAE than linear regression",
        hypothesis_id=HYPOTHESIS_ID, kr="forecast-mae", metric="val_mae", owner="research-team",
        tracking_uri=store_uri, who="research-team",
    )
    for arm, run_ids in arms.items():
        ledger.link_runs(HYPOTHESIS_ID, run_ids, arm=arm, tracking_uri=store_uri, who="research-team")
    evaluation = ledger.evaluate_hypothesis(HYPOTHESIS_ID, tracking_uri=store_uri)
    verdict = evaluation.suggested_verdict
    lesson = {
        "validated": "The forest's lower error holds across folds: keep non-linear models in play.",
        "invalidated": "No fold-robust gain over linear regression: spend the effort on features instead.",
        "inconclusive": "The folds disagree: more data is needed before choosing a model family.",
    }[verdict]
    ledger.resolve_hypothesis(HYPOTHESIS_ID, verdict, lesson, tracking_uri=store_uri, who="research-team")
    return verdict


def _experiment_id(name: str, directory: Path) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Artifacts stay inside the demo directory rather than wherever the command was started.
    return mlflow.create_experiment(name, artifact_location=(directory / ARTIFACTS_DIR / name).as_uri())


def _params(model: Any, candidate: Candidate) -> dict[str, Any]:
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    wanted = ("C", "alpha", "n_estimators", "max_depth", "min_samples_leaf", "kernel", "learning_rate")
    params = {key: value for key, value in estimator.get_params().items() if key in wanted}
    params["model"] = type(estimator).__name__
    if candidate.threshold is not None:
        params["threshold"] = candidate.threshold
    return params


def _quality(model: Any, candidate: Candidate, test_x: Any, test_y: Any) -> dict[str, float]:
    from sklearn import metrics

    if candidate.experiment in REGRESSION_EXPERIMENTS:
        predicted = model.predict(test_x)
        return {
            "val_mae": float(metrics.mean_absolute_error(test_y, predicted)),
            "val_rmse": float(metrics.mean_squared_error(test_y, predicted) ** 0.5),
            "val_r2": float(metrics.r2_score(test_y, predicted)),
        }
    if candidate.threshold is not None:
        predicted = (model.predict_proba(test_x)[:, 1] >= candidate.threshold).astype(int)
    else:
        predicted = model.predict(test_x)
    average = "binary" if candidate.experiment == "demo-screening" else "macro"
    return {
        "val_accuracy": float(metrics.accuracy_score(test_y, predicted)),
        "val_precision": float(metrics.precision_score(test_y, predicted, average=average)),
        "val_recall": float(metrics.recall_score(test_y, predicted, average=average)),
        "val_f1": float(metrics.f1_score(test_y, predicted, average=average)),
    }


def _p99_latency_ms(model: Any, test_x: Any) -> float:
    """The 99th percentile of single-row prediction time, measured, in milliseconds."""
    import numpy as np

    timings = []
    for index in range(LATENCY_SAMPLES):
        row = test_x[index % len(test_x)][None, :]
        started = time.perf_counter()
        model.predict(row)
        timings.append(time.perf_counter() - started)
    return float(np.percentile(timings, 99) * 1000)


def _headline(metrics: dict[str, float]) -> str:
    shown = ("val_recall", "val_precision", "val_accuracy", "val_mae", "p99_latency_ms")
    return "  ".join(f"{key}={metrics[key]:.3g}" for key in shown if key in metrics)
