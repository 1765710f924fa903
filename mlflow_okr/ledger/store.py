"""Reading and writing the `okr/ledger` experiment: one run per hypothesis, state in tags.

A hypothesis run holds its events in tags `okr.ledger.event.NNNNNN.<hash>` (canonical JSON,
written once), each sealed by a write-once param `okr.ledger.seal.NNNNNN` holding its hash, and,
derived from them, the state tags the UI and the ledger KRs read, and a markdown description with
the statement, evidence links and learnings.

An append first writes its events under keys no other writer uses, then seals their numbers.
MLflow refuses a param that already holds another value, so when two writers race for the same
number exactly one seal lands; the other writer's events stay unsealed (nobody reads them) and it
starts over from the new state. No append that returned is ever lost or overwritten.

The client talks to the inner store, and the live store skips `okr/*` experiments, so ledger
writes never trigger OKR hooks.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mlflow.entities import Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from pydantic import ValidationError

from mlflow_okr import mlflow_ui, state, vocabulary
from mlflow_okr.errors import ConcurrentChange, InputError, OkrError
from mlflow_okr.ledger.events import (
    event_tag,
    event_text,
    legacy_event_tag,
    seal,
    seal_param,
)
from mlflow_okr.ledger.models import Event, Hypothesis, apply_event, replay

# MLflow's limit on the params of one request. The client splits a longer log_batch into several
# requests; seals go in parts of this size so that each part is sealed, or refused, as a whole.
MAX_PER_BATCH = 100


def ledger_experiment_id(client: MlflowClient, create: bool = False) -> str | None:
    """The id of `okr/ledger`; created on first write, None on reads before that."""
    experiment = client.get_experiment_by_name(vocabulary.LEDGER_EXPERIMENT)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise InputError(
                f"experiment {vocabulary.LEDGER_EXPERIMENT!r} is deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`"
            )
        return experiment.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(
            vocabulary.LEDGER_EXPERIMENT,
            tags={
                "mlflow.note.content": "Hypotheses recorded by mlflow-okr ledger.",
                mlflow_ui.EXPERIMENT_KIND_TAG: mlflow_ui.RUNS_VIEW_KIND,  # MLflow's runs view, not GenAI
            },
        )
    except MlflowException:
        # Another writer created it first.
        experiment = client.get_experiment_by_name(vocabulary.LEDGER_EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def hypothesis_runs(client: MlflowClient, view: int = ViewType.ACTIVE_ONLY) -> Iterator[Run]:
    """Every hypothesis run of the ledger, oldest first."""
    experiment_id = ledger_experiment_id(client)
    if experiment_id is None:
        return iter(())
    runs = state.iter_runs(client, [experiment_id], f"tags.`{vocabulary.TAG_LEDGER_ID}` != ''", view=view)
    # Creation time, then id: the same order on every backend, so exports are byte-identical.
    return iter(
        sorted(runs, key=lambda run: (run.info.start_time or 0, run.data.tags[vocabulary.TAG_LEDGER_ID]))
    )


def find_run(client: MlflowClient, hypothesis_id: str) -> Run | None:
    experiment_id = ledger_experiment_id(client)
    if experiment_id is None:
        return None
    quoted = hypothesis_id.replace("'", "''")
    by_id = f"tags.`{vocabulary.TAG_LEDGER_ID}` = '{quoted}'"
    matches = list(state.iter_runs(client, [experiment_id], by_id))
    return matches[0] if matches else None


def sealed_events(run: Run) -> list[tuple[str, str | None]]:
    """(tag key, event JSON or None when the tag is gone) of every event, in number order.

    Events are the sealed ones. A run whose events predate seals (mlflow-okr 0.1.0 wrote them as
    `okr.ledger.event.NNNNNN`, unsealed) is read as it is; its next change seals them.
    """
    found: list[tuple[str, str | None]] = []
    params, tags = run.data.params, run.data.tags
    while (hash_ := params.get(seal_param(len(found) + 1))) is not None:
        key = event_tag(len(found) + 1, hash_)
        if key not in tags and legacy_event_tag(len(found) + 1) in tags:
            key = legacy_event_tag(len(found) + 1)
        found.append((key, tags.get(key)))
    # Unsealed events of a run from before seals follow its sealed ones (sealing goes in parts).
    while (key := legacy_event_tag(len(found) + 1)) in tags:
        found.append((key, tags[key]))
    return found


def stray_seals(run: Run, sealed: int) -> list[str]:
    """Seal params past the first `sealed` numbers: a gap in the numbering."""
    expected = {seal_param(number) for number in range(1, sealed + 1)}
    seals = (key for key in run.data.params if key.startswith(vocabulary.LEDGER_SEAL_PARAM_PREFIX))
    return sorted(key for key in seals if key not in expected)


def parse_event(text: str) -> Event:
    """An event from its canonical JSON; ValueError when it is not one."""
    try:
        return Event.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def run_events(run: Run) -> list[Event]:
    """The events stored on a hypothesis run; OkrError when one is unreadable (see `verify`)."""
    events = []
    for number, (key, value) in enumerate(sealed_events(run), start=1):
        if value is None:
            raise OkrError(f"ledger run {run.info.run_id}: event {number} is sealed but its tag {key} is "
                           "gone; run `mlflow-okr ledger verify`")
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
        known = sorted(r.data.tags[vocabulary.TAG_LEDGER_ID] for r in hypothesis_runs(client))
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
        vocabulary.TAG_LEDGER_ID: hypothesis.id,
        vocabulary.TAG_LEDGER_STATUS: hypothesis.status,
        vocabulary.TAG_LEDGER_CONTROL_RUNS: str(len(hypothesis.arm_runs("control"))),
        vocabulary.TAG_LEDGER_TREATMENT_RUNS: str(len(hypothesis.arm_runs("treatment"))),
        vocabulary.TAG_LEDGER_EVENT_COUNT: str(len(hypothesis.events)),
        vocabulary.TAG_LEDGER_HEAD: hypothesis.head,
    }
    optional = {
        vocabulary.TAG_LEDGER_KR: hypothesis.kr,
        vocabulary.TAG_LEDGER_OBJECTIVE: hypothesis.objective,
        vocabulary.TAG_LEDGER_RESOLVED_AT: str(hypothesis.resolved_at) if hypothesis.resolved_at else None,
        vocabulary.TAG_LEDGER_METRIC: hypothesis.metric,
        vocabulary.TAG_LEDGER_EXPECT: hypothesis.expect,
        vocabulary.TAG_LEDGER_OWNER: hypothesis.owner,
        vocabulary.TAG_LEDGER_PAIR_BY: hypothesis.pair_by,
        vocabulary.TAG_LEDGER_GUARDRAILS: "; ".join(hypothesis.guardrails) or None,
    }
    if hypothesis.evaluation:
        optional[vocabulary.TAG_LEDGER_SUGGESTED_VERDICT] = hypothesis.evaluation.get("suggested_verdict")
        numbers = ((vocabulary.TAG_LEDGER_P_VALUE, "p_value"), (vocabulary.TAG_LEDGER_EFFECT, "effect"))
        for tag, key in numbers:
            value = hypothesis.evaluation.get(key)
            optional[tag] = None if value is None else repr(float(value))
        p_value = hypothesis.verdict_p_value
        optional[vocabulary.TAG_LEDGER_VERDICT_P_VALUE] = None if p_value is None else repr(p_value)
        if hypothesis.evaluated_at:
            optional[vocabulary.TAG_LEDGER_EVALUATED_AT] = str(hypothesis.evaluated_at)
    tags.update({key: value for key, value in optional.items() if value})
    tags.update(hypothesis.tags)
    tags[MLFLOW_RUN_NOTE] = description(hypothesis)
    return tags


def unbacked_state_tags(tags: dict[str, str], expected: dict[str, str]) -> list[str]:
    """The run's okr.ledger.* state tags that its events no longer back."""
    return sorted(
        key for key in tags
        if key.startswith(vocabulary.LEDGER_TAG_PREFIX)
        and not key.startswith(vocabulary.LEDGER_EVENT_TAG_PREFIX)
        and key not in expected
    )


