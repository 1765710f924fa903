"""Reading the run facts KRs need: lean SQL inside a SQL store, `search_runs` everywhere else.

Scoring needs, per run, a handful of attributes, the latest values of a few metrics and a few
tags or params. `MlflowClient.search_runs` loads whole runs (every metric, param and tag), which
costs about a millisecond a run. Inside a SQL store (`okr+sqlite`, `okr+postgresql`, ... in a
client or behind `mlflow server`), `SqlFacts` reads only those columns with SQLAlchemy
expressions over MLflow's own models, bound parameters only. Through REST (`okr+http(s)`),
`SearchFacts` uses `search_runs`, so the server's auth decides what is read. Both yield objects
with the `info` / `data` shape of MLflow's `Run`, limited to the keys asked for, so the filter,
verdict and run-tag code is the same for both.

The okr.* tags that follow from the verdicts are written the same way: inside a SQL store, the
tags of up to CHUNK runs in one transaction over MLflow's `tags` table; elsewhere one `log_batch`
per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import bindparam, delete, exc, func, insert, select, update

from mlflow_okr import compat

CHUNK = 1000  # runs per query: bounded memory, and under every database's bound-parameter limit
# Runs per chunk of a scan, which selects them by a range of run ids (no parameter per run): fewer,
# larger reads, since each query costs the database a plan and a pass over the tags index.
SCAN_CHUNK = 5000
DENSE_CHUNK = 2  # a chunk's child rows are read by run id alone when at most this many runs share its ids
TAG_WRITE_ATTEMPTS = 3  # a tag inserted by another writer meanwhile: read again, then update it


@dataclass(frozen=True)
class FactKeys:
    """The metric, tag and param keys a reader must return; `lean` is False when they do not suffice."""

    metrics: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    params: frozenset[str] = frozenset()
    lean: bool = True  # a filter on datasets needs whole runs

    def merge(self, other: FactKeys) -> FactKeys:
        return FactKeys(
            self.metrics | other.metrics,
            self.tags | other.tags,
            self.params | other.params,
            self.lean and other.lean,
        )


@dataclass
class TagChanges:
    """The okr.* tags one run needs written (key -> value) and removed."""

    put: dict[str, str]
    remove: list[str]


class RunInfoView:
    """The attributes of `mlflow.entities.RunInfo` that filters and scoring read."""

    __slots__ = (
        "run_id", "run_name", "experiment_id", "status", "start_time", "end_time",
        "lifecycle_stage", "user_id", "artifact_uri",
    )

    def __init__(self, row: Any):
        (self.run_id, self.run_name, experiment_id, self.status, self.start_time, self.end_time,
         self.lifecycle_stage, self.user_id, self.artifact_uri) = row
        self.experiment_id = str(experiment_id)

    @property
    def run_uuid(self) -> str:
        return self.run_id


class RunDataView:
    """The metrics (latest values), params and tags of a run, limited to the keys asked for."""

    __slots__ = ("metrics", "params", "tags")

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}


class RunView:
    """A run as `Run` shows it (`info`, `data`), read with only the keys asked for."""

    __slots__ = ("info", "data")

    def __init__(self, row: Any):
        self.info = RunInfoView(row)
        self.data = RunDataView()


class SqlFacts:
    """Run facts read with SQLAlchemy over MLflow's own tables, a chunk of runs at a time.

    With a `workspace` (MLflow workspaces on), only runs of that workspace's experiments are read
    or tagged: these statements bypass the workspace-aware store's own scoping, and the live
    writer's threads act for one workspace each.
    """

    def __init__(self, store: Any, workspace: str | None = None):
        self.store = store
        self.workspace = workspace

    def _in_workspace(self) -> tuple[Any, ...]:
        """The condition on SqlRun that keeps to `workspace`'s experiments (none without one)."""
        return _workspace_runs(self.workspace)

    def scan(
        self, experiment_ids: Iterable[str], start_ms: int, end_ms: int, keys: FactKeys
    ) -> Iterator[Any]:
        """Active runs of these experiments started within [start_ms, end_ms], by run id."""
        from mlflow.store.tracking.dbmodels.models import SqlRun

        ids = sorted({int(experiment_id) for experiment_id in experiment_ids})
        if not ids:
            return
        in_scope = (
            SqlRun.experiment_id.in_(ids),
            SqlRun.lifecycle_stage == "active",
            SqlRun.start_time >= start_ms,
            SqlRun.start_time <= end_ms,
            *self._in_workspace(),
        )
        after = ""
        while True:
            with compat.sql_session(self.store) as session:
                query = (
                    select(*_run_columns())
                    .where(*in_scope, SqlRun.run_uuid > after)
                    .order_by(SqlRun.run_uuid)
                    .limit(SCAN_CHUNK)
                )
                connection = session.connection()
                rows = _plain_rows(connection, query)
                if not rows:
                    return
                views = {row[0]: RunView(row) for row in rows}
                last = rows[-1][0]
                _fill(connection, views, keys, _chunk_rows(connection, in_scope, after, last, len(rows)))
            yield from views.values()
            if len(rows) < SCAN_CHUNK:
                return
            after = rows[-1][0]

    def get_runs(self, run_ids: Iterable[str], keys: FactKeys) -> dict[str, Any]:
        """These runs (deleted ones too) by id; ids that name no run are left out."""
        from mlflow.store.tracking.dbmodels.models import SqlRun

        wanted = sorted(set(run_ids))
        found: dict[str, Any] = {}
        for start in range(0, len(wanted), CHUNK):
            part = wanted[start:start + CHUNK]
            with compat.sql_session(self.store) as session:
                query = select(*_run_columns()).where(SqlRun.run_uuid.in_(part), *self._in_workspace())
                connection = session.connection()
                rows = _plain_rows(connection, query)
                views = {row[0]: RunView(row) for row in rows}
                if views:
                    _fill(connection, views, keys, _rows_of(list(views)))
            found.update(views)
        return found


    def write_tags(self, changes: dict[str, TagChanges]) -> None:
        """Write these runs' tag changes in one transaction; runs no longer active get none.

        MLflow's `log_batch` takes a run per call and reads the whole run twice on the way; the
        writer's tags of every run it settled go here at once instead.
        """
        with compat.sql_session(self.store, write=True) as session:
            for attempt in range(TAG_WRITE_ATTEMPTS):
                try:
                    _write_tag_rows(session, changes, self._in_workspace())
                    return
                except exc.IntegrityError:
                    # Another writer inserted one of these tags (or removed a run) since we read.
                    session.rollback()
                    if attempt + 1 == TAG_WRITE_ATTEMPTS:
                        raise


