"""Dataset-pinned KRs (`dataset: {name, digest?}`): only values logged against that dataset count.

MLflow 3 keeps a metric's dataset (`log_metric(..., dataset=..., model_id=...)`) on the logged
model's metrics; the run's own metric is the latest value whatever the dataset. A pinned KR reads
the logged models of its experiments once per pass (`search_logged_models`), keeps each run's
latest value for the pinned dataset, and gives the engine that value: a run whose values all came
from other datasets is excluded with that reason. More than one digest of the dataset in the cycle
means the evaluation data changed under the KR, which its notes say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow_okr.engine import ReasonKind, RunFacts, RunRule, Verdict, classify_run

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mlflow_okr.spec import DatasetRef

PAGE_SIZE = 1000


@dataclass
class DatasetValues:
    """A pinned KR's values per run: for its dataset, and which other datasets each run has values for."""

    dataset: DatasetRef
    values: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # run -> (step, time, value)
    others: dict[str, set[str]] = field(default_factory=dict)  # run -> other dataset names
    digests: dict[str, int] = field(default_factory=dict)  # digest of the pinned name -> first seen (ms)

    def offer(self, run_id: str, metric: Any) -> None:
        name, digest = metric.dataset_name, metric.dataset_digest
        if name == self.dataset.name and (self.dataset.digest is None or digest == self.dataset.digest):
            order = (metric.step or 0, metric.timestamp or 0)
            if run_id not in self.values or order >= self.values[run_id][:2]:
                self.values[run_id] = (*order, metric.value)
            if digest:
                when = metric.timestamp or 0
                self.digests[digest] = min(self.digests.get(digest, when), when)
        else:
            self.others.setdefault(run_id, set()).add(name or "(no dataset)")

    def verdict(self, rule: RunRule, facts: RunFacts) -> Verdict | None:
        """The run's verdict on its value for the pinned dataset; excluded when it has only others'."""
        if facts.run_id in self.values:
            metrics = {**facts.metrics, rule.metric: self.values[facts.run_id][2]}
            pinned = RunFacts(facts.run_id, facts.start_time, facts.status, metrics, facts.deleted)
            return classify_run(rule, pinned)
        if facts.deleted or rule.metric not in facts.metrics:
            return None
        others = sorted(self.others.get(facts.run_id, set())) or ["(no dataset)"]
        return Verdict(
            "excluded",
            f"{rule.metric} logged only for dataset {', '.join(others)}, not {self.dataset.name}",
            None,
            ReasonKind.OTHER_DATASET,
        )

    def changed_note(self, start_ms: int, end_ms: int) -> str | None:
        """`evaluation data changed: ...` when the dataset had several digests within the cycle."""
        if self.dataset.digest is not None or len(self.digests) < 2:
            return None
        if not any(start_ms <= first <= end_ms for first in self.digests.values()):
            return None
        listed = ", ".join(digest[:8] for digest in sorted(self.digests, key=self.digests.__getitem__))
        name = self.dataset.name
        return f"evaluation data changed: dataset {name} has {len(self.digests)} digests ({listed})"


def dataset_values(
    client: MlflowClient, experiment_ids: list[str], metric: str, dataset: DatasetRef
) -> DatasetValues:
    """Every run's values of `metric` for `dataset`, read from the experiments' logged models."""
    found = DatasetValues(dataset)
    if not experiment_ids:
        return found
    token = None
    while True:
        page = client.search_logged_models(experiment_ids, max_results=PAGE_SIZE, page_token=token)
        for model in page:
            for logged in model.metrics or []:
                if logged.key == metric:
                    run_id = getattr(logged, "run_id", None) or model.source_run_id
                    if run_id:
                        found.offer(run_id, logged)
        token = page.token
        if not token:
            return found


def latest_for(metrics: list[Any], metric: str, dataset: DatasetRef | None) -> float | None:
    """The latest value of `metric` among a logged model's metrics (for `dataset`, when pinned)."""
    best: tuple[int, int, float] | None = None
    for logged in metrics:
        if logged.key != metric:
            continue
        wrong_digest = dataset is not None and dataset.digest and logged.dataset_digest != dataset.digest
        if dataset is not None and (logged.dataset_name != dataset.name or wrong_digest):
            continue
        order = (logged.step or 0, logged.timestamp or 0)
        if best is None or order >= best[:2]:
            best = (*order, logged.value)
    return best[2] if best else None
