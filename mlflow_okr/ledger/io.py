"""Export the ledger to JSON Lines (one event per line) and import it back, e.g. from git.

The file holds the events exactly as stored, so an export of an import is byte-identical and the
imported history still verifies. Importing the same file twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr.errors import CheckFailed, ConcurrentChange, InputError
from mlflow_okr.ledger import store
from mlflow_okr.ledger.events import chain_problem, event_text
from mlflow_okr.ledger.models import Event, Hypothesis


class ImportResult(BaseModel):
    """What `ledger import` did: hypotheses created, extended with newer events, or unchanged."""

    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    events_written: int = 0


def export_lines(client: MlflowClient) -> list[str]:
    """Every event of every hypothesis, oldest hypothesis first; CheckFailed if a chain is broken."""
    lines = []
    for hypothesis in store.load_all(client):
        problem = chain_problem(hypothesis.events, hypothesis.id)
        if problem:
            raise CheckFailed(f"{problem}; not exporting a ledger that fails `mlflow-okr ledger verify`")
        lines += [event_text(event) for event in hypothesis.events]
    return lines


def read_events(lines: Iterable[str], source: str) -> dict[str, list[Event]]:
    """Parse JSONL event lines; InputError naming `source:line` for the first malformed one."""
    by_hypothesis: dict[str, list[Event]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = store.parse_event(line)
        except ValueError as exc:
            raise InputError(f"{source}:{number}: not a ledger event: {exc}") from None
        by_hypothesis.setdefault(event.hypothesis, []).append(event)
    for hypothesis_id, events in by_hypothesis.items():
        events.sort(key=lambda event: event.seq)
        if events[0].action != "add":
            raise InputError(f"{source}: hypothesis {hypothesis_id!r} does not start with an `add` event")
        problem = chain_problem(events, hypothesis_id)
        if problem:
            raise InputError(f"{source}: {problem}")
    return by_hypothesis


def import_events(client: MlflowClient, by_hypothesis: dict[str, list[Event]], source: str) -> ImportResult:
    """Create or extend hypotheses from chained events; InputError where histories diverge."""
    plan = []
    for hypothesis_id, events in by_hypothesis.items():
        run = store.find_run(client, hypothesis_id)
        existing = store.hypothesis_from_run(run) if run is not None else None
        if existing is not None:
            common = min(len(existing.events), len(events))
            if [e.hash for e in existing.events[:common]] != [e.hash for e in events[:common]]:
                raise InputError(
                    f"{source}: hypothesis {hypothesis_id!r} has a different history in this MLflow "
                    "backend than in the file; nothing was imported"
                )
        plan.append((hypothesis_id, events, existing))
    result = ImportResult()
    for hypothesis_id, events, existing in plan:
        try:
            _import_one(client, hypothesis_id, events, existing, result)
        except ConcurrentChange:
            done = ", ".join(result.created + result.updated) or "none"
            raise ConcurrentChange(
                f"{source}: hypothesis {hypothesis_id!r} changed while it was imported (another ledger "
                f"command wrote to it at the same moment); imported before it: {done}. Import the file "
                "again: what is already there is skipped"
            ) from None
    return result


def _import_one(
    client: MlflowClient,
    hypothesis_id: str,
    events: list[Event],
    existing: Hypothesis | None,
    result: ImportResult,
) -> None:
    if existing is None:
        store.create_from_events(client, events)
        result.created.append(hypothesis_id)
        result.events_written += len(events)
    elif len(events) > len(existing.events):
        newer = events[len(existing.events):]
        store.append_sealed(client, existing, newer)
        result.updated.append(hypothesis_id)
        result.events_written += len(newer)
    else:
        result.unchanged.append(hypothesis_id)
