"""`ledger verify`: check every hypothesis's event chain and that its state tags match a replay."""

from __future__ import annotations

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from pydantic import BaseModel

from mlflow_okr import state, vocabulary
from mlflow_okr.ledger import store
from mlflow_okr.ledger.events import chain_problem, seal_param
from mlflow_okr.ledger.models import Event, replay

# State tags that mlflow-okr 0.1.0 did not derive from the events yet.
LATER_STATE_TAGS = (vocabulary.TAG_LEDGER_VERDICT_P_VALUE, vocabulary.TAG_LEDGER_EVALUATED_AT)


class VerifyResult(BaseModel):
    """What `verify` checked and every problem it found, the first one first."""

    hypotheses: int
    events: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _show(value: str | None, limit: int = 60) -> str:
    if value is None:
        return "missing"
    return repr(value if len(value) <= limit else value[:limit] + "...")


def run_problems(run: Run) -> tuple[list[str], int]:
    """The problems of one hypothesis run, and how many events it holds."""
    tags = run.data.tags
    hypothesis_id = tags.get(vocabulary.TAG_LEDGER_ID) or run.info.run_name or run.info.run_id
    events: list[Event] = []
    sealed = store.sealed_events(run)
    for number, (key, text) in enumerate(sealed, start=1):
        where = f"hypothesis {hypothesis_id!r} event {number}"
        if text is None:
            return [f"{where}: missing; it is sealed but its tag {key} was deleted"], number - 1
        try:
            event = store.parse_event(text)
        except ValueError as exc:
            return [f"{where} (tag {key}): not a readable event, it was edited: {exc}"], number
        if event.seq != number:
            return [f"{where}: tag {key} holds event number {event.seq} (events were moved)"], number
        events.append(event)
    if not events:
        return [
            f"hypothesis {hypothesis_id!r} (run {run.info.run_id}): has no events (a command stopped "
            f"before storing them); delete it with `mlflow runs delete --run-id {run.info.run_id}`"
        ], 0
    problem = chain_problem(events, hypothesis_id)
    if problem:
        return [problem], len(events)
    for number, event in enumerate(events, start=1):
        if run.data.params.get(seal_param(number), event.hash) != event.hash:
            return [
                f"hypothesis {hypothesis_id!r} event {number} ({event.action}): differs from the event "
                "sealed when it was written (history was rewritten)"
            ], len(events)
    stray = store.stray_seals(run, len(events))
    if stray:
        return [
            f"hypothesis {hypothesis_id!r} event {len(events) + 1}: missing; the run has seal "
            f"{stray[0]} past event {len(events)} (an event was deleted)"
        ], len(events)
    recorded = tags.get(vocabulary.TAG_LEDGER_EVENT_COUNT)
    if recorded is None or (recorded.isdigit() and int(recorded) < len(events)):
        if vocabulary.TAG_LEDGER_ID not in tags:
            remedy = (f"no command sees it; delete it with `mlflow runs delete --run-id {run.info.run_id}` "
                      "and run the command again")
        else:
            remedy = "the next change to the hypothesis rewrites them"
        return [
            f"hypothesis {hypothesis_id!r} (run {run.info.run_id}): its state tags describe "
            f"{recorded or 'no'} events but {len(events)} are stored (a command stopped after storing its "
            f"events); {remedy}"
        ], len(events)
    if recorded != str(len(events)):
        return [
            f"hypothesis {hypothesis_id!r} event {len(events) + 1}: missing; the run records "
            f"{recorded or 'no'} events but holds {len(events)} (an event was deleted)"
        ], len(events)
    expected = store.state_tags(replay(events))
    problems = []
    after = f"edited after event {len(events)}"
    for key, value in expected.items():
        if key in LATER_STATE_TAGS and key not in tags:
            continue  # written by a version before these tags; its next change adds them
        if key == MLFLOW_RUN_NOTE and tags.get(key) == store.legacy_description(value):
            continue  # written before the ledger's run links opened MLflow's classic runs view
        if tags.get(key) != value:
            problems.append(
                f"hypothesis {hypothesis_id!r}: tag {key} is {_show(tags.get(key))} but its events say "
                f"{_show(value)} ({after})"
            )
    for key in store.unbacked_state_tags(tags, expected):
        problems.append(f"hypothesis {hypothesis_id!r}: tag {key} is not backed by any event ({after})")
    return problems, len(events)


def verify(client: MlflowClient) -> VerifyResult:
    """Check the whole ledger; deleted hypothesis runs count as lost history."""
    experiment_id = store.ledger_experiment_id(client)
    if experiment_id is None:
        return VerifyResult(hypotheses=0, events=0, problems=[])
    problems: list[str] = []
    hypotheses = events = 0
    runs = sorted(
        state.iter_runs(client, [experiment_id], view=ViewType.ALL),
        key=lambda run: (run.info.start_time or 0, run.info.run_id),
    )
    first_run: dict[str, str] = {}
    for run in runs:
        hypotheses += 1
        hypothesis_id = run.data.tags.get(vocabulary.TAG_LEDGER_ID)
        if hypothesis_id and hypothesis_id in first_run:
            problems.append(
                f"hypothesis {hypothesis_id!r} has a second run {run.info.run_id} besides "
                f"{first_run[hypothesis_id]}; commands read only one of them"
            )
        first_run.setdefault(hypothesis_id or "", run.info.run_id)
        if run.info.lifecycle_stage == "deleted":
            name = run.data.tags.get(vocabulary.TAG_LEDGER_ID) or run.info.run_name
            problems.append(
                f"hypothesis {name!r} (run {run.info.run_id}) was deleted; restore it with "
                f"`mlflow runs restore --run-id {run.info.run_id}`"
            )
            continue
        found, count = run_problems(run)
        problems += found
        events += count
    return VerifyResult(hypotheses=hypotheses, events=events, problems=problems)
