"""One settling at a time across the processes that keep the same store's KRs.

A settling reads runs' okr.* tags and the KRs' saved tallies, revises them and writes them back.
Two processes settling at once (training scripts, server workers) could each revise a tally from
what the other was replacing, and the later write would drop the earlier one's runs; a check
after the writes pause catches most of those, but not one made before the other write lands (a
process's exit settles and checks at once). So a keeper settles under a lock the database
provides: a PostgreSQL advisory lock, a MySQL/MariaDB named lock, an exclusive `flock` on a file
beside a SQLite database. It is held for one settling, milliseconds in steady state; a store it
cannot lock (an MLflow server behind `okr+http`, MSSQL, a database file in a read-only folder)
keeps the check alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

from mlflow.tracking import MlflowClient
from sqlalchemy import func, select

from mlflow_okr import compat

try:
    import fcntl
except ImportError:  # Windows: no flock; the check after the writes pause stands alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("mlflow_okr")

LOCK_NAME = "mlflow-okr:settling"
# A settling that waits longer than this for another process's (a recount of a large cycle) goes
# ahead unlocked, with the check to fall back on, rather than holding the process's exit.
WAIT_LIMIT = 30.0
POLL_FIRST, POLL_MOST = 0.005, 0.05  # seconds between two tries, growing to the most


def _advisory_key() -> int:
    """PostgreSQL's advisory lock key: a signed 64-bit integer derived from LOCK_NAME."""
    return int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)


class _FileLock:
    """An exclusive flock on a file beside the SQLite database (never the database file itself:
    closing another descriptor of it would drop SQLite's own POSIX locks)."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class _DatabaseLock:
    """A session-level named lock of the store's database, on a connection of MLflow's own engine
    (checked out for one settling). `try_lock` and `unlock` are the SQL functions' calls."""

    def __init__(self, engine: Any, try_lock: Any, unlock: Any):
        self.engine = engine
        self.try_lock, self.unlock = try_lock, unlock
        self._connection: Any = None

    def try_acquire(self) -> bool:
        if self._connection is None:
            self._connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return bool(self._connection.execute(select(self.try_lock)).scalar())

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(select(self.unlock))
        finally:
            connection.close()  # back to the pool; a broken connection's lock ends with its session

    def give_up(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _lock_of(client: MlflowClient) -> _FileLock | _DatabaseLock | None:
    """The lock this store's database provides, or None."""
    store = compat.store_of(client)
    if not compat.is_sql_store(store):
        return None
    engine = compat.sql_engine(store)
    dialect = engine.dialect.name
    if dialect == "sqlite":
        database = engine.url.database
        if fcntl is None or not database or database == ":memory:":
            return None
        return _FileLock(os.path.abspath(database) + "-okr.lock")
    if dialect == "postgresql":
        key = _advisory_key()
        return _DatabaseLock(engine, func.pg_try_advisory_lock(key), func.pg_advisory_unlock(key))
    if dialect in ("mysql", "mariadb"):
        # GET_LOCK names are server-wide: the database's name keeps two stores on one server apart.
        name = f"{LOCK_NAME}:{engine.url.database}"
        if len(name) > 64:
            name = f"{LOCK_NAME}:{hashlib.sha256(name.encode()).hexdigest()[:32]}"
        return _DatabaseLock(engine, func.get_lock(name, 0), func.release_lock(name))
    return None


class SettlingLock:
    """The store-wide settling lock of one keeper; re-entrant for its holder, which takes it under
    the keeper's own settling lock (so `_depth` needs no lock of its own)."""

    def __init__(self, client_of: Any):
        self._client_of = client_of  # called on first use: the keeper's client of the inner store
        self._lock: _FileLock | _DatabaseLock | None = None
        self._resolved = False
        self._depth = 0
        self._held = False

    def forked(self) -> SettlingLock:
        """This lock for a forked child: its own descriptor or connection, since a flock belongs
        to the open file the parent shares and a connection to the parent's session."""
        if isinstance(self._lock, _FileLock) and self._lock._fd is not None:
            os.close(self._lock._fd)  # the parent's descriptor keeps the parent's lock
        return SettlingLock(self._client_of)

    def _resolve(self) -> _FileLock | _DatabaseLock | None:
        if not self._resolved:
            self._resolved = True
            try:
                self._lock = _lock_of(self._client_of())
            except Exception as error:  # noqa: BLE001 - the check after the writes pause remains
                logger.debug("mlflow-okr settles without a store-wide lock: %s", error)
        return self._lock

    def try_acquire(self) -> bool:
        """One try at the store's lock; True when this keeper holds it now."""
        lock = self._resolve()
        return lock is None or lock.try_acquire()

    def __enter__(self) -> SettlingLock:
        self._depth += 1
        if self._depth > 1:
            return self
        deadline = time.monotonic() + WAIT_LIMIT
        pause = POLL_FIRST
        try:
            while not self.try_acquire():
                if time.monotonic() >= deadline:
                    logger.debug("mlflow-okr settles unlocked: the lock was busy for %.0f s", WAIT_LIMIT)
                    self._give_up()
                    return self
                time.sleep(pause)
                pause = min(POLL_MOST, pause * 2)
        except Exception as error:  # noqa: BLE001 - a lock that fails (a proxy without GET_LOCK)
            logger.debug("mlflow-okr settles without the store-wide lock: %s", error)
            self._give_up()
            return self
        self._held = self._lock is not None
        return self

    def _give_up(self) -> None:
        if isinstance(self._lock, _DatabaseLock):
            self._lock.give_up()

    def __exit__(self, *exc_info: Any) -> None:
        self._depth -= 1
        if self._depth or not self._held:
            return
        self._held = False
        try:
            self._lock.release()  # type: ignore[union-attr]
        except Exception as error:  # noqa: BLE001 - the settling is done; a lost session lost its lock
            logger.debug("mlflow-okr could not release the store-wide lock: %s", error)
