"""The report's data, read from the MLflow backend: status, best runs, breaches, history, ledger."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, computed_field

from mlflow_okr import mlflow_ui, state, traces, vocabulary
from mlflow_okr.confidence import with_confidence
from mlflow_okr.effort import with_effort
from mlflow_okr.engine import GUARDRAIL_TAG_PREFIX, SUCCESS_GRADE, ReasonKind, verdict_from_tag
from mlflow_okr.ledger.record import TrackRecord
from mlflow_okr.report.suggestions import NextCycle, next_cycle
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.sync import stored_cycle_status
from mlflow_okr.vocabulary import KrStatus

logger = logging.getLogger("mlflow_okr")

MAX_BREACHES_LISTED = 5
HEADLINE_STATUSES = (KrStatus.ACHIEVED, KrStatus.ON_TRACK, KrStatus.AT_RISK, KrStatus.OFF_TRACK)


class RunLink(BaseModel):
    """A source run as the report cites it: name, id, the KR metric's value and a UI link."""

    run_id: str
    name: str | None = None
    experiment_id: str
    value: float | None = None
    url: str | None = None
    reason: str | None = None


class HistoryPoint(BaseModel):
    """One recorded state of a KR: when, its value and its progress."""

    time: dt.datetime
    value: float | None = None
    progress: float | None = None


class KeyResultDetail(BaseModel):
    """What the report shows about a KR beyond its status: evidence and trend."""

    best_run: RunLink | None = None
    guardrail_breaches: list[RunLink] = []
    guardrail_breach_count: int = 0
    history: list[HistoryPoint] = []
    maintain_min: float | None = None
    maintain_max: float | None = None
    # A trace KR: how MLflow measures it (traces.describe).
    measures: str | None = None


class Hypothesis(BaseModel):
    """A ledger hypothesis resolved during the cycle, with its evidence."""

    id: str
    status: str
    statement: str | None = None
    learnings: str | None = None
    kr: str | None = None
    objective: str | None = None
    metric: str | None = None
    resolved_at: dt.datetime | None = None
    effect_size: float | None = None
    control_runs: int = 0
    treatment_runs: int = 0
    relative_effect: float | None = None
    p_value: float | None = None
    q_value: float | None = None  # Benjamini-Hochberg, across the cycle's evaluated hypotheses
    run_id: str
    url: str | None = None

    @computed_field
    @property
    def doubtful(self) -> bool:
        """Validated, yet its q-value is above alpha: among the cycle's tests it may be a false discovery."""
        from mlflow_okr.multiplicity import doubtful

        return doubtful(self.status, self.q_value)


class Report(BaseModel):
    """Everything the quarter-end report says; every output format renders this one object."""

    status: CycleStatus
    details: dict[str, KeyResultDetail]
    ledger: list[Hypothesis] | None = None
    track_record: TrackRecord | None = None
    next_cycle: NextCycle | None = None
    as_of: dt.datetime
    generated_at: dt.datetime
    ui_url: str | None = None
    success_grade: float = SUCCESS_GRADE

    def status_counts(self) -> dict[str, int]:
        """KR counts per status; the four headline statuses always present."""
        counts = {name: 0 for name in HEADLINE_STATUSES}
        counts.update(self.status.status_counts())
        return counts

    def hypotheses(self, status: str) -> list[Hypothesis]:
        return [h for h in self.ledger or [] if h.status == status]

    def hypothesis_groups(self) -> list[tuple[str, list[Hypothesis]]]:
        """(title, hypotheses) per verdict: validated and invalidated always, others when present."""
        statuses = ["validated", "invalidated"]
        statuses += sorted({h.status for h in self.ledger or []} - set(statuses))
        groups = [(status.capitalize(), self.hypotheses(status)) for status in statuses]
        return [(title, group) for title, group in groups if group or title in ("Validated", "Invalidated")]


def run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run, when the UI's base URL is known."""
    if not ui_url:
        return None
    # The same route as the MLflow UI descriptions: it opens in the classic runs view.
    return f"{ui_url.rstrip('/')}/{mlflow_ui.run_link(experiment_id, run_id)}"


def _run_link(run: Run, metric: str | None, ui_url: str | None, reason: str | None = None) -> RunLink:
    return RunLink(
        run_id=run.info.run_id,
        name=run.info.run_name,
        experiment_id=run.info.experiment_id,
        value=run.data.metrics.get(metric) if metric else None,
        url=run_url(ui_url, run.info.experiment_id, run.info.run_id),
        reason=reason,
    )


