"""Reading and writing the `okr/ledger` experiment: one run per hypothesis, state in tags.

A hypothesis run holds its events in tags `okr.ledger.event.NNNNNN` (canonical JSON, written
once) and, derived from them, the state tags the UI and the ledger KRs read, and a markdown
description with the statement, evidence links and learnings. The client talks to the inner
store, and the live store skips `okr/*` experiments, so ledger writes never trigger OKR hooks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from mlflow.entities import Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from pydantic import ValidationError

from mlflow_okr import state
from mlflow_okr.errors import InputError, OkrError
from mlflow_okr.ledger.events import EVENT_TAG_PREFIX, event_tag, event_text, seal
from mlflow_okr.ledger.models import Event, Hypothesis, apply_event, replay

TAG_METRIC = "okr.ledger.metric"
TAG_EXPECT = "okr.ledger.expect"
TAG_OWNER = "okr.ledger.owner"
TAG_CONTROL_RUNS = "okr.ledger.runs.control"
TAG_TREATMENT_RUNS = "okr.ledger.runs.treatment"
TAG_SUGGESTED_VERDICT = "okr.ledger.suggested_verdict"
TAG_P_VALUE = "okr.ledger.p_value"
TAG_EFFECT = "okr.ledger.effect"
TAG_EVENT_COUNT = "okr.ledger.events"
TAG_HEAD = "okr.ledger.head"
LEDGER_TAG_PREFIX = "okr.ledger."
MAX_TAG_VALUE = 8000  # MLflow's limit on a tag value, the run description included
RESERVED_TAG_PREFIXES = ("okr.", "mlflow.")


def ledger_experiment_id(client: MlflowClient, create: bool = False) -> str | None:
    """The id of `okr/ledger`; created on first write, None on reads before that."""
    experiment = client.get_experiment_by_name(state.LEDGER_EXPERIMENT)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise InputError(
                f"experiment {state.LEDGER_EXPERIMENT!r} is deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`"
            )
        return experiment.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(
            state.LEDGER_EXPERIMENT, tags={"mlflow.note.content": "Hypotheses recorded by mlflow-okr ledger."}
        )
    except MlflowException:
        # Another writer created it first.
        experiment = client.get_experiment_by_name(state.LEDGER_EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def hypothesis_runs(client: MlflowClient, view: int = ViewType.ACTIVE_ONLY) -> Iterator[Run]:
    """Every hypothesis run of the ledger, oldest first."""
    experiment_id = ledger_experiment_id(client)
    if experiment_id is None:
        return iter(())
    runs = state.iter_runs(client, [experiment_id], f"tags.`{state.TAG_LEDGER_ID}` != ''", view=view)
    # Creation time, then id: the same order on every backend, so exports are byte-identical.
    return iter(sorted(runs, key=lambda run: (run.info.start_time or 0, run.data.tags[state.TAG_LEDGER_ID])))


def find_run(client: MlflowClient, hypothesis_id: str) -> Run | None:
    experiment_id = ledger_experiment_id(client)
    if experiment_id is None:
        return None
    quoted = hypothesis_id.replace("'", "''")
    matches = list(state.iter_runs(client, [experiment_id], f"tags.`{state.TAG_LEDGER_ID}` = '{quoted}'"))
    return matches[0] if matches else None


def event_tags(run: Run) -> list[tuple[str, str]]:
    """The run's event tags, in event-number order."""
    return sorted((key, value) for key, value in run.data.tags.items() if key.startswith(EVENT_TAG_PREFIX))


def parse_event(text: str) -> Event:
    """An event from its canonical JSON; ValueError when it is not one."""
    try:
        return Event.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def run_events(run: Run) -> list[Event]:
    """The events stored on a hypothesis run; OkrError when one is unreadable (see `verify`)."""
    events = []
    for key, value in event_tags(run):
        try:
            events.append(parse_event(value))
        except ValueError as exc:
            raise OkrError(f"ledger run {run.info.run_id}: tag {key} is not a readable event ({exc}); "
                           "run `mlflow-okr ledger verify`") from None
    return events


def hypothesis_from_run(run: Run) -> Hypothesis:
    events = run_events(run)
    if not events:
        raise OkrError(f"ledger run {run.info.run_id} has no events; run `mlflow-okr ledger verify`")
    hypothesis = replay(events)
    hypothesis.run_id = run.info.run_id
    hypothesis.experiment_id = run.info.experiment_id
    return hypothesis


