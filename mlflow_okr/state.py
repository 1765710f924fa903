"""Where OKR state lives: MLflow experiments, runs, tags and metrics, read and written here.

`okr/<cycle>` holds one parent run per objective and one child run per KR. The spec is kept in
experiment tags; a KR's state is the metrics `okr.value`, `okr.progress`, `okr.score` logged over
time and the tags `okr.status`, `okr.best_run_id`, `okr.counted_runs`.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE  # noqa: F401 (for apply)

from mlflow_okr import vocabulary
from mlflow_okr.engine import RunRule, Tally
from mlflow_okr.errors import InputError, NotPublishedError
from mlflow_okr.spec import Cycle, KeyResult, Objective, OkrSpec

logger = logging.getLogger(__name__)

SPEC_PART_LENGTH = 15000
PAGE_SIZE = 1000


def strip_plugin_scheme(uri: str | None) -> str | None:
    """`okr+sqlite:///x.db` -> `sqlite:///x.db`: the CLI talks to the inner store directly.

    An `okr+` scheme that cannot be wrapped raises UnsupportedStoreUri, as the store would.
    """
    if vocabulary.has_okr_scheme(uri):
        from mlflow_okr.store.uris import inner_uri_of  # the store package imports this module

        return inner_uri_of(uri)
    return uri


def make_client(tracking_uri: str | None = None) -> MlflowClient:
    """A client for the inner store; MLFLOW_TRACKING_URI when `tracking_uri` is None."""
    from mlflow import get_tracking_uri

    return MlflowClient(tracking_uri=strip_plugin_scheme(tracking_uri or get_tracking_uri()))


def current_user() -> str:
    """Who is making a change: the MLflow credentials' user name, else the OS user."""
    import getpass

    from mlflow.utils.credentials import read_mlflow_creds

    try:
        username = read_mlflow_creds().username
    except Exception:
        username = None
    return username or getpass.getuser()


def now_ms() -> int:
    return int(time.time() * 1000)


def spec_hash(spec: OkrSpec) -> str:
    return hashlib.sha256(spec_json(spec).encode()).hexdigest()[:16]


def spec_json(spec: OkrSpec) -> str:
    return json.dumps(spec.model_dump(mode="json", exclude_none=True), sort_keys=True)


