"""The weekly review: what moved since a date, read from the KR history mlflow-okr already logs.

Each KR run holds its state over time as the metrics `okr.value` and `okr.progress` (a point only
when a value moves). For a window (since, until] the review reads, per KR:

- `from` / `to`: the last recorded value at or before `since` and at or before `until`;
- `transitions`: the statuses the KR passed through, the one rule (`engine.status_of`) applied to
  the recorded progress at each moment; between points progress is constant and only the elapsed
  fraction grows, so a slide from on-track to at-risk is dated where the line crosses it;
- `moved_by`: the runs that raised the KR's progress (effort's improving runs) that started in
  the window;
- `stale`: neither value nor progress moved in the window (an achieved KR is never stale);
- `below_line`: progress at `until` under the on-track line, on_track x elapsed fraction.

No new state: it reads the history, the run tags and the ledger.
"""

from __future__ import annotations

import datetime as dt
import math
import re

from mlflow.tracking import MlflowClient
from pydantic import BaseModel, Field

from mlflow_okr import state, vocabulary
from mlflow_okr.effort import improving_by_kr, metric_krs_of, read_effort_facts
from mlflow_okr.engine import GUARDRAIL_TAG_PREFIX, status_of, verdict_from_tag
from mlflow_okr.errors import InputError
from mlflow_okr.practice_results import Confidence, optional_field
from mlflow_okr.report.model import HistoryPoint, history, run_url
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.spec import Cycle, OkrSpec, as_utc
from mlflow_okr.vocabulary import KrStatus

DEFAULT_WINDOW = "7d"
MAX_MOVED_LISTED = 5  # runs named per KR in the md/html review; JSON lists every id
_RELATIVE = re.compile(r"^\s*(\d+)\s*([dw])\s*$")


class Transition(BaseModel):
    time: dt.datetime
    from_status: KrStatus = Field(alias="from")
    to_status: KrStatus = Field(alias="to")

    model_config = {"populate_by_name": True}


class MovedRun(BaseModel):
    """A run that moved its KR: for people, with name, person and a link."""

    run_id: str
    name: str | None = None
    user: str | None = None
    url: str | None = None


class CheckinNote(BaseModel):
    """A manual KR's check-in made in the window."""

    value: float
    who: str | None = None
    when: dt.datetime
    note: str | None = None


class KeyResultReview(BaseModel):
    id: str
    title: str | None = None
    objective: str
    kind: str
    unit: str | None = None
    from_value: float | None = Field(None, alias="from")
    to_value: float | None = Field(None, alias="to")
    delta: float | None = None
    progress_from: float | None = None
    progress_to: float | None = None
    status: KrStatus
    transitions: list[Transition] = []
    moved_by: list[str] = []
    moved_runs: list[MovedRun] = []
    stale: bool
    below_line: bool
    expected_progress: float
    confidence: Confidence | None = optional_field("Chance of reaching the target by the cycle's end.")
    checkin: CheckinNote | None = optional_field("A manual KR's check-in in the window.")
    guardrail_breaches: list[str] = []

    model_config = {"populate_by_name": True}


class HypothesisEvent(BaseModel):
    id: str
    event: str  # opened | resolved
    status: str
    time: dt.datetime


class Review(BaseModel):
    """`mlflow-okr review --format json` prints exactly this."""

    cycle: str
    since: dt.datetime
    until: dt.datetime
    has_history: bool
    key_results: list[KeyResultReview]
    hypotheses: list[HypothesisEvent] = []

    def dump(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)


def parse_since(text: str, until: dt.datetime) -> dt.datetime:
    """`7d`, `2w` before `until`, or a date (UTC midnight): the start of the review window."""
    match = _RELATIVE.match(text)
    if match:
        days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
        return until - dt.timedelta(days=days)
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"since {text!r} is neither a span such as 7d or 2w nor a date such as 2026-11-28"
        ) from None
    since = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    if since >= until:
        raise InputError(
            f"since {day} is not before the end of the review window ({until:%Y-%m-%d %H:%M} UTC)"
        )
    return since


def _ms(moment: dt.datetime) -> int:
    return int(as_utc(moment).timestamp() * 1000)


def _at(points: list[HistoryPoint], moment: dt.datetime, field: str) -> float | None:
    """The last recorded value of `field` at or before `moment`."""
    found = None
    for point in points:
        if point.time > moment:
            break
        if getattr(point, field) is not None:
            found = getattr(point, field)
    return found


