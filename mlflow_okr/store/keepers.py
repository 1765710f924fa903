"""One live KR state keeper per MLflow workspace that a hooked store serves.

With workspaces on (`mlflow server --enable-workspaces`, or `MLFLOW_WORKSPACE` in a client), each
workspace has its own published cycles, KR state and ledger. A write is noted by the keeper of
the workspace it was made in, and that keeper's reads and writes run in that workspace, so a
write in one workspace never reads or touches another's OKRs. Without workspaces there is one
keeper, under the name None.
"""

from __future__ import annotations

import threading

from mlflow_okr import compat
from mlflow_okr.store.live import LiveKrs


class Keepers:
    """The `LiveKrs` of each workspace a store serves, made on first use."""

    def __init__(self, inner_uri: str, durable: bool = False):
        self.inner_uri = inner_uri
        self.durable = durable
        self._lock = threading.Lock()  # guards _by_workspace
        self._by_workspace: dict[str | None, LiveKrs] = {}

    def of(self, workspace: str | None) -> LiveKrs:
        """The keeper of `workspace` (None: workspaces are off)."""
        with self._lock:
            keeper = self._by_workspace.get(workspace)
            if keeper is None:
                keeper = LiveKrs(self.inner_uri, workspace=workspace, durable=self.durable)
                self._by_workspace[workspace] = keeper
            return keeper

    def current(self) -> LiveKrs:
        """The keeper of the workspace this request or thread acts in."""
        return self.of(compat.active_workspace())

    def all(self) -> list[LiveKrs]:
        with self._lock:
            return list(self._by_workspace.values())
