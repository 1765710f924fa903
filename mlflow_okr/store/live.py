"""Live KR updates: the hooks mark what a write touched; a writer revises it from the database.

The user's thread only looks keys up in a dictionary and records the run and KRs to revisit.
A background thread coalesces those marks and, at most once per `FLUSH_INTERVAL`, reads the
marked runs' facts (one lean query inside a SQL store), gives them verdicts, and revises the
touched KRs' saved tallies run by run (`compute.revise_tally`): the cost of an update does not
grow with the store. A KR whose tally cannot be revised that way (its best run got worse, a sum
or mean changed, no tally saved yet) is recounted from all of its runs with the same compute path
as `sync`. Processes keeping the same store settle one at a time (`settling_lock.py`). Every
revised KR is checked once its writes pause (and at least every `RECOUNT_INTERVAL` while they go
on): its KR run must still hold the tally this process wrote, else another writer settled it
since (after this one, or without the lock) and the cycle is recounted (`_verify_or_recount`).
Run ends settle in the background too; `flush()` settles everything now, and process exit waits
for it.

Trace and `model:` KRs are not counted from runs: a trace write or an alias move marks them, and
the writer re-measures them as `sync` does once those writes pause (`schedule.MeasuredMarks`);
windowed trace KRs are re-measured on a schedule as well. A write also owes the definitions one more
check for a spec applied elsewhere since they were read.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_okr import compat, state, vocabulary
from mlflow_okr.compute import (
    KrComputation,
    VerdictChange,
    compute_key_results,
    computed_statuses,
    new_computations,
    revise_tally,
    tally_texts,
)
from mlflow_okr.engine import Verdict, verdict_from_tag
from mlflow_okr.facts import reader_for
from mlflow_okr.kr_state import read_kr_runs, settle_key_results, stored_tally, tallies_agree
from mlflow_okr.scope import CycleScan, RunTagWrites, plan_run_tags
from mlflow_okr.spec import OkrSpec
from mlflow_okr.store.definitions import (
    ALL_EXPERIMENTS,
    KrRef,
    WatchedKrs,
    load_watched_krs,
    published_signature,
)
from mlflow_okr.store.schedule import ALL_KRS, Marks, MeasuredMarks, Recounts
from mlflow_okr.store.settling_lock import SettlingLock
from mlflow_okr.store.unsettled import HEARTBEAT, Markers, Owner, orphaned_markers, remove_marker

logger = logging.getLogger("mlflow_okr")

FLUSH_INTERVAL = 0.5  # seconds between two background revisions (marks coalesce meanwhile)
SETTLE_REST_FACTOR = 9.0  # the writer rests 9x its recent settlings: at most a tenth of the process
SETTLE_SMOOTHING = 0.3  # weight of the last settling in the recent duration the rest is based on
# Run ends settle in the background by default, so they never stall the caller. With
# MLFLOW_OKR_RUN_END_BUDGET=<seconds>, a run end settles in the caller's thread while the last
# settling took less than that (for scripts and tests that read KR state right after a run ends).
RUN_END_BUDGET = 0.0
EXIT_FLUSH_TIMEOUT = 15.0  # seconds a process exit waits for the last settling
EXIT_LOCK_WAIT = 5.0  # seconds a settling at exit waits for another process's settling lock
DESCRIBE_INTERVAL = 15.0  # seconds between two refreshes of the UI descriptions by revisions
REFRESH_INTERVAL = 2.0  # seconds between two checks for a newly applied spec
RECOUNT_OWED = ""  # in LiveKrs._revised_tallies: the KR is recounted, whatever tally it holds
SETTLE_ATTEMPTS = 3  # tries to settle the same marks before they are left to `mlflow-okr sync`
IDLE_EXIT = 60.0  # seconds without work after which the writer thread ends (a new mark restarts it)
# Windowed trace KRs (`window: 24h`) move with time as well: a process that writes traces, and every
# server worker, re-measures them this often, writes or not.
WINDOW_REFRESH = 60.0

_warned = False
_warned_lock = threading.Lock()  # guards _warned


def run_end_budget() -> float:
    """RUN_END_BUDGET, or MLFLOW_OKR_RUN_END_BUDGET when set (seconds)."""
    try:
        return float(os.environ.get("MLFLOW_OKR_RUN_END_BUDGET", RUN_END_BUDGET))
    except ValueError:
        return RUN_END_BUDGET


def fail_open(error: BaseException) -> None:
    """Report an error in OKR code once per process; the user's write has already been stored."""
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    logger.warning(
        "mlflow-okr could not update key results live (%s: %s). Your MLflow data was stored; "
        "run `mlflow-okr sync` to bring the KR state up to date. Further errors are not reported.",
        type(error).__name__,
        error,
    )
    logger.debug("mlflow-okr live update failure", exc_info=error)


def _database_gone(inner_uri: str) -> bool:
    """True when the store is a SQLite file that no longer exists (a test's tmp dir, removed)."""
    if not inner_uri.startswith("sqlite:///"):
        return False
    path = inner_uri[len("sqlite:///"):].split("?", 1)[0]
    return bool(path) and path != ":memory:" and not os.path.exists(path)