def load(client: MlflowClient, hypothesis_id: str) -> Hypothesis:
    """The hypothesis with this id; InputError naming the known ids when there is none."""
    run = find_run(client, hypothesis_id)
    if run is None:
        known = sorted(r.data.tags[state.TAG_LEDGER_ID] for r in hypothesis_runs(client))
        import difflib

        close = difflib.get_close_matches(hypothesis_id, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known[:20]) or "none yet; add one with `mlflow-okr ledger add`"
        raise InputError(f"unknown hypothesis {hypothesis_id!r}{hint} (known: {listing})")
    return hypothesis_from_run(run)


def load_all(client: MlflowClient) -> list[Hypothesis]:
    return [hypothesis_from_run(run) for run in hypothesis_runs(client)]


# ---------------------------------------------------------------------------------------------
# What a hypothesis run shows


def state_tags(hypothesis: Hypothesis) -> dict[str, str]:
    """The tags a hypothesis run carries for its state: what the events say, nothing more."""
    tags = {
        state.TAG_LEDGER_ID: hypothesis.id,
        state.TAG_LEDGER_STATUS: hypothesis.status,
        TAG_CONTROL_RUNS: str(len(hypothesis.arm_runs("control"))),
        TAG_TREATMENT_RUNS: str(len(hypothesis.arm_runs("treatment"))),
        TAG_EVENT_COUNT: str(len(hypothesis.events)),
        TAG_HEAD: hypothesis.head,
    }
    optional = {
        state.TAG_LEDGER_KR: hypothesis.kr,
        state.TAG_LEDGER_OBJECTIVE: hypothesis.objective,
        state.TAG_LEDGER_RESOLVED_AT: str(hypothesis.resolved_at) if hypothesis.resolved_at else None,
        TAG_METRIC: hypothesis.metric,
        TAG_EXPECT: hypothesis.expect,
        TAG_OWNER: hypothesis.owner,
    }
    if hypothesis.evaluation:
        optional[TAG_SUGGESTED_VERDICT] = hypothesis.evaluation.get("suggested_verdict")
        for tag, key in ((TAG_P_VALUE, "p_value"), (TAG_EFFECT, "effect")):
            value = hypothesis.evaluation.get(key)
            optional[tag] = None if value is None else repr(float(value))
    tags.update({key: value for key, value in optional.items() if value})
    tags.update(hypothesis.tags)
    tags[MLFLOW_RUN_NOTE] = description(hypothesis)
    return tags


def run_link(experiment_id: str, run_id: str) -> str:
    """A markdown link to a run in the MLflow UI (relative, so it works on any server)."""
    return f"[{run_id}](#/experiments/{experiment_id}/runs/{run_id})"


def description(hypothesis: Hypothesis) -> str:
    """The run description: statement, what is linked and measured, learnings."""
    lines = [f"**Hypothesis `{hypothesis.id}`**: {hypothesis.statement}", ""]
    lines.append(f"Status: **{hypothesis.status}**")
    for label, value in (
        ("KR", hypothesis.kr),
        ("Objective", hypothesis.objective),
        ("Metric", f"`{hypothesis.metric}`" if hypothesis.metric else None),
        ("Expected effect", hypothesis.expect),
        ("Owner", hypothesis.owner),
    ):
        if value:
            lines.append(f"{label}: {value}")
    if hypothesis.learning:
        lines += ["", f"**Learning** ({hypothesis.status}): {hypothesis.learning}"]
    evaluation = hypothesis.evaluation
    if evaluation:
        lines += ["", f"Last evaluation: suggested **{evaluation.get('suggested_verdict')}**: "
                      f"{evaluation.get('reason', '')}"]
    tail = ["", f"History: {len(hypothesis.events)} events; `mlflow-okr ledger show {hypothesis.id}`."]
    budget = MAX_TAG_VALUE - len("\n".join(lines + tail)) - 200
    evidence_lines: list[str] = []
    ordered = sorted(hypothesis.evidence, key=lambda item: item.arm)  # control first
    for item in ordered:
        line = f"- {item.arm}: {run_link(item.experiment_id, item.run_id)}"
        budget -= len(line) + 1
        if budget < 0:
            evidence_lines.append(f"- ... more runs; `mlflow-okr ledger show {hypothesis.id}` lists all")
            break
        evidence_lines.append(line)
    if evidence_lines:
        lines += ["", "Evidence runs:", *evidence_lines]
    return "\n".join(lines + tail)[:MAX_TAG_VALUE]