def kr_definition(kr: KeyResult) -> str:
    return json.dumps(kr.model_dump(mode="json", exclude_none=True), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# The published cycle


@dataclass
class PublishedCycle:
    """A spec as published in `okr/<cycle>`, with the MLflow run id of each objective and KR."""

    spec: OkrSpec
    experiment_id: str
    spec_hash: str
    objective_runs: dict[str, str] = field(default_factory=dict)
    kr_runs: dict[str, str] = field(default_factory=dict)
    retired_kr_runs: dict[str, str] = field(default_factory=dict)

    @property
    def cycle(self) -> Cycle:
        return self.spec.cycle

    @property
    def team(self) -> str | None:
        return self.spec.team

    @property
    def label(self) -> str:
        """`2026-Q4` for the unnamed set, `2026-Q4/team-a` for a team's."""
        return self.cycle.name + (f"/{self.team}" if self.team else "")

    def objective_of(self, kr_id: str) -> Objective:
        return next(o for o in self.spec.objectives if any(k.id == kr_id for k in o.key_results))


def _read_spec_tags(tags: dict[str, str], experiment_name: str = "okr/<cycle>") -> OkrSpec | None:
    try:
        parts = int(tags.get(vocabulary.TAG_SPEC_PARTS, "0") or 0)
        if parts == 0:
            return None
        text = "".join(tags.get(vocabulary.spec_part_tag(index), "") for index in range(parts))
        return OkrSpec.model_validate(json.loads(text))
    except ValueError as exc:  # hand-edited tags, or a spec published by another version
        first_line = str(exc).splitlines()[0]
        raise InputError(
            f"the spec stored in experiment {experiment_name!r} cannot be read ({first_line}); "
            "publish it again with `mlflow-okr apply okrs.yaml`"
        ) from None


def spec_tags(spec: OkrSpec) -> dict[str, str]:
    text = spec_json(spec)
    parts = [text[i:i + SPEC_PART_LENGTH] for i in range(0, len(text), SPEC_PART_LENGTH)]
    tags = {vocabulary.spec_part_tag(index): part for index, part in enumerate(parts)}
    tags[vocabulary.TAG_SPEC_PARTS] = str(len(parts))
    tags[vocabulary.TAG_SPEC_HASH] = spec_hash(spec)
    tags[vocabulary.TAG_CYCLE] = spec.cycle.name
    if spec.team:
        tags[vocabulary.TAG_TEAM] = spec.team
    tags[vocabulary.TAG_CYCLE_START] = spec.cycle.start.isoformat()
    tags[vocabulary.TAG_CYCLE_END] = spec.cycle.end.isoformat()
    return tags


def list_cycle_experiments(client: MlflowClient) -> list[Any]:
    """The active `okr/<cycle>` experiments (the ledger excluded)."""
    experiments = client.search_experiments(
        view_type=ViewType.ACTIVE_ONLY, filter_string=f"name LIKE '{vocabulary.OKR_EXPERIMENT_PREFIX}%'"
    )
    return [
        experiment
        for experiment in experiments
        if experiment.name != vocabulary.LEDGER_EXPERIMENT and vocabulary.TAG_SPEC_PARTS in experiment.tags
    ]


def published_specs(
    client: MlflowClient, cycle: str | None = None, team: str | None = None
) -> list[tuple[OkrSpec, Any]]:
    """Every published set's spec and experiment, optionally of one cycle and one team.

    `team=""` selects the unnamed sets only; None selects every set.
    """
    every = []
    for experiment in list_cycle_experiments(client):
        spec = _read_spec_tags(experiment.tags, experiment.name)
        if spec is not None:
            every.append((spec, experiment))
    specs = [spec for spec, _ in every]
    shared, inner = shared_kr_ids(specs), inner_cycles(specs)
    found = [
        (spec.sharing(shared[spec.cycle.name], inner[_cycle_key(spec.cycle)]), experiment)
        for spec, experiment in every
        if (cycle is None or spec.cycle.name == cycle) and (team is None or (spec.team or "") == team)
    ]
    return sorted(found, key=lambda item: (item[0].cycle.start, item[0].cycle.name, item[0].team or ""))


def shared_kr_ids(specs: list[OkrSpec]) -> dict[str, frozenset[str]]:
    """Per cycle name, its KR ids that a KR of another, overlapping cycle uses too (the sets of a
    name may publish different dates while a move of them is under way: any of them counts)."""
    from mlflow_okr.cycles import overlaps

    ids: dict[str, tuple[list[Cycle], set[str]]] = {}
    for spec in specs:
        cycles, kr_ids = ids.setdefault(spec.cycle.name, ([], set()))
        cycles.append(spec.cycle)
        kr_ids.update(kr.id for _, kr in spec.key_results())
    return {
        name: frozenset(
            kr_id
            for other, (other_cycles, other_ids) in ids.items()
            if other != name and any(overlaps(a, b) for a in cycles for b in other_cycles)
            for kr_id in own & other_ids
        )
        for name, (cycles, own) in ids.items()
    }


def _cycle_key(cycle: Cycle) -> tuple[str, dt.date, dt.date]:
    return cycle.name, cycle.start, cycle.end


def inner_cycles(specs: list[OkrSpec]) -> dict[tuple[str, dt.date, dt.date], tuple[Cycle, ...]]:
    """Per published cycle (name and dates), the other published cycles that overlap it and are
    inner to it, innermost first. Keyed by dates too: while the sets of a cycle move its dates,
    each set's own dates decide, so every set finds the same innermost cycle for a run."""
    from mlflow_okr.cycles import innermost_first, overlaps

    cycles = sorted({_cycle_key(spec.cycle): spec.cycle for spec in specs}.values(), key=innermost_first)
    return {
        _cycle_key(cycle): tuple(other for other in cycles[:index] if overlaps(cycle, other))
        for index, cycle in enumerate(cycles)
    }


def published_set(client: MlflowClient, spec: OkrSpec, experiment: Any) -> PublishedCycle:
    """A set found by `published_specs`, with the run id of each objective and KR."""
    return _with_run_ids(client, spec, experiment.experiment_id)


def published_sets(
    client: MlflowClient, cycle: str | None = None, team: str | None = None
) -> list[PublishedCycle]:
    """Every published set (with its run ids), optionally of one cycle and one team."""
    return [_with_run_ids(client, spec, e.experiment_id) for spec, e in published_specs(client, cycle, team)]


def nothing_published(cycle: str | None, team: str | None) -> NotPublishedError:
    if cycle is None and team is None:
        return NotPublishedError(
            "no OKR cycle is published in this MLflow backend; run `mlflow-okr apply okrs.yaml`"
        )
    if team is None:
        return NotPublishedError(
            f"cycle {cycle!r} is not published in this MLflow backend; run `mlflow-okr apply okrs.yaml` first"
        )
    where = f" of cycle {cycle!r}" if cycle else ""
    return NotPublishedError(
        f"team {team or '(unnamed)'!r} has no set{where} in this MLflow backend; "
        "run `mlflow-okr apply` with its okrs.yaml first"
    )


def current_sets(
    client: MlflowClient, cycle: str | None = None, team: str | None = None, now: float | None = None
) -> list[PublishedCycle]:
    """The sets of `cycle`, or of every cycle current at `now` (innermost first); raise if none."""
    from mlflow_okr.cycles import current

    found = published_specs(client, cycle, team)
    if not found:
        raise nothing_published(cycle, team)
    if cycle is None:
        moment = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.timezone.utc)
        found = current(found, moment, lambda item: item[0].cycle)
    return [_with_run_ids(client, spec, e.experiment_id) for spec, e in found]