def _workspace_runs(workspace: str | None) -> tuple[Any, ...]:
    """Conditions on SqlRun: its experiment is in `workspace` (no condition for None)."""
    if workspace is None:
        return ()
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun

    column = compat.experiment_workspace_column()
    experiments = select(SqlExperiment.experiment_id).where(column == workspace)
    return (SqlRun.experiment_id.in_(experiments),)


def _write_tag_rows(session: Any, changes: dict[str, TagChanges], in_workspace: tuple[Any, ...] = ()) -> None:
    """Update the tags present, insert the others, delete the removed ones: three statements."""
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag

    # As MLflow's own tag writes: only an active run (of the workspace) can be tagged.
    active = sorted(
        session.execute(
            select(SqlRun.run_uuid).where(
                SqlRun.run_uuid.in_(sorted(changes)), SqlRun.lifecycle_stage == "active", *in_workspace
            )
        ).scalars()
    )
    keys = sorted({key for change in changes.values() for key in (*change.put, *change.remove)})
    if not active or not keys:
        return
    present = set(
        session.execute(
            select(SqlTag.run_uuid, SqlTag.key).where(SqlTag.run_uuid.in_(active), SqlTag.key.in_(keys))
        ).all()
    )
    updates, inserts, removals = [], [], []
    for run_id in active:
        change = changes[run_id]
        for key, value in change.put.items():
            row = {"run": run_id, "name": key, "text": value}
            (updates if (run_id, key) in present else inserts).append(row)
        removals += [{"run": run_id, "name": key} for key in change.remove if (run_id, key) in present]
    table = SqlTag.__table__
    this_tag = (table.c.run_uuid == bindparam("run"), table.c.key == bindparam("name"))
    if updates:
        session.execute(update(table).where(*this_tag).values(value=bindparam("text")), updates)
    if inserts:
        rows = [{"run_uuid": row["run"], "key": row["name"], "value": row["text"]} for row in inserts]
        session.execute(insert(table), rows)
    if removals:
        session.execute(delete(table).where(*this_tag), removals)


def _run_columns() -> tuple[Any, ...]:
    from mlflow.store.tracking.dbmodels.models import SqlRun

    return (
        SqlRun.run_uuid, SqlRun.name, SqlRun.experiment_id, SqlRun.status, SqlRun.start_time,
        SqlRun.end_time, SqlRun.lifecycle_stage, SqlRun.user_id, SqlRun.artifact_uri,
    )