def run_link(experiment_id: str, run_id: str) -> str:
    """A markdown link to a run in the MLflow UI: the route the report and the KR runs use."""
    return f"[{run_id}]({mlflow_ui.run_link(experiment_id, run_id)})"


def legacy_description(text: str) -> str:
    """`text` as mlflow-okr 0.1 wrote it: run links without the classic-view query."""
    return text.replace(f"?{mlflow_ui.WORKFLOW_QUERY})", ")")


def description(hypothesis: Hypothesis) -> str:
    """The run description: statement, what is linked and measured, learnings."""
    lines = [f"**Hypothesis `{hypothesis.id}`**: {hypothesis.statement}", ""]
    lines.append(f"Status: **{hypothesis.status}**")
    for label, value in (
        ("KR", hypothesis.kr),
        ("Objective", hypothesis.objective),
        ("Metric", f"`{hypothesis.metric}`" if hypothesis.metric else None),
        ("Expected effect", hypothesis.expect),
        ("Paired by", f"`{hypothesis.pair_by}`" if hypothesis.pair_by else None),
        ("Guardrails", ", ".join(f"`{g}`" for g in hypothesis.guardrails) or None),
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
    budget = vocabulary.MAX_TAG_VALUE_LENGTH - len("\n".join(lines + tail)) - 200
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
    return "\n".join(lines + tail)[:vocabulary.MAX_TAG_VALUE_LENGTH]


# ---------------------------------------------------------------------------------------------
# Writing


def _check_fits(event: Event) -> str:
    text = event_text(event)
    if len(text) > vocabulary.MAX_TAG_VALUE_LENGTH:
        raise InputError(
            f"this {event.action} for hypothesis {event.hypothesis!r} is {len(text)} characters of JSON, "
            f"over MLflow's tag limit of {vocabulary.MAX_TAG_VALUE_LENGTH}; shorten the statement or note"
        )
    return text


def _changed(hypothesis_id: str, partly: bool = False) -> ConcurrentChange:
    recorded = "part of this command's events were recorded" if partly else "nothing of it was recorded"
    return ConcurrentChange(
        f"hypothesis {hypothesis_id!r} changed while this command ran (another ledger command wrote "
        f"to it at the same moment); {recorded}, run it again"
    )


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + MAX_PER_BATCH] for i in range(0, len(items), MAX_PER_BATCH)]