def _trace_experiments(watched: WatchedKrs, ref: KrRef) -> list[str] | None:
    """The experiments a trace KR aggregates, as matched when the definitions were loaded (None:
    not a trace KR, or one of every experiment, which `traces.measure` lists)."""
    if ref in watched.trace_krs.get(ALL_EXPERIMENTS, frozenset()):
        return None
    found = [e for e, refs in watched.trace_krs.items() if e != ALL_EXPERIMENTS and ref in refs]
    return found or None


@dataclass(frozen=True)
class CachedScans:
    """The cycles' scans as built for `watched`, over the experiments listed then, until `until`."""

    watched: WatchedKrs
    scans: dict[str, CycleScan]
    experiment_ids: set[str]  # every experiment listed (source and okr/ ones)
    until: float


class LiveKrs:
    """The live KR state keeper of one tracking store and MLflow workspace (one per process).

    `workspace`: the MLflow workspace it keeps (None: workspaces are off); its own threads act in
    it, since a new thread starts outside any request's workspace. `durable`: a server worker's
    keeper, which marks its pending work in the backend (`unsettled.py`) so that another worker
    settles it if this process is killed, and catches up on what killed ones left.
    """

    def __init__(self, inner_uri: str, workspace: str | None = None, durable: bool = False):
        self.inner_uri = inner_uri
        self.workspace = workspace
        self.durable = durable
        self._client: MlflowClient | None = None
        self._watched: WatchedKrs | None = None
        self._lock = threading.Lock()  # guards _marks, _recounts, _deleting, _restored and _thread
        self._flush_lock = threading.RLock()  # one settling at a time in this process
        # One settling at a time across the processes keeping this store; taken under _flush_lock.
        self._store_lock = SettlingLock(lambda: self.client)
        self._refresh_lock = threading.Lock()  # one reload of the definitions at a time
        self._marks = Marks()
        self._recounts = Recounts()
        # The okr.tally text this process last wrote for each KR it revised, until it is verified
        # (`_verify_or_recount`); guarded by _lock.
        self._revised_tallies: dict[KrRef, str] = {}
        # Trace and `model:` KRs (measured outside the run scan) whose traces or alias moved; _lock
        self._measured_marks = MeasuredMarks()
        self._keeps_windows = threading.Event()  # set once this process writes traces
        self._next_window_refresh = 0.0  # read and written by the writer thread only
        self._deleting: set[str] = set()  # runs being deleted: never tag them
        self._restored: set[str] = set()  # runs restored since their deletion was settled
        # Runs settled since the last check for a newly applied spec, guarded by _lock: settled
        # from definitions that may have been stale by then (see `_settle_again_if_renamed`).
        self._settled_since_check: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()  # set when the store is closed: the writer ends
        self._refresh_due = threading.Event()
        # Set by a write looked up in the definitions since the last check for a newly applied
        # spec: the writer checks again at _next_refresh, so a spec applied elsewhere (another
        # worker, another client) just before the write is found and its recount counts the write.
        self._check_owed = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_refresh = 0.0  # when the next check may run; written under _refresh_lock
        self._next_flush = 0.0  # read and written by the writer thread only
        self._next_describe = 0.0  # written under _flush_lock
        self._settle_seconds = 0.0  # recent settling time, smoothed; written under _flush_lock
        self._experiment_names: dict[str, str] = {}  # experiment id -> name; only ever grows
        self._scans: CachedScans | None = None  # written under _flush_lock
        self._markers: Markers | None = None  # a durable keeper's markers, made on first use
        self._catch_up_due = threading.Event()  # look for markers whose owners are gone
        self._next_catch_up = 0.0  # read and written by the writer thread only
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A forked child has no writer thread, and a lock held at fork time would never be
        # released there: start clean; the parent keeps its own marks.
        self._lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._store_lock = self._store_lock.forked()
        self._refresh_lock = threading.Lock()
        self._marks = Marks()
        self._recounts = Recounts()
        self._revised_tallies = {}
        self._measured_marks = MeasuredMarks()
        self._keeps_windows = threading.Event()
        self._settled_since_check = set()
        self._wake = threading.Event()
        self._check_owed = threading.Event()
        self._thread = None
        self._markers = None  # the parent's markers name the parent; the child writes its own

    # -- definitions ------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        """A client of the inner store: KR writes go straight to it and trigger no hooks."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.inner_uri)
        return self._client

    @property
    def watched(self) -> WatchedKrs:
        """The KR definitions; loaded on first use, then refreshed by the background thread."""
        watched = self._watched
        if watched is None:
            with self._refresh_lock:
                if self._watched is None:
                    self._watched = load_watched_krs(self.client)
                    self._next_refresh = time.monotonic() + REFRESH_INTERVAL
                watched = self._watched
        return watched

    def _watched_for_write(self) -> WatchedKrs:
        """The definitions a user's write is looked up in; the write owes them one more check.

        A spec applied elsewhere (another worker or client) just before the write may not be in
        them yet: the writer checks for one at most REFRESH_INTERVAL after the last check, and
        the recount of a new cycle counts the write. Later writes find the check owed already
        (one flag read).
        """
        watched = self.watched
        if not self._check_owed.is_set():
            self._check_owed.set()
            self._ensure_thread()
            self._wake.set()
        return watched

    def definitions_changed(self) -> None:
        """A spec was applied through this store: reload the definitions now, in the writer.

        Definitions loaded while the apply ran (before its spec tags) would otherwise stay in use
        until a write came REFRESH_INTERVAL later, so a first write soon after the apply marked
        nothing; the reload's recount of the new cycle counts it.
        """
        try:
            self._refresh_due.set()
            self._ensure_thread()
            self._wake.set()
        except Exception as error:  # noqa: BLE001 - fail-open: never fail the user's write
            fail_open(error)

    def refresh(self) -> bool:
        """Reload the definitions if a spec was applied since; True when they changed.

        It holds no settling lock: a reload waiting on an unreachable backend never keeps the
        process-exit settling waiting.
        """
        with self._refresh_lock:
            self._next_refresh = time.monotonic() + REFRESH_INTERVAL
            with self._lock:
                settled, self._settled_since_check = self._settled_since_check, set()
            signature = published_signature(self.client)
            previous = self._watched
            if previous is not None and signature == previous.signature:
                return False
            self._watched = load_watched_krs(self.client)
            if previous is not None:
                self._recount_republished(set(self._watched.signature) - set(previous.signature))
                self._settle_again_if_renamed(previous, settled)
            return True

    def _settle_again_if_renamed(self, used: WatchedKrs, run_ids: set[str]) -> None:
        """Mark again the runs settled from definitions `used` if the current ones name run tags
        otherwise: a cycle published elsewhere since may have made another cycle's KR ids shared
        (`okr.kr.<id>/<cycle>`) or become a run's innermost cycle (okr.cycle). Its `apply` re-tagged
        the runs, and a settling from the older definitions after it would have put the old
        names back; nothing else would look at those runs again."""
        current = self._watched
        if not run_ids or current is None or current is used:
            return
        renamed = any(
            published.spec.run_naming != used.cycles[experiment_id].spec.run_naming
            for experiment_id, published in current.cycles.items()
            if experiment_id in used.cycles
        )
        if renamed:
            for run_id in run_ids:
                self._mark(run_id, ALL_KRS)

    def _recount_republished(self, signature_entries: set[tuple[str, str]]) -> None:
        """Schedule a recount of the cycles published or revised since the last load.

        The writes this process noted between the apply and this reload were looked up in the
        old definitions, so the ones that concern the new KRs were never marked.
        """
        watched = self._watched
        experiment_ids = {e for e, _ in signature_entries if watched is not None and e in watched.cycles}
        if not experiment_ids:
            return
        markers = self._durable_markers() if self.durable else None
        if markers is not None:
            with markers.lock:
                markers.ensure(experiment_ids)
        now = time.monotonic()
        with self._lock:
            for experiment_id in experiment_ids:
                for _, kr in watched.cycles[experiment_id].spec.key_results():
                    self._schedule_check((experiment_id, kr.id), now)
        self._ensure_thread()
        self._wake.set()

    # -- marks (the user's thread) ----------------------------------------------------------

    def written(
        self,
        run_id: str,
        metric_keys: Iterable[str] = (),
        tag_keys: Iterable[str] = (),
        param_keys: Iterable[str] = (),
    ) -> None:
        """Note a write: a dictionary lookup per key; KR work only for keys some KR uses."""
        try:
            watched = self._watched_for_write()
            touched: set[KrRef] = set()
            for keys, index in (
                (metric_keys, watched.metric_krs),
                (tag_keys, watched.tag_krs),
                (param_keys, watched.param_krs),
            ):
                for key in keys:
                    krs = index.get(key)
                    if krs:
                        touched.update(krs)
            if touched:
                self._mark(run_id, touched)
                # A `model:` KR counts the run behind its alias, which no run scan covers.
                self._mark_measured(frozenset(touched & watched.run_model_krs))
        except Exception as error:  # noqa: BLE001 - fail-open: never fail the user's write
            fail_open(error)

    def traces_written(self, experiment_id: str | None = None, assessments: bool = False) -> None:
        """Note a trace write (a trace, spans, an assessment): the writer re-measures the trace KRs
        it concerns with MLflow's aggregation, as `sync` does. A set lookup when no KR reads traces."""
        try:
            watched = self._watched_for_write()
            touched = watched.trace_krs_of(experiment_id)
            if assessments:
                touched = touched | watched.assessment_krs
            if not self._keeps_windows.is_set():
                self._keeps_windows.set()
            self._mark_measured(touched)
        except Exception as error:  # noqa: BLE001 - fail-open: never fail the user's write
            fail_open(error)

    def model_changed(self, name: str) -> None:
        """Note a registry write to model `name` (an alias set or removed, a version deleted): the
        writer re-reads the `model:` KRs that follow its aliases."""
        try:
            self._mark_measured(self._watched_for_write().model_krs.get(name, frozenset()), at_once=True)
        except Exception as error:  # noqa: BLE001 - fail-open: never fail the user's write
            fail_open(error)

    def _mark_measured(self, touched: frozenset[KrRef], at_once: bool = False) -> None:
        if not touched:
            return
        if not self.durable:
            first = self._add_measured(touched, at_once)
        else:
            markers = self._durable_markers()
            with markers.lock:
                # The marker stands before the mark it covers, and cannot be removed in between.
                markers.ensure({experiment_id for experiment_id, _ in touched})
                first = self._add_measured(touched, at_once)
        if first or at_once:  # later marks find the writer waiting for these to be due
            self._ensure_thread()
            self._wake.set()

    def _add_measured(self, touched: frozenset[KrRef], at_once: bool = False) -> bool:
        """Add these measured marks (`at_once`: due now); True when none were waiting."""
        with self._lock:
            return self._measured_marks.add(touched, time.monotonic(), at_once)

    def run_changed(self, run_id: str) -> None:
        """Note a change to the run itself (end, deletion, restore): the writer settles it soon.

        With MLFLOW_OKR_RUN_END_BUDGET set, it settles now while settling is that cheap.
        """
        try:
            watched = self._watched_for_write()
            if not watched.cycles:
                return
            self._mark(run_id, ALL_KRS)
            self._mark_measured(watched.run_model_krs)  # the run may be the one behind an alias
            budget = run_end_budget()
            if budget > 0 and self._settle_seconds <= budget:
                self.flush()
        except Exception as error:  # noqa: BLE001 - fail-open
            fail_open(error)

    def deleting(self, run_id: str, deleting: bool = True) -> None:
        """Note that `run_id` is being deleted (or was restored): the writer must not tag it."""
        with self._lock:
            if deleting:
                self._deleting.add(run_id)
                self._restored.discard(run_id)
            else:
                self._deleting.discard(run_id)
                self._restored.add(run_id)

    def _mark(self, run_id: str, krs: set[KrRef] | None) -> None:
        if not self.durable:
            with self._lock:
                self._marks.add(run_id, krs)
        else:
            markers = self._durable_markers()
            experiment_ids = set(self.watched.cycles) if krs is ALL_KRS else {e for e, _ in krs}
            with markers.lock:
                # The marker stands before the mark it covers, and cannot be removed in between.
                markers.ensure(experiment_ids)
                with self._lock:
                    self._marks.add(run_id, krs)
        self._ensure_thread()
        self._wake.set()

    def _durable_markers(self) -> Markers:
        if self._markers is None:
            with self._lock:
                if self._markers is None:
                    self._markers = Markers(self.client, Owner.this_process())
        return self._markers

    def _remove_markers_if_settled(self) -> None:
        """Remove this process's markers once nothing is marked, being settled or due a recount."""
        markers = self._markers
        if markers is None or not markers.standing:
            return
        with self._flush_lock, markers.lock:
            with self._lock:
                settled = not (self._marks.runs or self._recounts.last_revised or self._measured_marks.krs)
            if settled:
                markers.remove()

    def catch_up(self) -> None:
        """Count afresh the cycles that carry a marker whose owner is gone, then remove it.

        A durable keeper does this when its server starts and every HEARTBEAT while it works;
        it costs one listing of the cycle experiments unless a killed worker left work.
        """
        with compat.workspace_scope(self.workspace), self._flush_lock:
            owner = self._durable_markers().owner
            orphans = orphaned_markers(state.list_cycle_experiments(self.client), owner, time.time())
            if not orphans:
                return
            self.refresh()
            for experiment_id, keys in sorted(orphans.items()):
                with self._store_lock:
                    published = self.watched.cycles.get(experiment_id)
                    if published is not None:
                        self._recount_cycle(published)
                    for key in keys:
                        remove_marker(self.client, experiment_id, key)

    def start_catch_up(self) -> None:
        """Have the writer thread catch up (`catch_up`) now, without waiting for it."""
        self._catch_up_due.set()
        self._ensure_thread()
        self._wake.set()

    # -- the background writer --------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mlflow-okr-live", daemon=True)
                self._thread.start()

    def _has_work(self) -> bool:
        with self._lock:
            return bool(self._marks.runs or self._recounts.last_revised or self._measured_marks.krs)

    def _run(self) -> None:
        with compat.workspace_scope(self.workspace):
            self._write_until_idle()

    def _write_until_idle(self) -> None:
        while not self._stop.is_set():
            timeout = IDLE_EXIT
            next_due = self._next_due()
            if next_due is not None:
                timeout = max(0.0, next_due - time.monotonic())
            woken = self._wake.wait(timeout)
            if self._stop.is_set():
                return
            if _database_gone(self.inner_uri):
                self.close()  # nothing this writer does can land any more
                return
            if (
                not woken
                and not self._has_work()
                and not self._refresh_due.is_set()
                and not self._check_owed.is_set()
                and not self._catch_up_due.is_set()
                and not self._windowed_krs()
            ):
                return  # idle: the next mark starts a new writer
            delay = self._next_flush - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            self._wake.clear()
            try:
                checked = self._check_owed.is_set() and time.monotonic() >= self._next_refresh
                if self._refresh_due.is_set() or checked:
                    # Cleared before the check reads: a write after this point owes the next one.
                    self._refresh_due.clear()
                    self._check_owed.clear()
                    self.refresh()
                self._settle_marks()
                self._refresh_windows()
                self._settle_measured(time.monotonic())
                self._recount(time.monotonic())
                self._keep_markers()
            except Exception as error:  # noqa: BLE001 - fail-open
                fail_open(error)
            # Resting SETTLE_REST_FACTOR times as long as settling recently took keeps the writer
            # to a tenth of the process (and of the database's time, in a busy server, where the
            # settling slows down and the marks coalesce for longer); recounts are spaced by the
            # schedule's BACKGROUND_SHARE_FACTOR.
            rest = max(FLUSH_INTERVAL, SETTLE_REST_FACTOR * self._settle_seconds)
            self._next_flush = time.monotonic() + rest
            with self._lock:
                if self._marks.runs:
                    self._wake.set()

    def _next_due(self) -> float | None:
        """The next moment the writer has something to do without being woken (None: nothing)."""
        with self._lock:
            moments = [self._recounts.next_due(), self._measured_marks.due()]
        if self._check_owed.is_set():
            moments.append(self._next_refresh)
        if self._windowed_krs():
            moments.append(self._next_window_refresh)
        due = [moment for moment in moments if moment is not None]
        return min(due) if due else None

    def _windowed_krs(self) -> frozenset[KrRef]:
        """The windowed trace KRs this keeper re-measures on a schedule: in a server worker, or in
        a process that writes traces; none elsewhere (a training script never measures them)."""
        if not self.durable and not self._keeps_windows.is_set():
            return frozenset()
        try:
            return self.watched.windowed_krs  # loads the definitions in a worker that got no write
        except Exception as error:  # noqa: BLE001 - fail-open: the writer's loop must go on
            fail_open(error)
            return frozenset()

    def _refresh_windows(self) -> None:
        """Mark the windowed trace KRs every WINDOW_REFRESH: their traces leave the window with time.

        No marker covers these marks: a killed worker's successor refreshes them on its own schedule.
        """
        if time.monotonic() < self._next_window_refresh:
            return
        windowed = self._windowed_krs()
        if windowed:
            self._next_window_refresh = time.monotonic() + WINDOW_REFRESH
            self._add_measured(windowed)

    def _keep_markers(self) -> None:
        """A durable keeper's upkeep: refresh or remove its markers, catch up on gone owners'."""
        if not self.durable:
            return
        self._remove_markers_if_settled()
        if self._markers is not None and self._markers.standing:
            self._markers.refresh()
        if self._catch_up_due.is_set() or time.monotonic() >= self._next_catch_up:
            self._catch_up_due.clear()
            self._next_catch_up = time.monotonic() + HEARTBEAT
            self.catch_up()

    def close(self) -> None:
        """Stop the writer and drop what it had left; `mlflow-okr sync` repairs the rest."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._marks = Marks()
            self._recounts = Recounts()
            self._revised_tallies = {}

    def flush_at_exit(self) -> None:
        """Settle everything still marked and recount what was revised: the process is ending.

        Waits at most EXIT_FLUSH_TIMEOUT: a backend that went away (a stopped server, with
        MLflow's HTTP retries) must never hold the user's process open.
        """
        if self._stop.is_set():
            return
        worker = threading.Thread(target=self._flush_fail_open, name="mlflow-okr-exit", daemon=True)
        worker.start()
        worker.join(EXIT_FLUSH_TIMEOUT)
        if worker.is_alive():
            logger.warning(
                "mlflow-okr could not settle key results within %.0f s at exit (is the tracking "
                "backend reachable?). Your MLflow data was stored; run `mlflow-okr sync` to bring "
                "the KR state up to date.",
                EXIT_FLUSH_TIMEOUT,
            )

    def _flush_fail_open(self) -> None:
        # Another process's settling may hold the store's lock for a while (a count of a large
        # cycle): at exit, settle without it sooner, its KRs owed a count afresh by whoever is next.
        self._store_lock.wait_limit = EXIT_LOCK_WAIT
        # The writes since the last check for a newly applied spec owe one (`_watched_for_write`):
        # the process ends before the writer would make it. Without work left, nothing is owed.
        if self._check_owed.is_set() and (self._has_work() or self._settled_since_check):
            self._check_owed.clear()
            try:
                with compat.workspace_scope(self.workspace):
                    self.refresh()
            except Exception as error:  # noqa: BLE001 - fail-open
                fail_open(error)
        # A failed settling (a database locked by another worker also settling at exit) keeps its
        # marks and schedules recounts: try again, a few times, before the process ends.
        for _ in range(SETTLE_ATTEMPTS):
            try:
                self.flush()
                with compat.workspace_scope(self.workspace):
                    self._recount(None)  # the verification of what the first recount wrote
                self._remove_markers_if_settled()
                return
            except Exception as error:  # noqa: BLE001 - fail-open
                fail_open(error)

    # -- settling ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Settle every marked run and recount every revised KR now: afterwards the stored KR
        state equals a recompute of what this process wrote."""
        with compat.workspace_scope(self.workspace), self._flush_lock:
            self._settle_marks()
            self._settle_measured(None)
            self._recount(None)
        self._remove_markers_if_settled()

    def _settle_measured(self, now: float | None) -> None:
        """Re-measure the marked trace KRs (two SQL aggregates each) and `model:` KRs (the run
        behind the alias), as `sync` does, and write what moved; only once they are due at `now`
        (None: now, whatever the schedule)."""
        with self._flush_lock:
            with self._lock:
                marks = self._measured_marks.take(now)
            if not marks:
                return
            watched = self.watched
            unsettled = set(marks)
            try:
                with self._store_lock:  # objective scores combine these KRs with the others
                    self._measure(watched, marks, unsettled)
            except Exception:
                with self._lock:  # tried again at the next settling; `sync` repairs the rest
                    self._measured_marks.add(unsettled, time.monotonic())
                raise

    def _measure(self, watched: WatchedKrs, marks: set[KrRef], unsettled: set[KrRef]) -> None:
        """Re-measure these marked KRs, removing each cycle's from `unsettled` once written."""
        for experiment_id in sorted({experiment_id for experiment_id, _ in marks}):
            published = watched.cycles.get(experiment_id)
            if published is not None:
                kr_ids = [k for e, k in marks if e == experiment_id and k in published.kr_runs]
                # Neither kind is counted from runs: an empty scan; `new_computations` reads each
                # one's own source.
                scan = CycleScan(published.spec)
                computations = new_computations(self.client, published.spec, scan, kr_ids)
                for kr_id, computation in computations.items():
                    computation.experiment_ids = _trace_experiments(watched, (experiment_id, kr_id))
                self._write(published, computations, revision=True)
            unsettled -= {ref for ref in marks if ref[0] == experiment_id}

    def _settle_marks(self) -> None:
        with self._flush_lock:
            with self._lock:
                marks, self._marks = self._marks, Marks()
            if not marks.runs:
                return
            started = time.monotonic()
            try:
                with self._store_lock:
                    self._settle(marks)
            except Exception:
                # A mark dropped here would leave its run's tags stale until the next sync: keep it
                # for the next settling, a few times, then give up (fail-open reports it). Tags may
                # have been written without their tallies: recount the cycles too.
                now = time.monotonic()
                with self._lock:
                    if marks.failures + 1 < SETTLE_ATTEMPTS:
                        marks.failures += 1
                        marks.merge(self._marks)
                        self._marks = marks
                    for experiment_id, published in (self._watched.cycles if self._watched else {}).items():
                        for _, kr in published.spec.key_results():
                            self._schedule_check((experiment_id, kr.id), now)
                raise
            # Smoothed, so one costly settling (a recount standing in for a revision, the UI
            # descriptions) does not hold the next one back while a busy process still backs off.
            seconds = time.monotonic() - started
            self._settle_seconds += SETTLE_SMOOTHING * (seconds - self._settle_seconds)

    def _recount(self, now: float | None) -> None:
        """Verify or recount the cycles of the KRs due at `now` (None: all scheduled).

        Marks waiting to be settled mean writes are still coming: then only the interval counts.
        """
        with self._flush_lock:
            with self._lock:
                refs = self._recounts.take(now, busy=bool(self._marks.runs))
            if not refs:
                return
            watched = self.watched
            for experiment_id in sorted({experiment_id for experiment_id, _ in refs}):
                published = watched.cycles.get(experiment_id)
                if published is not None:
                    with self._store_lock:  # a cycle at a time: a count from all its runs is long
                        self._verify_or_recount(published, {kr_id for e, kr_id in refs if e == experiment_id})

    def _verify_or_recount(self, published: state.PublishedCycle, kr_ids: set[str]) -> None:
        """Make sure the revisions of these KRs stand, reading only the cycle's KR runs, or else
        count the cycle from all its runs.

        A revision stands when the KR run still holds the tally this process wrote. Another
        writer that settled the KR since left its own: after this one, under the settling lock,
        or without it (a client through a server, `mlflow-okr sync`), where it may have revised
        the tally this one was replacing. Either way the cycle is counted afresh. Where all
        hold, the KRs are settled from those tallies, with the UI descriptions a revision may
        have left for later. A KR scheduled for another reason (a newly applied spec, a failed
        settling, a revision without the lock) is recounted.
        """
        experiment_id = published.experiment_id
        with self._lock:
            wrote = {kr_id: self._revised_tallies.get((experiment_id, kr_id)) for kr_id in kr_ids}
        if any(not text for text in wrote.values()):
            self._recount_cycle(published, scheduled=True)
            return
        started = time.monotonic()
        objective_runs: dict[str, Any] = {}
        kr_runs = read_kr_runs(self.client, published, objective_runs)
        computations: dict[str, KrComputation] = {}
        for kr_id, text in wrote.items():
            kr, run = published.spec.find_key_result(kr_id), kr_runs.get(kr_id)
            if kr is None or run is None:
                continue
            computation = None
            if tallies_agree(run.data.tags.get(vocabulary.TAG_TALLY, ""), text or ""):
                computation = self._saved_computation(kr, run)
            if computation is None:
                self._recount_cycle(published, scheduled=True)
                return
            computations[kr_id] = computation
        written, texts = self._write(published, computations, kr_runs, objective_runs=objective_runs)
        seconds = time.monotonic() - started
        with self._lock:
            for kr_id in kr_ids:
                ref = (experiment_id, kr_id)
                self._revised_tallies.pop(ref, None)
                self._recounts.recounted(ref, started, seconds)
                if kr_id in written:  # another writer's older state was repaired: look once more
                    self._schedule_check(ref, time.monotonic(), texts.get(kr_id))

    def _schedule_check(self, ref: KrRef, now: float, tally: str | None = None) -> None:
        """Schedule a check of `ref` once its writes pause (called with _lock held): a verification
        of `tally`, the okr.tally text this process wrote for it, or a recount (no `tally`, or a
        recount owed already)."""
        self._recounts.revised(ref, now)
        owed = self._revised_tallies.get(ref) == RECOUNT_OWED
        # Written without the store's lock (it stayed busy): the check could not tell whether
        # another process's revision was written over, so the KR is counted afresh.
        unlocked = self._store_lock.bypassed
        self._revised_tallies[ref] = RECOUNT_OWED if owed or unlocked or not tally else tally

    def _recount_cycle(self, published: state.PublishedCycle, scheduled: bool = False) -> None:
        """Count the cycle's KRs from all their runs, as `sync` does, and write what moved.

        Every run in scope gets its okr.* tags reconciled on the way, so the tags (the verdicts
        the next revision starts from) match the tallies written, and a tag another process wrote
        from older facts is repaired too.
        """
        started = time.monotonic()
        writes = RunTagWrites(self.client)
        reconcile = functools.partial(self._reconcile_run_tags, published.spec, writes)
        computations, _ = compute_key_results(self.client, published.spec, on_run=reconcile)
        writes.flush()
        # A scheduled recount (writes paused) always refreshes the UI descriptions; one that stands
        # in for a revision refreshes them as a revision does.
        written, texts = self._write(published, computations, revision=not scheduled)
        seconds = time.monotonic() - started
        with self._lock:
            for kr_id in computations:
                ref = (published.experiment_id, kr_id)
                self._revised_tallies.pop(ref, None)
                self._recounts.recounted(ref, started, seconds)
                if kr_id in written:
                    # Another process may have written between our read and our write: look
                    # once more, until the KR holds what we wrote.
                    self._schedule_check(ref, time.monotonic(), texts.get(kr_id))

    def _reconcile_run_tags(
        self, spec: OkrSpec, writes: RunTagWrites, run: Any, verdicts: dict[str, Verdict]
    ) -> None:
        if not self._is_deleting(run.info.run_id):
            writes.add(run, plan_run_tags(spec, run, verdicts))

    def _is_deleting(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._deleting

    def _cycle_scans(
        self, watched: WatchedKrs, experiment_ids: set[str] | None = None
    ) -> dict[str, CycleScan]:
        """The scan of every published cycle, by experiment id of the cycle.

        The source experiments are listed again every REFRESH_INTERVAL, or at once when a marked
        run's experiment (`experiment_ids`) is not among those listed (a new experiment).
        """
        cached = self._scans
        fresh = (
            cached is not None
            and cached.watched is watched
            and time.monotonic() < cached.until
            and (experiment_ids is None or experiment_ids <= cached.experiment_ids)
        )
        if not fresh:
            experiments = state.source_experiments(self.client)
            scans = {
                experiment_id: CycleScan.build(self.client, published.spec, experiments=experiments)
                for experiment_id, published in watched.cycles.items()
            }
            listed = {experiment.experiment_id for experiment in experiments} | watched.okr_experiment_ids
            cached = self._scans = CachedScans(watched, scans, listed, time.monotonic() + REFRESH_INTERVAL)
        return cached.scans

    def _settle(self, marks: Marks) -> None:
        """Tag the marked runs, revise the KRs their verdicts changed, and write what moved."""
        watched = self.watched
        scans = self._cycle_scans(watched)
        keys = None
        for scan in scans.values():
            keys = scan.fact_keys() if keys is None else keys.merge(scan.fact_keys())
        if keys is None:
            return
        runs = reader_for(self.client, keys).get_runs(marks.runs, keys)
        scans = self._cycle_scans(watched, {run.info.experiment_id for run in runs.values()})
        changes: dict[str, dict[str, list[VerdictChange]]] = {}  # cycle -> KR -> changes
        # Cycles to count afresh; all of them when a marked run is gone (`mlflow gc`): its start
        # time, and so its cycles, can no longer be read.
        recount = set(scans) if len(runs) < len(marks.runs) else set()
        writes = RunTagWrites(self.client)
        for run_id, run in runs.items():
            if self._is_okr_run(run, watched):
                continue
            with self._lock:
                # A deleted run keeps its okr.* tags (MLflow writes no tags to a deleted run), so
                # they cannot say whether a tally still counts it; a restored run's tags are
                # older than its deletion. Either way its cycles are counted afresh.
                moved = run.info.lifecycle_stage != "active" or run_id in self._restored
                self._restored.discard(run_id)
                if run.info.lifecycle_stage != "active":
                    self._deleting.discard(run_id)  # read as deleted: it gets no tag from here on
            for experiment_id, scan in scans.items():
                if not scan.spec.cycle.contains(run.info.start_time):
                    continue
                if moved:
                    recount.add(experiment_id)
                    continue
                for kr_id, change in self._run_changes(run, marks.runs[run_id], experiment_id, scan, writes):
                    changes.setdefault(experiment_id, {}).setdefault(kr_id, []).append(change)
        writes.flush()
        with self._lock:
            self._settled_since_check.update(runs)
        # Definitions reloaded while these runs were settled: the reload did not see them.
        self._settle_again_if_renamed(watched, set(runs))
        for experiment_id in recount:
            self._recount_cycle(watched.cycles[experiment_id])
        for experiment_id, kr_changes in changes.items():
            if experiment_id not in recount:
                self._revise(watched.cycles[experiment_id], kr_changes)

    def _run_changes(
        self, run: Any, krs: set[KrRef] | None, experiment_id: str, scan: CycleScan, writes: RunTagWrites
    ) -> list[tuple[str, VerdictChange]]:
        """Plan an active run's okr.* tags for this cycle (into `writes`); return its verdict changes."""
        spec = scan.spec
        info = run.info
        verdicts = scan.verdicts(run)
        plan = plan_run_tags(spec, run, verdicts)
        if not self._is_deleting(info.run_id):
            writes.add(run, plan)
        in_scope = set(scan.scopes)
        marked = in_scope if krs is ALL_KRS else {k for e, k in krs if e == experiment_id}
        found = []
        # Every KR in scope, not only the marked ones: the run's tags take every verdict its facts
        # decide now (facts read after the marks were taken, a write through another worker), and
        # a verdict or a sum's value tagged without its tally revised would make the next write
        # look like one the tally already counts.
        summing = spec.summing_kr_ids
        for kr_id in sorted(in_scope):
            old = verdict_from_tag(
                plan.current.get(vocabulary.source_tag(spec.run_tag_id(kr_id))),
                plan.current.get(vocabulary.value_tag(spec.run_tag_id(kr_id))),
            )
            new = verdicts.get(kr_id)
            if old is None and new is None:
                continue
            unchanged = old is not None and new is not None and old.tag_value == new.tag_value
            if unchanged and new.state == "counted":
                # A sum's value is in the run's tags: the tally takes a new one whether or not a
                # write marked the KR. Another aggregate's counted value is not: only the
                # settling of the write that marked it revises the tally.
                unchanged = old.value == new.value if kr_id in summing else kr_id not in marked
            if unchanged:
                continue
            found.append((kr_id, VerdictChange(info.run_id, info.start_time, old, new)))
        return found

    def _revise(self, published: state.PublishedCycle, kr_changes: dict[str, list[VerdictChange]]) -> None:
        """Revise the saved tallies of these KRs; recount the ones that cannot be revised."""
        if any(kr_id not in published.kr_runs for kr_id in kr_changes):
            self.refresh()  # the spec was applied after we read it: pick up the new KR runs
            published = self.watched.cycles.get(published.experiment_id, published)
        objective_runs: dict[str, Any] = {}
        kr_runs = read_kr_runs(self.client, published, objective_runs)
        computations: dict[str, KrComputation] = {}
        for kr_id, kr_changes_of_kr in kr_changes.items():
            kr = published.spec.find_key_result(kr_id)
            run = kr_runs.get(kr_id)
            if kr is None or run is None:
                continue
            computation = self._saved_computation(kr, run)
            if computation is None or not revise_tally(computation.tally, kr_changes_of_kr):
                self._recount_cycle(published)  # counts every KR of the cycle afresh
                return
            computations[kr_id] = computation
        _, texts = self._write(published, computations, kr_runs, revision=True, objective_runs=objective_runs)
        now = time.monotonic()
        with self._lock:
            for kr_id in computations:
                self._schedule_check((published.experiment_id, kr_id), now, texts.get(kr_id))

    def _write(
        self,
        published: state.PublishedCycle,
        computations: dict[str, KrComputation],
        kr_runs: dict | None = None,
        revision: bool = False,
        objective_runs: dict | None = None,
    ) -> tuple[set[str], dict[str, str]]:
        """Settle these computations (`revision`: while writes go on); return the ids of the KRs
        written, and the okr.tally text of each KR settled."""
        if not computations:
            return set(), {}
        now = dt.datetime.now(dt.timezone.utc)
        statuses = computed_statuses(self.client, published, computations, now)
        # The UI descriptions take a few reads to render: a revision refreshes them at most every
        # DESCRIBE_INTERVAL, a recount or the check after a pause in the writes always.
        describe = not revision or time.monotonic() >= self._next_describe
        texts = tally_texts(computations)
        settled = settle_key_results(
            self.client, published, statuses, texts, now,
            kr_runs=kr_runs, describe=describe, objective_runs=objective_runs,
        )
        if describe and settled.written:
            self._next_describe = time.monotonic() + DESCRIBE_INTERVAL
        return settled.written, texts

    def _saved_computation(self, kr: Any, run: Any) -> KrComputation | None:
        """The KR's computation from the tally saved on its KR run `run`; None when none was saved
        for this definition and baseline."""
        baseline, _ = state.resolve_baseline(self.client, kr)
        tally = stored_tally(run, kr, baseline)
        return None if tally is None else KrComputation(kr, tally, baseline)

    def _is_okr_run(self, run: Any, watched: WatchedKrs) -> bool:
        experiment_id = run.info.experiment_id
        if experiment_id in watched.okr_experiment_ids:
            return True
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self.client.get_experiment(experiment_id).name
        return vocabulary.is_okr_experiment_name(self._experiment_names[experiment_id])