def _plain_rows(connection: Any, query: Any) -> list[tuple[Any, ...]]:
    """The rows of a Core select as the database driver returns them.

    A pass reads a million rows at 100,000 runs: wrapping each in SQLAlchemy's `Row` costs about as
    much as fetching it, and these columns (strings, integers, floats, a NaN flag) need none of the
    type processing a `Row` would apply.
    """
    result = connection.execute(query)
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


def _chunk_rows(
    connection: Any, in_scope: tuple[Any, ...], after: str, last: str, count: int
) -> Callable[[Any, Any], Any]:
    """How to select the child rows (metrics, tags, params) of a chunk of `count` runs in scope,
    the runs with ids in (after, last].

    When most runs with those ids are in scope (a pass over every set's experiments), by run id
    alone: joining the runs table to check each child row's run costs twice the read itself.
    Otherwise the join keeps out the rows of the many runs of other experiments.
    """
    from mlflow.store.tracking.dbmodels.models import SqlRun

    ids = (SqlRun.run_uuid > after, SqlRun.run_uuid <= last)
    in_range = connection.execute(select(func.count()).select_from(SqlRun).where(*ids)).scalar_one()
    if in_range <= DENSE_CHUNK * count:
        return lambda query, model: query.where(model.run_uuid > after, model.run_uuid <= last)
    # Conditions on the runs table select the chunk: bounded parameters, any chunk size.
    return lambda query, model: query.join(SqlRun, SqlRun.run_uuid == model.run_uuid).where(*in_scope, *ids)


def _rows_of(run_ids: list[str]) -> Callable[[Any, Any], Any]:
    """Select the child rows of these runs."""
    return lambda query, model: query.where(model.run_uuid.in_(run_ids))


def _fill(
    connection: Any, views: dict[str, RunView], keys: FactKeys, narrow: Callable[[Any, Any], Any]
) -> None:
    """Add the wanted metrics, tags and params of `views`; `narrow(query, model)` selects the rows of
    a child table to read (rows of runs not in `views` are passed over)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlTag

    def child_rows(model: Any, *columns: Any, wanted: frozenset[str]) -> Iterable[Any]:
        if not wanted:
            return ()
        query = narrow(select(model.run_uuid, model.key, *columns), model)
        return _plain_rows(connection, query.where(model.key.in_(sorted(wanted))))

    # A million rows at 100,000 runs: each is one lookup of its run's dictionary.
    metrics = {run_id: view.data.metrics for run_id, view in views.items()}
    for run_id, key, value, is_nan in child_rows(
        SqlLatestMetric, SqlLatestMetric.value, SqlLatestMetric.is_nan, wanted=keys.metrics
    ):
        found = metrics.get(run_id)
        if found is not None:
            # As SqlLatestMetric.to_mlflow_entity: NaN is stored as a flag beside a 0 value.
            found[key] = math.nan if is_nan else value
    for model, wanted, kind in ((SqlTag, keys.tags, "tags"), (SqlParam, keys.params, "params")):
        values = {run_id: getattr(view.data, kind) for run_id, view in views.items()}
        for run_id, key, value in child_rows(model, model.value, wanted=wanted):
            found = values.get(run_id)
            if found is not None:
                found[key] = value


class SearchFacts:
    """Run facts read through `search_runs` and `get_run`: whole runs, any tracking store."""

    def __init__(self, client: MlflowClient):
        self.client = client

    def scan(
        self, experiment_ids: Iterable[str], start_ms: int, end_ms: int, keys: FactKeys
    ) -> Iterator[Any]:
        from mlflow_okr import state

        window = f"attributes.start_time >= {start_ms} AND attributes.start_time <= {end_ms}"
        yield from state.iter_runs(self.client, sorted(set(experiment_ids)), window)

    def get_runs(self, run_ids: Iterable[str], keys: FactKeys) -> dict[str, Any]:
        found = {}
        for run_id in sorted(set(run_ids)):
            try:
                found[run_id] = self.client.get_run(run_id)
            except MlflowException:
                continue
        return found


    def write_tags(self, changes: dict[str, TagChanges]) -> None:
        """Write each run's tag changes through the client: one `log_batch` per run."""
        for run_id, change in changes.items():
            if change.put:
                tags = [RunTag(key, value) for key, value in change.put.items()]
                self.client.log_batch(run_id, tags=tags, synchronous=True)
            for key in change.remove:
                self.client.delete_tag(run_id, key)


def reader_for(client: MlflowClient, keys: FactKeys | None = None) -> SqlFacts | SearchFacts:
    """The cheapest reader that can serve `keys` for this client's store (None: a tag writer)."""
    store = compat.store_of(client)
    if (keys is None or keys.lean) and compat.is_sql_store(store):
        return SqlFacts(store, compat.active_workspace())
    return SearchFacts(client)
