"""One settling at a time across the processes that keep the same store's KRs.

A settling reads runs' okr.* tags and the KRs' saved tallies, revises them and writes them back.
Two processes settling at once (training scripts, server workers) could each revise a tally from
what the other was replacing, and the later write would drop the earlier one's runs; a check
after the writes pause catches most of those, but not one made before the other write lands (a
process's exit settles and checks at once). So a keeper settles under a lock the database
provides: a PostgreSQL transaction-level advisory lock, a MySQL/MariaDB named lock, an exclusive
`flock` on a file beside a SQLite database. It is held for one settling (milliseconds in steady
state, one cycle's count from all its runs when one is due), on a connection of its own. A store
it cannot lock (an MLflow server behind `okr+http`, MSSQL, a database file in a read-only folder)
keeps the check alone; a settling that stops waiting for the lock has its KRs counted afresh.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, func, select

from mlflow_okr import compat

try:
    import fcntl
except ImportError:  # Windows: no flock; the check after the writes pause stands alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("mlflow_okr")

LOCK_NAME = "mlflow-okr:settling"
# A settling that waits longer than this for another process's lock (a count of a large cycle)
# goes ahead without it, and its KRs are counted afresh afterwards.
WAIT_LIMIT = 30.0
POLL_FIRST, POLL_MOST = 0.005, 0.05  # seconds between two tries, growing to the most
# A forked child's inherited lock connections and engines, kept referenced and never used: one
# garbage-collected there would close the socket it shares with the parent and end its session.
_INHERITED: list[Any] = []


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

    def give_up(self) -> None:
        pass

    def forget(self) -> None:
        """In a forked child: close the descriptor shared with the parent (whose own copy keeps
        the parent's lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _DatabaseLock:
    """A named lock of the store's database, on a connection of its own: not one of MLflow's
    pool, which the settling needs and a small pool may not spare twice. `unlock` is None for a
    lock that ends with the transaction (PostgreSQL's, which a connection pooler keeps whole)."""

    def __init__(self, url: Any, try_lock: Any, unlock: Any | None):
        self.url = url
        self.try_lock, self.unlock = try_lock, unlock
        self._engine: Any = None
        self._connection: Any = None

    def try_acquire(self) -> bool:
        if self._connection is None:
            if self._engine is None:
                self._engine = create_engine(self.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
            self._connection = self._engine.connect()
        if self._connection.execute(select(self.try_lock)).scalar():
            return True
        self._connection.rollback()  # a transaction-level lock not taken leaves nothing to hold
        return False

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if self.unlock is not None:
                connection.execute(select(self.unlock))
            connection.commit()  # ends the transaction, and a transaction-level lock with it
        finally:
            connection.close()  # a broken connection's lock ends with its session

    def give_up(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def forget(self) -> None:
        """In a forked child: leave the parent's connection and engine alone (see _INHERITED)."""
        _INHERITED.append((self._engine, self._connection))
        self._engine = self._connection = None


def _lock_of(client: MlflowClient) -> _FileLock | _DatabaseLock | None:
    """The lock this store's database provides, or None."""
    store = compat.store_of(client)
    if not compat.is_sql_store(store):
        return None
    url = compat.sql_engine(store).url
    dialect = url.get_backend_name()
    if dialect == "sqlite":
        database = url.database
        if fcntl is None or not database or database == ":memory:":
            return None
        return _FileLock(os.path.realpath(database) + "-okr.lock")
    if dialect == "postgresql":
        return _DatabaseLock(url, func.pg_try_advisory_xact_lock(_advisory_key()), None)
    if dialect in ("mysql", "mariadb"):
        # GET_LOCK names are server-wide: the database's name keeps two stores on one server apart.
        name = f"{LOCK_NAME}:{url.database}"
        if len(name) > 64:
            name = f"{LOCK_NAME}:{hashlib.sha256(name.encode()).hexdigest()[:32]}"
        return _DatabaseLock(url, func.get_lock(name, 0), func.release_lock(name))
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
        self.bypassed = False  # True while a settling goes on without the lock the store provides
        self.wait_limit = WAIT_LIMIT

    def forked(self) -> SettlingLock:
        """This lock for a forked child: its own descriptor or connection, since a flock belongs
        to the open file the parent shares and a connection to the parent's session."""
        if self._lock is not None:
            self._lock.forget()
        return SettlingLock(self._client_of)

    def _resolve(self) -> _FileLock | _DatabaseLock | None:
        if not self._resolved:
            self._lock = _lock_of(self._client_of())  # raises until the store can be reached
            self._resolved = True
        return self._lock

    def try_acquire(self) -> bool:
        """One try at the store's lock; True when this keeper holds it now, or the store has none."""
        lock = self._resolve()
        return lock is None or lock.try_acquire()

    def _acquire(self) -> bool:
        """Take the store's lock, waiting at most `wait_limit`; True when it is held."""
        deadline = time.monotonic() + self.wait_limit
        pause = POLL_FIRST
        try:
            while not self.try_acquire():
                if time.monotonic() >= deadline:
                    logger.debug("mlflow-okr settles unlocked: the lock was busy for %.0f s", self.wait_limit)
                    self._give_up()
                    return False
                time.sleep(pause)
                pause = min(POLL_MOST, pause * 2)
        except Exception as error:  # noqa: BLE001 - a lock that fails (a proxy without GET_LOCK)
            logger.debug("mlflow-okr settles unlocked: %s", error)
            self._give_up()
            return False
        except BaseException:  # interrupted (Ctrl-C in a notebook's flush): hold nothing
            self._give_up()
            raise
        return self._lock is not None

    def _give_up(self) -> None:
        self.bypassed = self._lock is not None or not self._resolved
        if self._lock is not None:
            self._lock.give_up()

    def __enter__(self) -> SettlingLock:
        if self._depth == 0:
            self.bypassed = False
            self._held = self._acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._depth -= 1
        if self._depth or not self._held:
            return
        self._held = False
        try:
            self._lock.release()  # type: ignore[union-attr]
        except Exception as error:  # noqa: BLE001 - the settling is done; a lost session lost its lock
            logger.debug("mlflow-okr could not release the store-wide lock: %s", error)