def best_run(client: MlflowClient, kr: KeyResultStatus, ui_url: str | None) -> RunLink | None:
    """The run that best represents the KR's current value."""
    if not kr.best_run_id:
        return None
    try:
        run = client.get_run(kr.best_run_id)
    except MlflowException:
        return None
    return _run_link(run, kr.metric, ui_url)


def _beats(value: float, reference: float | None, direction: str | None) -> bool:
    if reference is None:
        return True
    return value < reference if direction == "minimize" else value > reference


class BreachFinder:
    """Source runs excluded by a guardrail that would have moved their KR forward."""

    def __init__(self, client: MlflowClient, published: state.PublishedCycle, ui_url: str | None):
        self.client = client
        self.published = published
        self.ui_url = ui_url
        self._experiments: dict[tuple[str, ...], list[str]] = {}

    def _experiment_ids(self, patterns: list[str]) -> list[str]:
        key = tuple(patterns)
        if key not in self._experiments:
            self._experiments[key] = state.source_experiment_ids(self.client, patterns)
        return self._experiments[key]

    def find(self, kr: KeyResultStatus) -> tuple[list[RunLink], int]:
        """The best few breaching runs (best first) and how many there are in all."""
        spec_kr = self.published.spec.find_key_result(kr.id)
        if spec_kr is None or spec_kr.metric is None or not spec_kr.guardrails:
            return [], 0
        cycle = self.published.cycle
        tag = vocabulary.source_tag(self.published.spec.run_tag_id(kr.id))
        # The tag says which runs a guardrail excluded; the metric bound leaves only the runs that
        # would have beaten the current value, so a big store returns few rows.
        clauses = [
            f"tags.`{tag}` LIKE '{GUARDRAIL_TAG_PREFIX}%'",
            f"attributes.start_time >= {cycle.start_ms}",
            f"attributes.start_time <= {cycle.end_ms}",
        ]
        reference = kr.current if kr.current is not None else kr.baseline
        if reference is not None and kr.kind == "metric":
            operator = "<" if kr.direction == "minimize" else ">"
            clauses.append(f"metrics.`{spec_kr.metric}` {operator} {reference!r}")
        else:
            reference = None
        breaches = []
        for run in state.iter_runs(
            self.client, self._experiment_ids(spec_kr.experiments), " AND ".join(clauses)
        ):
            verdict = verdict_from_tag(run.data.tags.get(tag))
            value = run.data.metrics.get(spec_kr.metric)
            breach = verdict is not None and verdict.reason_kind is ReasonKind.GUARDRAIL_BREACH
            if not breach or value is None or not _beats(value, reference, kr.direction):
                continue
            assert verdict is not None
            breaches.append(_run_link(run, spec_kr.metric, self.ui_url, verdict.reason))
        breaches.sort(
            key=lambda link: -(link.value or 0) if kr.direction != "minimize" else (link.value or 0)
        )
        return breaches[:MAX_BREACHES_LISTED], len(breaches)


def history(client: MlflowClient, kr_run_id: str | None) -> list[HistoryPoint]:
    """The KR's recorded value and progress over time, from its okr.value/okr.progress metrics."""
    if not kr_run_id:
        return []
    return [
        HistoryPoint(time=dt.datetime.fromtimestamp(timestamp / 1000, dt.timezone.utc), **fields)
        for timestamp, fields in state.kr_history(client, kr_run_id).items()
    ]


def cycle_ledger(
    client: MlflowClient, published: state.PublishedCycle, ui_url: str | None
) -> tuple[list[Hypothesis] | None, TrackRecord | None]:
    """Hypotheses resolved during the cycle, oldest first, with q-values; and the cycle's track
    record. (None, None) when there is no ledger."""
    from mlflow_okr.ledger import store as ledger_store
    from mlflow_okr.ledger.record import track_record, with_q_values

    experiment = client.get_experiment_by_name(vocabulary.LEDGER_EXPERIMENT)
    if experiment is None or experiment.lifecycle_stage != "active":
        return None, None
    cycle = published.cycle
    loaded = with_q_values(_evaluated(client, ledger_store.load_all(client)), cycle.contains)
    record = track_record([h for h in loaded if cycle.contains(h.cycle_moment)], cycle.name)
    hypotheses = [_from_ledger(h, experiment.experiment_id, ui_url) for h in loaded]
    resolved = [
        h
        for h in hypotheses
        if h.resolved_at is not None and cycle.contains(int(h.resolved_at.timestamp() * 1000))
    ]
    return sorted(resolved, key=lambda h: (h.resolved_at, h.id)), record