# ---------------------------------------------------------------------------------------------
# Writing


def _check_fits(event: Event) -> str:
    text = event_text(event)
    if len(text) > MAX_TAG_VALUE:
        raise InputError(
            f"this {event.action} for hypothesis {event.hypothesis!r} is {len(text)} characters of JSON, "
            f"over MLflow's tag limit of {MAX_TAG_VALUE}; shorten the statement or note"
        )
    return text


def _write(client: MlflowClient, run_id: str, hypothesis: Hypothesis, new_events: list[Event]) -> None:
    tags = {event_tag(event.seq): _check_fits(event) for event in new_events}
    tags.update(state_tags(hypothesis))
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()], synchronous=True)


def create(
    client: MlflowClient, hypothesis_id: str, changes: dict[str, Any], who: str, when: int
) -> Hypothesis:
    """Start a hypothesis run with its `add` event; InputError when the id is taken."""
    if find_run(client, hypothesis_id) is not None:
        raise InputError(
            f"hypothesis {hypothesis_id!r} already exists; pick another --id or see "
            f"`mlflow-okr ledger show {hypothesis_id}`"
        )
    event = seal(hypothesis_id, 1, who, when, "add", changes, "")
    return create_from_events(client, [event])


def create_from_events(client: MlflowClient, events: list[Event]) -> Hypothesis:
    """A hypothesis run holding `events` (already chained), as `import` restores it."""
    for event in events:
        _check_fits(event)
    experiment_id = ledger_experiment_id(client, create=True)
    assert experiment_id is not None
    first = events[0]
    run = client.create_run(
        experiment_id,
        start_time=first.when,
        run_name=first.hypothesis,
        tags={state.TAG_LEDGER_ID: first.hypothesis},
    )
    hypothesis = replay(events)
    hypothesis.run_id, hypothesis.experiment_id = run.info.run_id, experiment_id
    _write(client, run.info.run_id, hypothesis, events)
    _end_if_resolved(client, hypothesis)
    return hypothesis


def append(
    client: MlflowClient, hypothesis: Hypothesis, action: str, changes: dict[str, Any], who: str, when: int
) -> Hypothesis:
    """Record one more event on `hypothesis` and rewrite its state tags; returns the new state."""
    return append_events(client, hypothesis, [(action, changes)], who, when)


def append_events(
    client: MlflowClient,
    hypothesis: Hypothesis,
    changes: list[tuple[str, dict[str, Any]]],
    who: str,
    when: int,
) -> Hypothesis:
    """Record several events in one write (e.g. a long list of linked runs split in parts)."""
    assert hypothesis.run_id is not None
    stored = client.get_run(hypothesis.run_id)
    if len(event_tags(stored)) != len(hypothesis.events):
        raise OkrError(
            f"hypothesis {hypothesis.id!r} changed while this command ran; run the command again"
        )
    new_events = []
    head = hypothesis.head
    for action, change in changes:
        seq = len(hypothesis.events) + len(new_events) + 1
        event = seal(hypothesis.id, seq, who, when, action, change, head)
        new_events.append(event)
        head = event.hash
    return append_sealed(client, hypothesis, new_events)


def append_sealed(client: MlflowClient, hypothesis: Hypothesis, new_events: list[Event]) -> Hypothesis:
    """Write events that are already sealed (by `append_events`, or read from an export)."""
    updated = hypothesis.model_copy(deep=True)
    for event in new_events:
        apply_event(updated, event)
    updated.events = [*hypothesis.events, *new_events]
    assert updated.run_id is not None
    _write(client, updated.run_id, updated, new_events)
    _end_if_resolved(client, updated)
    return updated


def _end_if_resolved(client: MlflowClient, hypothesis: Hypothesis) -> None:
    # An open hypothesis is a RUNNING run; a resolved one ends when it was resolved.
    if hypothesis.run_id and not hypothesis.is_open and hypothesis.resolved_at:
        client.set_terminated(hypothesis.run_id, "FINISHED", end_time=hypothesis.resolved_at)
