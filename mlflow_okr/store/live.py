"""Live KR updates: the hooks mark what a write touched; a writer recomputes it from the database.

The user's thread only looks keys up in a dictionary and records the run and KRs to revisit.
A background thread coalesces those marks and, at most once per `FLUSH_INTERVAL`, recomputes
the touched KRs with the shared compute path (`compute_key_results`), so every process and
server worker writes what the database says, never its own partial view. Run ends, deletions
and restores flush synchronously, and so does process exit.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_okr import state
from mlflow_okr.results import cycle_status
from mlflow_okr.store.definitions import KrRef, WatchedKrs, load_watched_krs, published_signature
from mlflow_okr.sync import (
    CycleScan,
    compute_key_results,
    computed_statuses,
    kr_drift,
    plan_run_tags,
    stored_kr_status,
    write_kr_status,
    write_objective_scores,
    write_run_tags,
)

logger = logging.getLogger("mlflow_okr")

FLUSH_INTERVAL = 3.0  # seconds between two background recomputes of the same KRs
# A recompute reads every run in the KRs' scope, so its cost grows with the store. A run end
# settles in the caller's thread only while the last recompute cost less than this; past it the
# run end is settled by the background writer, so a large store never stalls a training loop.
RUN_END_BUDGET = 0.5  # seconds; MLFLOW_OKR_RUN_END_BUDGET overrides it
# The background writer rests this many times as long as its last recompute took, so it uses a
# bounded share of the process (at most 1 / (1 + BACKGROUND_SHARE_FACTOR)) however large the store.
BACKGROUND_SHARE_FACTOR = 4.0
EXIT_FLUSH_TIMEOUT = 15.0  # seconds a process exit waits for the last settling
REFRESH_INTERVAL = 2.0  # seconds between two checks for a newly applied spec
ALL_KRS = None  # a mark that concerns every KR of the run's cycle (run ended, deleted, restored)

_warned = False
_warned_lock = threading.Lock()


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


@dataclass
class Marks:
    """Runs to revisit and, per run, the KRs a write may have changed (ALL_KRS: every KR)."""

    runs: dict[str, set[KrRef] | None] = field(default_factory=dict)
    verify: bool = False

    def add(self, run_id: str, krs: Iterable[KrRef] | None) -> None:
        """Mark `run_id` for these KRs (ALL_KRS: all of them)."""
        if krs is ALL_KRS:
            self.runs[run_id] = ALL_KRS
        elif run_id not in self.runs:
            self.runs[run_id] = set(krs)
        elif self.runs[run_id] is not ALL_KRS:
            self.runs[run_id].update(krs)  # type: ignore[union-attr]

    def merge(self, other: Marks) -> None:
        """Add every mark of `other`."""
        for run_id, krs in other.runs.items():
            self.add(run_id, krs)


class LiveKrs:
    """The live KR state keeper of one tracking store (one per process and backend URI)."""

    def __init__(self, inner_uri: str):
        self.inner_uri = inner_uri
        self._client: MlflowClient | None = None
        self._watched: WatchedKrs | None = None
        self._lock = threading.Lock()  # guards the marks
        self._flush_lock = threading.RLock()  # one recompute at a time in this process
        self._refresh_lock = threading.Lock()  # one reload of the definitions at a time
        self._marks = Marks()
        self._verify = Marks(verify=True)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_refresh = 0.0
        self._refresh_due = False
        self._next_flush = 0.0
        self._last_settle_seconds = 0.0
        self._experiment_names: dict[str, str] = {}
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A forked child has no writer thread, and a lock held at fork time would never be
        # released there: start clean; the parent keeps its own marks.
        self._lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._marks = Marks()
        self._verify = Marks(verify=True)
        self._wake = threading.Event()
        self._thread = None

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
        if time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + REFRESH_INTERVAL
            self._refresh_due = True
            self._ensure_thread()
            self._wake.set()
        return watched

    def refresh(self) -> bool:
        """Reload the definitions if a spec was applied since; True when they changed.

        It holds no recompute lock: a reload waiting on an unreachable backend never keeps the
        process-exit settling waiting.
        """
        with self._refresh_lock:
            signature = published_signature(self.client)
            if self._watched is not None and signature == self._watched.signature:
                return False
            self._watched = load_watched_krs(self.client)
            return True

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
            watched = self.watched
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
        except Exception as error:  # noqa: BLE001 - fail-open: never fail the user's write
            fail_open(error)

    def run_changed(self, run_id: str, flush: bool) -> None:
        """Note a change to the run itself (end, deletion, restore); with `flush`, settle it now.

        Settling now costs one recompute; when the last one took longer than RUN_END_BUDGET the
        background writer settles it instead (within a few recompute times; `flush()` waits).
        """
        try:
            if not self.watched.cycles:
                return
            self._mark(run_id, ALL_KRS)
            if flush and self._last_settle_seconds <= run_end_budget():
                self.flush()
        except Exception as error:  # noqa: BLE001 - fail-open
            fail_open(error)

    def _mark(self, run_id: str, krs: set[KrRef] | None) -> None:
        with self._lock:
            self._marks.add(run_id, krs)
        self._ensure_thread()
        self._wake.set()

    # -- the background writer --------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mlflow-okr-live", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            delay = self._next_flush - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._wake.clear()
            try:
                if self._refresh_due:
                    self._refresh_due = False
                    self.refresh()
                self.flush()
            except Exception as error:  # noqa: BLE001 - fail-open
                fail_open(error)
            rest = max(FLUSH_INTERVAL, BACKGROUND_SHARE_FACTOR * self._last_settle_seconds)
            self._next_flush = time.monotonic() + rest
            with self._lock:
                if self._marks.runs or self._verify.runs:
                    self._wake.set()

    def flush_at_exit(self) -> None:
        """Settle everything still marked, then verify it once: the process is ending.

        Waits at most EXIT_FLUSH_TIMEOUT: a backend that went away (a stopped server, with
        MLflow's HTTP retries) must never hold the user's process open.
        """
        worker = threading.Thread(target=self._flush_twice, name="mlflow-okr-exit", daemon=True)
        worker.start()
        worker.join(EXIT_FLUSH_TIMEOUT)
        if worker.is_alive():
            logger.warning(
                "mlflow-okr could not settle key results within %.0f s at exit (is the tracking "
                "backend reachable?). Your MLflow data was stored; run `mlflow-okr sync` to bring "
                "the KR state up to date.",
                EXIT_FLUSH_TIMEOUT,
            )

    def _flush_twice(self) -> None:
        try:
            self.flush()
            self.flush()  # the verification pass of what the first one wrote
        except Exception as error:  # noqa: BLE001 - fail-open
            fail_open(error)

    # -- recompute --------------------------------------------------------------------------

    def flush(self) -> None:
        """Recompute every marked KR from the database and write what changed."""
        with self._flush_lock:
            with self._lock:
                marks, self._marks = self._marks, Marks()
                verify, self._verify = self._verify, Marks(verify=True)
            if not marks.runs and not verify.runs:
                return
            marks.verify = not marks.runs  # only a verification pass: it schedules no other
            marks.merge(verify)
            started = time.monotonic()
            wrote = self._settle(marks)
            self._last_settle_seconds = time.monotonic() - started
            if wrote and not marks.verify:
                # Another process may have computed from older data and written after us:
                # look once more, a flush later, so the last write always reflects the database.
                with self._lock:
                    self._verify.merge(marks)

    def _settle(self, marks: Marks) -> bool:
        """Reconcile the marked runs' tags and recompute their KRs; True when anything was written."""
        watched = self.watched
        scans = {
            experiment_id: CycleScan.build(self.client, published.spec)
            for experiment_id, published in watched.cycles.items()
        }
        recompute: dict[str, set[str]] = {}
        wrote = False
        for run_id, krs in marks.runs.items():
            for experiment_id, kr_ids, tags_written in self._reconcile_run(run_id, krs, watched, scans):
                recompute.setdefault(experiment_id, set()).update(kr_ids)
                wrote = wrote or tags_written
        for experiment_id, kr_ids in recompute.items():
            wrote = bool(self._recompute(watched.cycles[experiment_id], kr_ids)) or wrote
        return wrote

    def _is_okr_run(self, run: Run, watched: WatchedKrs) -> bool:
        experiment_id = run.info.experiment_id
        if experiment_id in watched.okr_experiment_ids:
            return True
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self.client.get_experiment(experiment_id).name
        return state.is_okr_experiment_name(self._experiment_names[experiment_id])

    def _reconcile_run(
        self,
        run_id: str,
        krs: set[KrRef] | None,
        watched: WatchedKrs,
        scans: dict[str, CycleScan],
    ) -> list[tuple[str, set[str], bool]]:
        """Bring the run's okr.* tags up to date; return the KRs (per cycle) to recompute."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return []
        if self._is_okr_run(run, watched):
            return []
        found = []
        for experiment_id, published in watched.cycles.items():
            spec = published.spec
            if not spec.cycle.contains(run.info.start_time):
                continue
            scan = scans[experiment_id]
            verdicts = scan.verdicts(run)
            plan = plan_run_tags(spec, run, verdicts)
            current = plan.current
            tags_written = False
            if run.info.lifecycle_stage == "active":
                tags_written = write_run_tags(self.client, run, plan)
            marked = set(scan.scopes) if krs is ALL_KRS else {k for e, k in krs if e == experiment_id}
            concerned = {
                kr_id
                for kr_id, scope in scan.scopes.items()
                if run.info.experiment_id in scope.experiment_ids
                and spec.find_key_result(kr_id).metric in run.data.metrics  # type: ignore[union-attr]
            }
            had = {key[len(state.SOURCE_TAG_PREFIX):] for key in current if key != state.TAG_KRS}
            kr_ids = marked & (concerned | had | set(verdicts))
            if kr_ids:
                found.append((experiment_id, kr_ids, tags_written))
        return found

    def _recompute(self, published: state.PublishedCycle, kr_ids: set[str]) -> set[str]:
        """Recompute KRs with the shared path; write the ones whose stored state differs."""
        client = self.client
        now = dt.datetime.now(dt.timezone.utc)
        if any(kr_id not in published.kr_runs for kr_id in kr_ids):
            self.refresh()  # the spec was applied after we read it: pick up the new KR runs
            published = self.watched.cycles.get(published.experiment_id, published)
        computations, _ = compute_key_results(client, published.spec, kr_ids=kr_ids)
        statuses = computed_statuses(client, published, computations, now)
        kr_runs = self._kr_runs(published)  # one query for every KR run, not one per KR
        changed = set()
        for kr_id, status in statuses.items():
            run = kr_runs.get(kr_id)
            if run is None:
                continue
            stale = kr_drift(run, status, computations[kr_id].kr)
            if stale or run.data.tags.get(state.TAG_STATUS) != status.status:
                write_kr_status(client, published, status)
                changed.add(kr_id)
        if changed:
            # Objective scores need every KR: the fresh ones, and the stored state of the rest.
            merged = {
                kr.id: statuses[kr.id] if kr.id in statuses else stored_kr_status(kr_runs[kr.id], kr)
                for _, kr in published.spec.key_results()
                if kr.id in statuses or kr.id in kr_runs
            }
            write_objective_scores(client, published, cycle_status(published.spec, merged, now))
        return changed

    def _kr_runs(self, published: state.PublishedCycle) -> dict[str, Run]:
        live_ids = {run_id: kr_id for kr_id, run_id in published.kr_runs.items()}
        filter_string = f"tags.`{state.TAG_ROLE}` = 'kr'"
        return {
            live_ids[run.info.run_id]: run
            for run in state.iter_runs(self.client, [published.experiment_id], filter_string)
            if run.info.run_id in live_ids
        }