def _status(
    spec: OkrSpec, kr: KeyResultStatus, points: list[HistoryPoint], moment: dt.datetime
) -> KrStatus:
    """The KR's status at `moment` from its recorded history, by the engine's one rule."""
    progress = _at(points, moment, "progress") or 0.0
    has_data = _at(points, moment, "value") is not None
    if kr.kind == "metric" and kr.baseline is None:
        has_data = False
    thresholds = spec.status_thresholds
    return status_of(
        progress, has_data, spec.cycle.elapsed(moment), spec.cycle.is_over(moment),
        thresholds.on_track, thresholds.at_risk,
    )


def _moments(
    spec: OkrSpec, points: list[HistoryPoint], since: dt.datetime, until: dt.datetime
) -> list[dt.datetime]:
    """Where the status may change in (since, until]: each recorded point, each crossing of the
    on-track and at-risk lines by the elapsed time at constant progress, the cycle's end."""
    cycle: Cycle = spec.cycle
    moments = {point.time for point in points if since < point.time <= until}
    span_ms = cycle.end_ms + 1 - cycle.start_ms
    edges = sorted([since, *moments, until])
    for start, end in zip(edges, edges[1:], strict=False):
        progress = _at(points, start, "progress") or 0.0
        for share in (spec.status_thresholds.on_track, spec.status_thresholds.at_risk):
            if share <= 0 or progress <= 0:
                continue
            # progress >= share x elapsed stops holding just after elapsed = progress / share.
            crossing_ms = cycle.start_ms + math.floor(progress / share * span_ms) + 1
            crossing = dt.datetime.fromtimestamp(crossing_ms / 1000, dt.timezone.utc)
            if start < crossing < end:
                moments.add(crossing)
    cycle_end = dt.datetime.fromtimestamp((cycle.end_ms + 1) / 1000, dt.timezone.utc)
    if since < cycle_end <= until:
        moments.add(cycle_end)
    return sorted(moments | {until})


def transitions(
    spec: OkrSpec, kr: KeyResultStatus, points: list[HistoryPoint], since: dt.datetime, until: dt.datetime
) -> list[Transition]:
    """The KR's status changes in (since, until], each dated where it happened."""
    found = []
    previous = _status(spec, kr, points, since)
    for moment in _moments(spec, points, since, until):
        current = _status(spec, kr, points, moment)
        if current != previous:
            found.append(Transition(time=moment, from_status=previous, to_status=current))
        previous = current
    return found


def _moved(
    client: MlflowClient, published: list[state.PublishedCycle], status: CycleStatus,
    since: dt.datetime, until: dt.datetime,
) -> dict[str, list[str]]:
    """Per metric KR, the improving runs that started in the window, in start order."""
    metric_krs = metric_krs_of(status, published)
    if not metric_krs:
        return {}
    cycle = published[0].cycle
    facts = read_effort_facts(client, cycle, until, metric_krs)
    improving = improving_by_kr(client, cycle, facts, metric_krs)
    window = range(_ms(since) + 1, _ms(until) + 1)
    return {
        item.kr.id: [run.run_id for run in improving[item.tag_id] if run.start_time in window]
        for item in metric_krs
    }


def _moved_runs(client: MlflowClient, run_ids: list[str], ui_url: str | None) -> list[MovedRun]:
    shown = []
    for run_id in run_ids[-MAX_MOVED_LISTED:]:
        run = client.get_run(run_id)
        shown.append(MovedRun(
            run_id=run_id, name=run.info.run_name, user=run.info.user_id,
            url=run_url(ui_url, run.info.experiment_id, run_id),
        ))
    return shown


def _checkin(
    client: MlflowClient, kr: KeyResultStatus, since: dt.datetime, until: dt.datetime
) -> CheckinNote | None:
    """The manual KR's latest check-in (the KR run's okr.checkin tag), if it was made in the window."""
    if kr.kind != "manual" or kr.run_id is None:
        return None
    record = vocabulary.read_checkin(client.get_run(kr.run_id).data.tags.get(vocabulary.TAG_CHECKIN))
    try:
        when = as_utc(dt.datetime.fromisoformat(str(record["when"]))) if record else None
    except ValueError:
        return None  # a hand-edited tag: `sync` and the next check-in deal with it
    if when is None or not since < when <= until:
        return None
    return CheckinNote(value=record["value"], who=record.get("who"), when=when, note=record.get("note"))