def _log_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()], synchronous=True)


def _seal(client: MlflowClient, run_id: str, seals: list[Param]) -> bool:
    """Log these seals; False when another writer holds one of their numbers with another hash."""
    try:
        client.log_batch(run_id, params=seals, synchronous=True)
        return True
    except MlflowException:
        stored = client.get_run(run_id).data.params
        if all(stored.get(p.key) == p.value for p in seals):
            return True  # a racer logged the same seals, or an earlier attempt of this request did
        if any(stored.get(p.key) not in (None, p.value) for p in seals):
            return False
        raise


def _write(client: MlflowClient, run_id: str, hypothesis: Hypothesis, new_events: list[Event]) -> None:
    """Store `new_events`, seal them, then write the state tags; ConcurrentChange when beaten to a seal."""
    texts = {event_tag(event.seq, event.hash): _check_fits(event) for event in new_events}
    _log_tags(client, run_id, texts)
    older = hypothesis.events[: len(hypothesis.events) - len(new_events)]
    stored = client.get_run(run_id).data.params if older else {}  # a new run has no seals yet
    unsealed = [Param(seal_param(e.seq), e.hash) for e in older if seal_param(e.seq) not in stored]
    # Events written before events were sealed: seal them as they stand (racers agree on these).
    for part in _batches(unsealed):
        if not _seal(client, run_id, part):
            raise _changed(hypothesis.id)
    for number, part in enumerate(_batches([Param(seal_param(e.seq), e.hash) for e in new_events])):
        if _seal(client, run_id, part):
            continue
        stored = client.get_run(run_id).data.params
        for event in new_events[number * MAX_PER_BATCH:]:
            if stored.get(seal_param(event.seq)) != event.hash:  # unsealed and never read
                client.delete_tag(run_id, event_tag(event.seq, event.hash))
        if number:  # the parts sealed before stand: their state is written from them
            _write_state(client, run_id, hypothesis_from_run(client.get_run(run_id)))
        raise _changed(hypothesis.id, partly=bool(number))
    _write_state(client, run_id, hypothesis)


def _write_state(client: MlflowClient, run_id: str, hypothesis: Hypothesis) -> None:
    """Write the state tags; if a later append sealed meanwhile, write its state instead."""
    while True:
        expected = state_tags(hypothesis)
        _log_tags(client, run_id, expected)
        run = client.get_run(run_id)
        if len(sealed_events(run)) == len(hypothesis.events):
            for key in unbacked_state_tags(run.data.tags, expected):
                client.delete_tag(run_id, key)  # e.g. a p-value the latest evaluation no longer has
            return
        # Our state tags may have landed after the later writer's: replay every sealed event.
        hypothesis = hypothesis_from_run(run)


T = TypeVar("T")
ATTEMPTS = 5


def retrying(function: Callable[..., T]) -> Callable[..., T]:
    """Decorate a read-check-append command: start it over when a concurrent append got there first.

    Starting over re-reads the hypothesis and re-checks the command against it, so the outcome is
    the one of running after the other writer (linking a run it linked is a no-op, resolving what
    it resolved is refused).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(1, ATTEMPTS):
            try:
                return function(*args, **kwargs)
            except ConcurrentChange:
                time.sleep(random.uniform(0.05, 0.25) * attempt)
        return function(*args, **kwargs)

    return wrapper


def create(
    client: MlflowClient, hypothesis_id: str, changes: dict[str, Any], who: str, when: int
) -> Hypothesis:
    """Start a hypothesis run with its `add` event; InputError when the id is taken."""
    if find_run(client, hypothesis_id) is not None:
        raise InputError(
            f"hypothesis {hypothesis_id!r} already exists; pick another id or see "
            f"`mlflow-okr ledger show {hypothesis_id}`",
            parameter="hypothesis_id",
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
    # The id tag comes with the state tags, once the events are stored: until then no command
    # lists the run, so a reader never meets a hypothesis without its history.
    run = client.create_run(experiment_id, start_time=first.when, run_name=first.hypothesis)
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
    if len(sealed_events(stored)) != len(hypothesis.events):
        raise _changed(hypothesis.id)
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