def innermost_sets(
    client: MlflowClient, cycle: str | None = None, team: str | None = None, now: float | None = None
) -> list[PublishedCycle]:
    """The sets of `cycle`, or of the innermost cycle current at `now`; raise if none."""
    sets = current_sets(client, cycle, team, now)
    return [s for s in sets if s.cycle.name == sets[0].cycle.name]


def load_published(
    client: MlflowClient, cycle: str | None = None, now: float | None = None, team: str | None = None
) -> PublishedCycle:
    """One published set: of `cycle`, or of the innermost cycle current at `now`.

    A cycle with several sets needs `team` ("" is the unnamed set); see `current_sets` for all.
    """
    innermost = innermost_sets(client, cycle, team, now)
    if len(innermost) > 1:
        names = ", ".join(s.team or "(unnamed)" for s in innermost)
        raise InputError(f"cycle {innermost[0].cycle.name} has several sets ({names}); name the team")
    return innermost[0]


def find_set_of_kr(sets: list[PublishedCycle], kr_id: str) -> PublishedCycle:
    """The set whose spec has KR `kr_id` (KR ids are unique across a cycle's sets)."""
    for published in sets:
        if published.spec.find_key_result(kr_id) is not None:
            return published
    known = ", ".join(sorted(kr.id for s in sets for _, kr in s.spec.key_results())) or "none"
    cycles = ", ".join(sorted({s.cycle.name for s in sets}))
    raise InputError(f"unknown KR {kr_id!r} in cycle {cycles} (known: {known})")


def _with_run_ids(client: MlflowClient, spec: OkrSpec, experiment_id: str) -> PublishedCycle:
    published = PublishedCycle(spec=spec, experiment_id=experiment_id, spec_hash=spec_hash(spec))
    for run in iter_runs(client, [experiment_id], f"tags.`{vocabulary.TAG_ROLE}` != ''"):
        role = run.data.tags.get(vocabulary.TAG_ROLE)
        if role == vocabulary.ROLE_OBJECTIVE:
            published.objective_runs[run.data.tags[vocabulary.TAG_OBJECTIVE_ID]] = run.info.run_id
        elif role == vocabulary.ROLE_KR:
            kr_id = run.data.tags[vocabulary.TAG_KR_ID]
            if run.data.tags.get(vocabulary.TAG_RETIRED) == "true":
                published.retired_kr_runs[kr_id] = run.info.run_id
            else:
                published.kr_runs[kr_id] = run.info.run_id
    return published


