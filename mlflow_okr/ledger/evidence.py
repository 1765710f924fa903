"""Reading a hypothesis's evidence runs: their values per arm, pairs by a param or tag."""

from __future__ import annotations

import math
import re

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.engine import NOT_COUNTED_RUN_STATUSES
from mlflow_okr.ledger.models import ARMS, Evidence, Hypothesis
from mlflow_okr.spec import KeyResult

RUN_IDS_PER_SEARCH = 100
PAIR_BY = re.compile(r"^(params|tags)\.(.+)$")


def evidence_runs(client: MlflowClient, hypothesis: Hypothesis) -> dict[str, Run]:
    """The active evidence runs by id, fetched a page of ids at a time rather than one by one."""
    by_experiment: dict[str, list[str]] = {}
    for item in hypothesis.evidence:
        by_experiment.setdefault(item.experiment_id, []).append(item.run_id)
    runs: dict[str, Run] = {}
    for experiment_id, run_ids in by_experiment.items():
        for start in range(0, len(run_ids), RUN_IDS_PER_SEARCH):
            quoted = ", ".join(f"'{run_id}'" for run_id in run_ids[start:start + RUN_IDS_PER_SEARCH])
            # Active runs only: a deleted run, or one removed from the backend, is no evidence.
            for run in state.iter_runs(client, [experiment_id], f"attributes.run_id IN ({quoted})"):
                runs[run.info.run_id] = run
    return runs


def usable_runs(client: MlflowClient, hypothesis: Hypothesis) -> list[tuple[Evidence, Run]]:
    """The evidence runs that can count: deleted, failed and killed runs left out."""
    runs = evidence_runs(client, hypothesis)
    return [
        (item, runs[item.run_id])
        for item in hypothesis.evidence
        if item.run_id in runs and runs[item.run_id].info.status not in NOT_COUNTED_RUN_STATUSES
    ]


def metric_value(run: Run, metric: str) -> float | None:
    """The run's latest value of `metric`, when it has a finite one."""
    value = run.data.metrics.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def arm_values(usable: list[tuple[Evidence, Run]], metric: str) -> dict[str, list[float]]:
    """Each arm's values of `metric` (latest value per run)."""
    values: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for item, run in usable:
        value = metric_value(run, metric)
        if value is not None:
            values[item.arm].append(value)
    return values


def pair_key(run: Run, pair_by: str) -> str | None:
    """The value of the param or tag `pair_by` ("params.seed", "tags.split") on `run`."""
    kind, name = PAIR_BY.match(pair_by).groups()  # type: ignore[union-attr]
    return (run.data.params if kind == "params" else run.data.tags).get(name)


def pairs(
    usable: list[tuple[Evidence, Run]], metric: str, pair_by: str
) -> tuple[list[tuple[float, float]], list[str]]:
    """(control, treatment) value pairs, one per shared `pair_by` value, and the runs left unpaired.

    Runs of one arm that share a value are averaged into that arm's side of the pair.
    """
    by_key: dict[str, dict[str, list[tuple[str, float]]]] = {}
    unpaired: list[str] = []
    for item, run in usable:
        value = metric_value(run, metric)
        if value is None:
            continue
        key = pair_key(run, pair_by)
        if key is None:
            unpaired.append(item.run_id)
            continue
        by_key.setdefault(key, {arm: [] for arm in ARMS})[item.arm].append((item.run_id, value))
    pairs = []
    for key in sorted(by_key):
        control, treatment = by_key[key]["control"], by_key[key]["treatment"]
        if control and treatment:
            pairs.append((math.fsum(v for _, v in control) / len(control),
                          math.fsum(v for _, v in treatment) / len(treatment)))
        else:
            unpaired += [run_id for run_id, _ in control + treatment]
    return pairs, sorted(unpaired)


def counted_values(client: MlflowClient, kr: KeyResult) -> list[float]:
    """The KR's metric on the runs counted for it (tag `okr.kr.<id>` = counted)."""
    assert kr.metric is not None
    experiment_ids = state.source_experiment_ids(client, kr.experiments)
    runs = state.iter_runs(client, experiment_ids, f"tags.`{vocabulary.source_tag(kr.id)}` = 'counted'")
    return [value for run in runs if (value := metric_value(run, kr.metric)) is not None]
