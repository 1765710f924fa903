"""The append-only, hash-chained event list of a hypothesis.

Each event carries the hash of the event before it, so editing, removing or reordering any event
breaks the chain from that point on. Each event's hash is also sealed in a run param, which MLflow
never lets anyone change: through MLflow, an event can be neither rewritten (even with every later
hash recomputed) nor replaced by a concurrent writer's. Someone with write access to the database
itself can still rewrite history undetected (there is no secret key).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlflow_okr.ledger.models import Event
from mlflow_okr.vocabulary import LEDGER_EVENT_TAG_PREFIX, LEDGER_SEAL_PARAM_PREFIX

EVENT_FORMAT = 1
EVENT_NUMBER_DIGITS = 6
EVENT_KEY_HASH_CHARS = 16


def event_tag(seq: int, hash_: str) -> str:
    """The run tag that holds event `seq` with this hash: okr.ledger.event.000001.<16 hex digits>.

    The hash in the key gives two writers racing for the same number keys of their own, so one
    never overwrites the other's event; the seal says which of them holds the number.
    """
    return f"{LEDGER_EVENT_TAG_PREFIX}{seq:0{EVENT_NUMBER_DIGITS}d}.{hash_[:EVENT_KEY_HASH_CHARS]}"


def legacy_event_tag(seq: int) -> str:
    """Where mlflow-okr 0.1.0 kept event `seq`, unsealed: okr.ledger.event.000001, ..."""
    return f"{LEDGER_EVENT_TAG_PREFIX}{seq:0{EVENT_NUMBER_DIGITS}d}"


def seal_param(seq: int) -> str:
    """The run param that seals event `seq` with its hash: okr.ledger.seal.000001, ..."""
    return f"{LEDGER_SEAL_PARAM_PREFIX}{seq:0{EVENT_NUMBER_DIGITS}d}"


def canonical_json(payload: dict[str, Any]) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept, floats as Python's repr."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(payload: dict[str, Any]) -> str:
    """The SHA-256 of the event's canonical JSON without its own `hash` field."""
    unhashed = {key: value for key, value in payload.items() if key != "hash"}
    return hashlib.sha256(canonical_json(unhashed).encode("utf-8")).hexdigest()


def seal(
    hypothesis: str, seq: int, who: str, when: int, action: str, changes: dict[str, Any], prev: str
) -> Event:
    """A new event chained to `prev` (the previous event's hash, empty for the first)."""
    payload = {
        "v": EVENT_FORMAT,
        "hypothesis": hypothesis,
        "seq": seq,
        "who": who,
        "when": when,
        "action": action,
        "changes": changes,
        "prev": prev,
    }
    payload["hash"] = event_hash(payload)
    return Event.model_validate(payload)


def event_text(event: Event) -> str:
    """The canonical JSON stored in the event tag and written to export files."""
    return canonical_json(event.payload())


def chain_problem(events: list[Event], hypothesis: str) -> str | None:
    """The first break in a hypothesis's chain, described for people; None when it holds."""
    previous_hash = ""
    for number, event in enumerate(events, start=1):
        where = f"hypothesis {hypothesis!r} event {number}"
        if event.seq != number:
            return f"{where}: numbered {event.seq}, expected {number} (an event was removed or moved)"
        if event.hypothesis != hypothesis:
            return f"{where}: belongs to hypothesis {event.hypothesis!r}"
        if event.hash != event_hash(event.payload()):
            return f"{where} ({event.action}): content does not match its hash (the event was edited)"
        if event.prev != previous_hash:
            return f"{where} ({event.action}): does not chain to event {number - 1} (history was rewritten)"
        previous_hash = event.hash
    return None