def iter_runs(
    client: MlflowClient,
    experiment_ids: list[str],
    filter_string: str = "",
    view: int = ViewType.ACTIVE_ONLY,
    page_size: int | None = None,
) -> Iterator[Run]:
    """Every run that matches, one page at a time: never all runs in memory at once."""
    if not experiment_ids:
        return
    page_size = page_size or PAGE_SIZE  # read at call time, so PAGE_SIZE can be tuned
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=view,
            max_results=page_size,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def iter_experiments(client: MlflowClient, page_size: int = 1000) -> Iterator[Any]:
    """Every active experiment, one page at a time."""
    token = None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY, max_results=page_size, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def source_experiments(client: MlflowClient) -> list[Any]:
    """Every active experiment that is not an OKR one (`okr/...`): where source runs live."""
    return [e for e in iter_experiments(client) if not vocabulary.is_okr_experiment_name(e.name)]


def match_experiments(experiments: list[Any], patterns: list[str]) -> list[str]:
    """The ids of `experiments` matched by names, globs or ids; all of them when `patterns` is empty."""
    if not patterns:
        return [experiment.experiment_id for experiment in experiments]
    return [
        experiment.experiment_id
        for experiment in experiments
        if any(experiment.experiment_id == p or fnmatch.fnmatchcase(experiment.name, p) for p in patterns)
    ]


def source_experiment_ids(client: MlflowClient, patterns: list[str]) -> list[str]:
    """Experiment ids matched by names, globs or ids; all non-OKR experiments when empty."""
    return match_experiments(source_experiments(client), patterns)


# ---------------------------------------------------------------------------------------------
# Baselines, ledger counts and manual check-ins


def resolve_baseline(client: MlflowClient, kr: KeyResult) -> tuple[float | None, str | None]:
    """The KR's baseline value and, for a run baseline, the run it came from."""
    from mlflow_okr.spec import BaselineRef

    if not isinstance(kr.baseline, BaselineRef):
        return kr.baseline, None
    assert kr.metric is not None
    if kr.baseline.run_id is not None:
        try:
            run = client.get_run(kr.baseline.run_id)
        except MlflowException:
            return None, None
        value = run.data.metrics.get(kr.metric)
        return (value, run.info.run_id) if value is not None and math.isfinite(value) else (None, None)
    experiment_ids = source_experiment_ids(client, kr.baseline.experiments)
    # "-10%" means minimize even without `direction`, so the best baseline run is the lowest.
    _, direction = kr.resolve(None)
    # The engine's "best", with its run-id tie-break: every reader picks the same baseline run.
    best = Tally(RunRule(kr.metric), direction)
    for run in iter_runs(client, experiment_ids, kr.baseline.filter or ""):
        value = run.data.metrics.get(kr.metric)
        if value is not None and math.isfinite(value):
            best.add(run.info.run_id, value, run.info.start_time)
    return best.current()


def ledger_validated_count(
    client: MlflowClient, cycle: Cycle, linked_to: str | None, count_only: str | None = None
) -> int:
    """How many hypotheses were resolved `validated` during the cycle (optionally for one id).

    With `count_only="significant"`, only those whose Benjamini-Hochberg q-value across the cycle's
    evaluated hypotheses is at most alpha (`multiplicity`, the rule the ledger list and report use).
    """
    from mlflow_okr import multiplicity  # pure; the only use of it in this module

    experiment = client.get_experiment_by_name(vocabulary.LEDGER_EXPERIMENT)
    if experiment is None or experiment.lifecycle_stage != "active":
        return 0
    q_values: dict[str, float] = {}
    if count_only == "significant":
        rows = []
        for run in iter_runs(client, [experiment.experiment_id], f"tags.`{vocabulary.TAG_LEDGER_ID}` != ''"):
            tags = run.data.tags
            resolved_at = multiplicity.number(tags.get(vocabulary.TAG_LEDGER_RESOLVED_AT))
            evaluated_at = multiplicity.number(tags.get(vocabulary.TAG_LEDGER_EVALUATED_AT))
            moment = multiplicity.cycle_moment(
                int(resolved_at) if resolved_at else None, int(evaluated_at) if evaluated_at else None,
                run.info.start_time,
            )
            p_value = multiplicity.number(tags.get(vocabulary.TAG_LEDGER_VERDICT_P_VALUE))
            rows.append((tags[vocabulary.TAG_LEDGER_ID], moment, p_value))
        q_values = multiplicity.q_values(multiplicity.family(rows, cycle.contains))
    count = 0
    validated = f"tags.`{vocabulary.TAG_LEDGER_STATUS}` = 'validated'"
    for run in iter_runs(client, [experiment.experiment_id], validated):
        tags = run.data.tags
        resolved_at = tags.get(vocabulary.TAG_LEDGER_RESOLVED_AT)
        if not resolved_at or not cycle.contains(int(float(resolved_at))):
            continue
        linked = (tags.get(vocabulary.TAG_LEDGER_KR), tags.get(vocabulary.TAG_LEDGER_OBJECTIVE))
        if linked_to and linked_to not in linked:
            continue
        q_value = q_values.get(tags.get(vocabulary.TAG_LEDGER_ID, ""), 1.0)
        if count_only == "significant" and not multiplicity.significant(q_value):
            continue
        count += 1
    return count


