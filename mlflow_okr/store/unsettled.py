"""Durable markers of unsettled KR work: what a killed server worker leaves for the next one.

A writer keeps its marks in memory, so a server worker killed with SIGKILL (or by the OOM killer)
would leave the KRs it had not settled stale until `mlflow-okr sync`. A server's writer therefore
tags each cycle experiment it has work for with `okr.unsettled.<owner>` before that work is
marked, keeps the tag fresh while the work lasts, and removes it once everything is settled and
recounted. A writer that finds another owner's marker whose owner is gone counts that cycle
afresh and removes the marker: one recount per cycle a crash left unsettled, never a recount of
the whole store on every start.

An owner is gone when its process no longer exists on this host, or when its marker was not
refreshed for LEASE seconds (another host, or a reused process id).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlflow_okr.vocabulary import UNSETTLED_MARKER_PREFIX as MARKER_PREFIX

HEARTBEAT = 30.0  # seconds between two refreshes of a marker while its work lasts
LEASE = 4 * HEARTBEAT  # a marker not refreshed for this long belongs to a gone owner


@dataclass(frozen=True)
class Owner:
    """The process that wrote a marker: host name, process id, and a per-process random token."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @property
    def key(self) -> str:
        return f"{MARKER_PREFIX}{self.token}"

    def value(self, now: float) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "at": round(now, 3)}, sort_keys=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def is_gone(value: str, now: float, host: str) -> bool:
    """Whether the owner of a marker with this value can no longer settle its work."""
    try:
        fields = json.loads(value)
        at, pid, owner_host = float(fields["at"]), int(fields["pid"]), str(fields["host"])
    except (ValueError, KeyError, TypeError):
        return True  # not a marker this code wrote: nobody will refresh it
    if now - at > LEASE:
        return True
    return owner_host == host and not _process_exists(pid)


def orphaned_markers(experiments: Iterable[Any], owner: Owner, now: float) -> dict[str, list[str]]:
    """Experiment id -> keys of the markers on it whose owners are gone (never `owner`'s own)."""
    found: dict[str, list[str]] = {}
    for experiment in experiments:
        for key, value in experiment.tags.items():
            if key.startswith(MARKER_PREFIX) and key != owner.key and is_gone(value, now, owner.host):
                found.setdefault(experiment.experiment_id, []).append(key)
    return found


class Markers:
    """This process's markers on the cycle experiments of one tracking store (and workspace)."""

    def __init__(self, client: Any, owner: Owner):
        self.client = client
        self.owner = owner
        # Guards _refreshed; held while markers are written, so that a marker is never removed
        # between a writer's check that it stands and the mark that relies on it.
        self.lock = threading.Lock()
        self._refreshed: dict[str, float] = {}  # experiment id -> when its marker was written

    def ensure(self, experiment_ids: Iterable[str]) -> None:
        """Write this process's marker on these experiments where it does not stand yet.

        Called with `lock` held, before the work it covers is marked.
        """
        now = time.time()
        for experiment_id in sorted(set(experiment_ids) - set(self._refreshed)):
            self.client.set_experiment_tag(experiment_id, self.owner.key, self.owner.value(now))
            self._refreshed[experiment_id] = now

    def refresh(self) -> None:
        """Keep the markers of work still pending from looking abandoned."""
        with self.lock:
            now = time.time()
            for experiment_id, written in sorted(self._refreshed.items()):
                if now - written >= HEARTBEAT:
                    self.client.set_experiment_tag(experiment_id, self.owner.key, self.owner.value(now))
                    self._refreshed[experiment_id] = now

    def remove(self) -> None:
        """Remove every marker of this process: its work is settled. Called with `lock` held."""
        for experiment_id in sorted(self._refreshed):
            remove_marker(self.client, experiment_id, self.owner.key)
            del self._refreshed[experiment_id]

    @property
    def standing(self) -> bool:
        return bool(self._refreshed)


def remove_marker(client: Any, experiment_id: str, key: str) -> None:
    """Remove one marker; one already removed (by another worker's catch-up) is fine."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_experiment_tag(experiment_id, key)
    except MlflowException:
        pass
