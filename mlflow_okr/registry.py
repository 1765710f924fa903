"""KRs that follow a registry alias (`model: {name, alias}`): the deployed model's value, not the
best of every experiment.

The alias picks one run: the run behind the model version that holds the alias now. Its value is
the KR metric of that version's logged model when MLflow 3 logged the metric with its `model_id`,
else the run's (what the UI shows). The engine gives that one run its verdict (guardrails and
maintain bounds hold as for any run) and scores it, so `sync`, `status` and the live store agree.
Each change of the version behind the alias is recorded on the KR run (`promotions`), since
MLflow keeps only where an alias points now.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from mlflow_okr import compat, vocabulary
from mlflow_okr.datasets import latest_for
from mlflow_okr.engine import RunFacts, Tally, classify_run

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from mlflow_okr.spec import KeyResult

MAX_PROMOTIONS = 50  # kept on the KR run; older ones fall off the front


class Promotion(BaseModel):
    """The alias came to point at `version` (None: the alias was removed) at `when` (ms)."""

    version: str | None = None
    run_id: str | None = None
    when: int


class ModelStatus(BaseModel):
    """Where a KR's alias points now, and where it pointed before, oldest first."""

    name: str
    alias: str
    version: str | None = None
    run_id: str | None = None
    promotions: list[Promotion] = []


@dataclass(frozen=True)
class AliasTarget:
    """The model version behind an alias now (version None: the alias does not exist yet)."""

    name: str
    alias: str
    version: str | None = None
    run_id: str | None = None
    model_id: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.alias}"


def alias_target(client: MlflowClient, name: str, alias: str) -> AliasTarget:
    """The version `name@alias` names now, read from the registry."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return AliasTarget(name, alias)
        raise
    # MLflow's SQL registry keeps a version's logged model only in its `models:/<model_id>` source.
    model_id = getattr(version, "model_id", None) or compat.logged_model_id_of_source(version.source)
    return AliasTarget(name, alias, str(version.version), version.run_id or None, model_id)


def model_metrics(client: MlflowClient, target: AliasTarget) -> dict[str, float]:
    """The latest value of each metric logged with the version's `model_id` (by step, then time)."""
    if target.model_id is None:
        return {}
    try:
        logged = client.get_logged_model(target.model_id)
    except MlflowException:
        return {}
    latest: dict[str, tuple[int, int, float]] = {}
    for metric in logged.metrics or []:
        order = (metric.step or 0, metric.timestamp or 0)
        if metric.key not in latest or order >= latest[metric.key][:2]:
            latest[metric.key] = (*order, metric.value)
    return {key: value for key, (_, _, value) in latest.items()}


def dataset_value(client: MlflowClient, target: AliasTarget, metric: str, dataset: Any) -> float | None:
    """The latest `metric` logged with the version's `model_id` against `dataset`."""
    if target.model_id is None:
        return None
    try:
        logged = client.get_logged_model(target.model_id)
    except MlflowException:
        return None
    return latest_for(logged.metrics or [], metric, dataset)


def model_tally(
    client: MlflowClient, kr: KeyResult, direction: Any
) -> tuple[Tally, AliasTarget, list[str]]:
    """The tally of a `model:` KR: the one run behind the alias, with notes on why it is empty."""
    assert kr.model is not None
    tally = Tally(kr.rule(), direction)
    target = alias_target(client, kr.model.name, kr.model.alias)
    if target.version is None:
        return tally, target, [f"alias {target.label} does not exist yet"]
    if target.run_id is None:
        return tally, target, [f"{target.label} (version {target.version}) was registered without a run"]
    try:
        run = client.get_run(target.run_id)
    except MlflowException:
        return tally, target, [f"the run of {target.label} (version {target.version}) cannot be read"]
    metrics = {**run.data.metrics, **model_metrics(client, target)}
    if kr.dataset is not None:  # only a value logged with the model against that dataset counts
        value = dataset_value(client, target, kr.metric, kr.dataset)
        if value is None:
            return tally, target, [
                f"{target.label} (version {target.version}) has no {kr.metric} for dataset {kr.dataset.name}"
            ]
        metrics[kr.metric] = value
    facts = RunFacts(
        run_id=run.info.run_id,
        start_time=run.info.start_time,
        status=run.info.status,
        metrics=metrics,
        deleted=run.info.lifecycle_stage == "deleted",
    )
    verdict = classify_run(kr.rule(), facts)
    if verdict is None:
        return tally, target, [f"the run of {target.label} (version {target.version}) has no {kr.metric}"]
    tally.note(run.info.run_id, verdict, run.info.start_time)
    notes = [] if verdict.state == "counted" else [f"{target.label}: {verdict.tag_value}"]
    return tally, target, notes


def recorded_promotions(run: Run) -> list[Promotion]:
    """The promotions saved on a KR run (none when the tag is missing or hand-edited)."""
    try:
        entries = json.loads(run.data.tags.get(vocabulary.TAG_PROMOTIONS, "[]"))
        return [Promotion.model_validate(entry) for entry in entries]
    except (ValueError, TypeError):
        return []


def stored_model(run: Run, kr: KeyResult) -> ModelStatus | None:
    """A `model:` KR's alias as its KR run stores it: the last promotion recorded is where it points."""
    if kr.model is None:
        return None
    promotions = recorded_promotions(run)
    last = promotions[-1] if promotions else Promotion(when=0)
    return ModelStatus(
        name=kr.model.name,
        alias=kr.model.alias,
        version=last.version,
        run_id=last.run_id,
        promotions=promotions,
    )


def current_model(target: AliasTarget) -> ModelStatus:
    return ModelStatus(name=target.name, alias=target.alias, version=target.version, run_id=target.run_id)


def with_promotions(run: Run, model: ModelStatus, now: dt.datetime) -> tuple[ModelStatus, dict[str, str]]:
    """`model` with its recorded promotions, plus this one when the alias points elsewhere than the
    last one recorded; and the promotions tag to write for it (empty when nothing moved)."""
    promotions = recorded_promotions(run)
    last = promotions[-1] if promotions else None
    if last is not None:
        moved = (last.version, last.run_id) != (model.version, model.run_id)
    else:
        moved = model.version is not None
    if not moved:  # the same version, or an alias that never existed: nothing was promoted
        return model.model_copy(update={"promotions": promotions}), {}
    promotions.append(Promotion(version=model.version, run_id=model.run_id, when=int(now.timestamp() * 1000)))
    promotions = promotions[-MAX_PROMOTIONS:]
    while True:
        text = json.dumps([p.model_dump() for p in promotions], separators=(",", ":"))
        if len(text) <= vocabulary.MAX_TAG_VALUE_LENGTH or len(promotions) == 1:
            return model.model_copy(update={"promotions": promotions}), {vocabulary.TAG_PROMOTIONS: text}
        promotions = promotions[1:]


def promotion_text(promotion: Promotion) -> str:
    """`version 3 (run 1a2b3c4d) on 2026-11-02 14:05 UTC`, or `removed on ...`."""
    when = dt.datetime.fromtimestamp(promotion.when / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if promotion.version is None:
        return f"alias removed on {when}"
    run = f" (run {promotion.run_id[:8]})" if promotion.run_id else ""
    return f"version {promotion.version}{run} on {when}"