def ledger_hypotheses(
    client: MlflowClient, published: state.PublishedCycle, ui_url: str | None
) -> list[Hypothesis] | None:
    """Hypotheses resolved during the cycle, oldest first; None when there is no ledger."""
    return cycle_ledger(client, published, ui_url)[0]


def _utc_from_ms(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(float(value)) / 1000, dt.timezone.utc)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# What a report's hypothesis takes from the ledger's flat row as it is
IDENTITY_FIELDS = ("id", "status", "statement", "kr", "objective", "control_runs", "treatment_runs")


def _from_ledger(hypothesis: Any, experiment_id: str, ui_url: str | None) -> Hypothesis:
    """A hypothesis as the ledger's own API replays it from its events."""
    evaluation = hypothesis.evaluation or {}
    run_id = hypothesis.run_id or ""
    row = hypothesis.identity()
    return Hypothesis(
        **{key: row[key] for key in IDENTITY_FIELDS},
        learnings=hypothesis.learning,
        metric=row["metric"] or evaluation.get("metric"),
        resolved_at=_utc_from_ms(hypothesis.resolved_at),
        effect_size=_number(evaluation.get("effect")),
        relative_effect=_number(evaluation.get("relative_effect")),
        p_value=_number(evaluation.get("p_value")),
        q_value=hypothesis.q_value,
        run_id=run_id,
        url=run_url(ui_url, hypothesis.experiment_id or experiment_id, run_id) if run_id else None,
    )


def _evaluated(client: MlflowClient, hypotheses: list[Any]) -> list[Any]:
    """Resolved hypotheses with evidence but no recorded evaluation, with the one `ledger evaluate` shows.

    The ledger records an evaluation only while a hypothesis is open, so one evaluated after its
    resolution would otherwise show no effect here. Closed hypotheses are never auto-linked, so
    this writes nothing.
    """
    from mlflow_okr.ledger.api import evaluate_hypothesis

    shown = []
    for hypothesis in hypotheses:
        has_arms = bool(hypothesis.arm_runs("control") and hypothesis.arm_runs("treatment"))
        if not hypothesis.is_open and not hypothesis.evaluation and has_arms:
            evaluation = evaluate_hypothesis(hypothesis.id, _tracking_uri(client), record=False)
            hypothesis = hypothesis.model_copy(update={"evaluation": evaluation.model_dump(mode="json")})
        shown.append(hypothesis)
    return shown


def _tracking_uri(client: MlflowClient) -> str:
    # `suggest` takes a URI, not a client.
    return client.tracking_uri


def build_report(
    client: MlflowClient,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    ui_url: str | None = None,
    team: str | None = None,
) -> Report:
    """Assemble the quarter-end report of `cycle` (default: the innermost current one) as of `now`,
    over every set of the cycle or `team`'s; parents of enclosing cycles show in the alignment."""
    now = now or dt.datetime.now(dt.timezone.utc)
    status = stored_cycle_status(client, cycle=cycle, now=now, team=team)
    # Beside each status its confidence, and where the cycle's effort went.
    status = with_effort(client, with_confidence(client, status, now), now)
    sets = state.current_sets(client, status.cycle.name, team, now.timestamp())
    published = sets[0]
    finders = {s.experiment_id: BreachFinder(client, s, ui_url) for s in sets}
    details = {}
    for kr in status.key_results():
        kr_set = state.find_set_of_kr(sets, kr.id)
        spec_kr = kr_set.spec.find_key_result(kr.id)
        breaches, breach_count = finders[kr_set.experiment_id].find(kr)
        details[kr.id] = KeyResultDetail(
            best_run=best_run(client, kr, ui_url),
            guardrail_breaches=breaches,
            guardrail_breach_count=breach_count,
            history=history(client, kr.run_id),
            maintain_min=spec_kr.maintain.min if spec_kr and spec_kr.maintain else None,
            maintain_max=spec_kr.maintain.max if spec_kr and spec_kr.maintain else None,
            measures=traces.describe(spec_kr) if spec_kr and spec_kr.source == "traces" else None,
        )
    ledger, record = cycle_ledger(client, published, ui_url)
    return Report(
        status=status,
        details=details,
        ledger=ledger,
        track_record=record,
        next_cycle=next_cycle(client, _tracking_uri(client), status.cycle.name, now, team),
        as_of=now,
        generated_at=dt.datetime.now(dt.timezone.utc),
        ui_url=ui_url,
    )