def _breaches(
    client: MlflowClient, published: state.PublishedCycle, kr_id: str, since: dt.datetime, until: dt.datetime
) -> list[str]:
    """Runs started in the window that a guardrail of the KR excluded (the engine's reason kind)."""
    kr = published.spec.find_key_result(kr_id)
    if kr is None or not kr.guardrails:
        return []
    tag = vocabulary.source_tag(published.spec.run_tag_id(kr_id))
    # The tag prefix narrows the search; the verdict's reason kind decides.
    clauses = (
        f"tags.`{tag}` LIKE '{GUARDRAIL_TAG_PREFIX}%'",
        f"attributes.start_time > {_ms(since)}",
        f"attributes.start_time <= {_ms(until)}",
    )
    experiment_ids = state.source_experiment_ids(client, kr.experiments)
    found = []
    for run in state.iter_runs(client, experiment_ids, " AND ".join(clauses)):
        verdict = verdict_from_tag(run.data.tags.get(tag))
        if verdict is not None and verdict.is_guardrail_breach:
            found.append((run.info.start_time, run.info.run_id))
    return [run_id for _, run_id in sorted(found)]


def _hypotheses(client: MlflowClient, since: dt.datetime, until: dt.datetime) -> list[HypothesisEvent]:
    from mlflow_okr.ledger import store as ledger_store

    if client.get_experiment_by_name(vocabulary.LEDGER_EXPERIMENT) is None:
        return []
    events = []
    for hypothesis in ledger_store.load_all(client):
        for event, moment in (("opened", hypothesis.created_at), ("resolved", hypothesis.resolved_at)):
            if moment is not None and _ms(since) < moment <= _ms(until):
                when = dt.datetime.fromtimestamp(moment / 1000, dt.timezone.utc)
                events.append(
                    HypothesisEvent(id=hypothesis.id, event=event, status=hypothesis.status, time=when)
                )
    return sorted(events, key=lambda e: (e.time, e.id, e.event))


def build_review(
    client: MlflowClient,
    status: CycleStatus,
    since: dt.datetime,
    until: dt.datetime,
    ui_url: str | None = None,
    confidences: dict[str, Confidence] | None = None,
) -> Review:
    """The review of `status`'s (innermost) cycle over (since, until]."""
    published = state.current_sets(client, status.cycle.name)
    moved = _moved(client, published, status, since, until)
    reviews, any_history = [], False
    for objective in status.objectives:
        for kr in objective.key_results:
            owner = next(s for s in published if s.spec.find_key_result(kr.id))
            spec = owner.spec
            points = history(client, kr.run_id)
            # Progress is logged at apply too (0); a value means a counted run or event.
            any_history = any_history or any(point.value is not None for point in points)
            before, after = _at(points, since, "value"), _at(points, until, "value")
            progress_before, progress_after = _at(points, since, "progress"), _at(points, until, "progress")
            expected = spec.status_thresholds.on_track * spec.cycle.elapsed(until)
            current = _status(spec, kr, points, until)
            unmoved = before == after and progress_before == progress_after
            below = current not in (KrStatus.ACHIEVED, KrStatus.MET) and (progress_after or 0.0) < expected
            run_ids = moved.get(kr.id, [])
            reviews.append(KeyResultReview(
                id=kr.id, title=kr.title, objective=objective.id, kind=kr.kind, unit=kr.unit,
                from_value=before, to_value=after,
                delta=None if before is None or after is None else after - before,
                progress_from=progress_before, progress_to=progress_after,
                status=current,
                transitions=transitions(spec, kr, points, since, until),
                moved_by=run_ids,
                moved_runs=_moved_runs(client, run_ids, ui_url),
                stale=current is not KrStatus.ACHIEVED and unmoved,
                below_line=below,
                expected_progress=expected,
                confidence=(confidences or {}).get(kr.id),
                checkin=_checkin(client, kr, since, until),
                guardrail_breaches=_breaches(client, owner, kr.id, since, until),
            ))
    return Review(
        cycle=status.cycle.name, since=since, until=until, has_history=any_history,
        key_results=reviews, hypotheses=_hypotheses(client, since, until),
    )


def post_review(client: MlflowClient, review: Review, team: str | None = None) -> dict[str, bool]:
    """Send the review to the webhooks of the cycle's sets (or `team`'s), as `notify` sends
    transitions; the result maps each webhook as it may be shown to whether it answered."""
    from mlflow_okr import notify
    from mlflow_okr.review_views import review_message

    text = review_message(review)
    results: dict[str, bool] = {}
    for published in state.current_sets(client, review.cycle, team):
        config = published.spec.notify
        if config is None:
            continue
        for webhook in config.webhooks:
            url = notify.resolve_webhook(webhook)
            results[notify.describe_webhook(webhook)] = bool(url) and notify.post(url, {"text": text})
    if not results:
        raise InputError(f"no set of cycle {review.cycle} configures notify.webhooks; nothing to post to")
    return results