def manual_checkin(run: Run) -> tuple[float | None, int]:
    """The latest checked-in value of a manual KR and how many check-ins it has had."""
    raw = run.data.tags.get(vocabulary.TAG_CHECKIN)
    if not raw:
        return None, 0
    checkin = vocabulary.read_checkin(raw)
    if checkin is not None:
        return checkin["value"], checkin["count"]
    # A hand-edited tag must not block sync; the next `checkin` replaces it.
    logger.warning(
        "run %s: tag %s is not a check-in record; treated as no check-in until the next "
        "`mlflow-okr checkin`",
        run.info.run_id,
        vocabulary.TAG_CHECKIN,
    )
    return None, 0


# The fields of a KR's recorded history, and the metric each is logged as
HISTORY_METRICS = {"value": vocabulary.METRIC_VALUE, "progress": vocabulary.METRIC_PROGRESS}


def kr_history(
    client: MlflowClient, kr_run_id: str, fields: tuple[str, ...] = ("value", "progress")
) -> dict[int, dict[str, float]]:
    """A KR run's recorded state over time: {timestamp ms: {field: value}}, oldest first."""
    points: dict[int, dict[str, float]] = {}
    for name in fields:
        for metric in client.get_metric_history(kr_run_id, HISTORY_METRICS[name]):
            points.setdefault(metric.timestamp, {})[name] = metric.value
    return dict(sorted(points.items()))


def kr_values(client: MlflowClient, kr_run_id: str) -> list[tuple[int, float]]:
    """A KR run's recorded values (okr.value), as (timestamp ms, value) in MLflow's order."""
    return [(m.timestamp, m.value) for m in client.get_metric_history(kr_run_id, vocabulary.METRIC_VALUE)]


def can_read_run(client: MlflowClient, run_id: str) -> bool:
    """Whether the caller's credentials may read run `run_id` (MLflow's auth decides, on a server)."""
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def find_kr_run(client: MlflowClient, published: PublishedCycle, kr_id: str) -> Run:
    if kr_id not in published.kr_runs:
        known = ", ".join(sorted(published.kr_runs)) or "none"
        raise InputError(f"unknown KR {kr_id!r} in cycle {published.cycle.name} (known: {known})")
    return client.get_run(published.kr_runs[kr_id])


def log_kr_state(
    client: MlflowClient,
    run_id: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    cycle: Cycle,
    timestamp_ms: int | None = None,
    stored: Run | None = None,
) -> None:
    """Write KR metrics and tags in one batch; the step is the day of the cycle.

    Day 1 is the cycle's first day (UTC) and 0 is before it starts, so MLflow's charts read
    "day 1 .. 92" for a quarter. Writes on the same day share a step and each stays in the history,
    ordered by timestamp; MLflow's latest value is the one with the highest (step, timestamp). With
    `stored` (the run as last read) the step never drops below one already stored, so a history
    logged with another scheme (0.1 logged seconds) keeps its latest value correct.
    """
    timestamp_ms = timestamp_ms or now_ms()
    step = (
        0 if timestamp_ms < cycle.start_ms else (timestamp_ms - cycle.start_ms) // vocabulary.MS_PER_DAY + 1
    )
    if stored is not None:
        stored_steps = [m.step for m in stored.data.to_proto().metrics if m.key in metrics]
        step = max([step, *stored_steps])
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, timestamp_ms, step) for key, value in metrics.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
        synchronous=True,
    )
