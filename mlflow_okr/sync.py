"""`sync`: recompute every KR of the sets it covers, compare with the stored state, write what drifted.

One pass reads each source run once for all the sets (`sync_sets`): it counts each KR from scratch
(`compute.count_run`, as `compute.compute_key_results` does for one set), reconciles every source
run's okr.* tags on the way, and settles each set's KR state with the function the live store uses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import state, vocabulary
from mlflow_okr.compute import (
    KrComputation,
    ProgressCallback,
    computed_statuses,
    count_run,
    new_computations,
    note_dataset_changes,
    tally_texts,
)
from mlflow_okr.engine import BOARDS, Verdict
from mlflow_okr.facts import FactKeys, reader_for
from mlflow_okr.kr_state import KrDrift, read_kr_runs, settle_key_results
from mlflow_okr.organization import organization_status
from mlflow_okr.results import CycleStatus, cycle_status
from mlflow_okr.scope import (
    CycleScan,
    RunMemo,
    RunTagWrites,
    apply_tag_changes,
    plan_run_tags,
    run_tags_settled,
)
from mlflow_okr.spec import OkrSpec, as_utc

MAX_DRIFT_SAMPLES = 200
# A pass allocates millions of short-lived containers that reference counting frees. With the
# collector's default (a young collection every 700 net allocations) collections took about a
# tenth of a steady-state sync of 100,000 runs; every 50,000 they cost next to nothing, and the
# pass's peak memory is the same.
PASS_YOUNG_THRESHOLD = 50_000
UNREADABLE_RUN = "(a run you may not read)"
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")  # MLflow's run ids, as a saved tally names them

__all__ = ["ProgressCallback", "RunDrift", "SyncResult", "stored_cycle_status", "sync"]


class RunDrift(BaseModel):
    run_id: str
    tag: str
    stored: str | None = None
    computed: str | None = None


class SyncResult(BaseModel):
    """What `sync` found and did, over every set it covered (`sets`: `2026-Q4`, `2026-Q4/team-a`)."""

    cycle: str
    sets: list[str] = []
    runs_scanned: int
    kr_drift: list[KrDrift]
    run_drift: list[RunDrift]
    run_drift_count: int
    written: bool
    status: CycleStatus

    @property
    def scope(self) -> str:
        """`cycle 2026-Q4` for one unnamed set, else the sets: `sets 2026-Q4/team-a, 2026-Q4/team-b`."""
        if len(self.sets) <= 1 and "/" not in "".join(self.sets):
            return f"cycle {self.cycle}"
        return "sets " + ", ".join(self.sets)

    @property
    def drifted(self) -> bool:
        return bool(self.kr_drift) or self.run_drift_count > 0


def runs_left_behind(
    client: MlflowClient, spec: OkrSpec, others: list[str] | None = None
) -> Iterable[Any]:
    """Runs of the spec's cycle still tagged for one of its KRs in experiments `others`.

    `others` (default: the experiments no KR of the spec looks at) are where the pass did not read
    the cycle's runs, so it cannot see these tags; no KR looks there any more (the spec changed).
    Only this set's own verdict tags are looked for: `okr.krs` is on every run another team's set
    counts, and searching it made each set's sync read most of the store.
    """
    if others is None:
        scanned = set(CycleScan.build(client, spec).experiment_ids)
        others = [e for e in state.source_experiment_ids(client, []) if e not in scanned]
    cycle = spec.cycle
    window = f"attributes.start_time >= {cycle.start_ms} AND attributes.start_time <= {cycle.end_ms}"
    if not others or not client.search_runs(others, window, max_results=1):  # mostly none: one query
        return
    seen: set[str] = set()
    for tag in sorted(verdict_tags(spec)):
        for run in state.iter_runs(client, others, f"tags.`{tag}` LIKE '%'"):
            if run.info.run_id not in seen and spec.cycle.contains(run.info.start_time):
                seen.add(run.info.run_id)
                yield run


def verdict_tags(spec: OkrSpec) -> frozenset[str]:
    """The `okr.kr.<id>` tags a run counted, pending or excluded for a metric KR of `spec` carries."""
    return frozenset(
        vocabulary.source_tag(name)
        for _, kr in spec.key_results()
        if kr.metric
        for name in {kr.id, spec.run_tag_id(kr.id)}
    )


def sync(
    client: MlflowClient,
    cycle: str | None = None,
    check: bool = False,
    now: dt.datetime | None = None,
    progress: ProgressCallback | None = None,
    team: str | None = None,
) -> SyncResult:
    """Recompute every KR of every set of the cycle (default: of every current cycle), or of one
    team's set; write what drifted, or with `check` only report it.

    One pass reads each source run once for all the sets (`sync_sets`).
    """
    now = as_utc(now or dt.datetime.now(dt.timezone.utc))
    sets = state.current_sets(client, cycle, team, now.timestamp())
    merged = sync_sets(client, sets, check, now, progress)
    computed = {(s.cycle.name, s.team): result.status for s, result in zip(sets, merged.sets, strict=True)}
    status = organization_status(client, cycle, team, now, computed=computed)
    results = merged.sets
    return SyncResult(
        cycle=sets[0].cycle.name,
        sets=[published.label for published in sets],
        runs_scanned=merged.runs_read,
        kr_drift=[drift for result in results for drift in result.kr_drift],
        run_drift=[drift for result in results for drift in result.run_drift][:MAX_DRIFT_SAMPLES],
        run_drift_count=sum(result.run_drift_count for result in results),
        written=not check,
        status=status,
    )


@dataclass
class MergedSync:
    """What one pass over several sets found: each set's result (its own status), runs read once."""

    sets: list[SyncResult]
    runs_read: int


@dataclass
class SetPass:
    """One set's share of a merged pass: its scan, its recount, and the run tags it found drifted."""

    published: state.PublishedCycle
    scan: CycleScan
    computations: dict[str, KrComputation]
    verdict_tags: frozenset[str]
    experiment_ids: frozenset[str]
    run_drift: list[RunDrift] = field(default_factory=list)
    drift_count: int = 0
    runs: int = 0

    @property
    def spec(self) -> OkrSpec:
        return self.published.spec


class RunPasses:
    """Which sets a run concerns, decided from its experiment and start time alone.

    Experiments are read over the span of the cycles of the sets that look at them, so each run is
    read once however many sets count it; a set is handed the runs of its experiments within its
    cycle (scored), and the runs of other experiments within its cycle that carry one of its verdict
    tags (left behind: their tags are removed).
    """

    def __init__(self, passes: list[SetPass], experiments: list[str]):
        self.passes = passes
        self.windows = [(p.spec.cycle.start_ms, p.spec.cycle.end_ms) for p in passes]
        spans: dict[str, tuple[int, int]] = {}
        for item, (start, end) in zip(passes, self.windows, strict=True):
            for experiment_id in item.experiment_ids:
                low, high = spans.get(experiment_id, (start, end))
                spans[experiment_id] = (min(low, start), max(high, end))
        self.spans = spans
        self.all_experiments = experiments
        # Per experiment: the sets that score its runs, and the sets whose runs left behind it may hold.
        self.scoring: dict[str, list[int]] = {}
        self.left: dict[str, list[int]] = {}
        self.left_tags: dict[str, frozenset[str]] = {}  # the verdict tags of all of those sets
        for experiment_id in {*spans, *experiments}:
            for index, item in enumerate(passes):
                if experiment_id in item.experiment_ids:
                    self.scoring.setdefault(experiment_id, []).append(index)
                else:
                    self.left.setdefault(experiment_id, []).append(index)
                    tags = self.left_tags.get(experiment_id, frozenset())
                    self.left_tags[experiment_id] = tags | item.verdict_tags

    def read_groups(self) -> dict[tuple[int, int], list[str]]:
        """The experiments to read, grouped by the span of time read in them."""
        groups: dict[tuple[int, int], list[str]] = {}
        for experiment_id, span in sorted(self.spans.items()):
            groups.setdefault(span, []).append(experiment_id)
        return groups

    def was_read(self, run: Any) -> bool:
        span = self.spans.get(run.info.experiment_id)
        return span is not None and span[0] <= run.info.start_time <= span[1]

    def unread(self, index: int) -> list[str]:
        """The experiments where the runs of set `index`'s cycle were not all read."""
        start, end = self.windows[index]
        return [
            experiment_id
            for experiment_id in self.all_experiments
            if experiment_id not in self.spans
            or not (self.spans[experiment_id][0] <= start and end <= self.spans[experiment_id][1])
        ]

    def of(self, run: Any) -> list[tuple[SetPass, bool]]:
        """The sets `run` concerns, in the order of the sets, each with True when it scores the run,
        False when the run was left behind (its tags for the set are removed)."""
        start_time = run.info.start_time
        experiment_id = run.info.experiment_id
        found = []
        for index in self.scoring.get(experiment_id, ()):
            start, end = self.windows[index]
            if start <= start_time <= end:
                found.append((index, True))
        tags = run.data.tags
        if not self.left_tags.get(experiment_id, frozenset()).isdisjoint(tags):
            for index in self.left[experiment_id]:
                start, end = self.windows[index]
                if start <= start_time <= end and not self.passes[index].verdict_tags.isdisjoint(tags):
                    found.append((index, False))
            found.sort()
        return [(self.passes[index], scored) for index, scored in found]


class _PassCollections:
    """The collector's thresholds while passes run: young collections every PASS_YOUNG_THRESHOLD
    allocations from the first pass's start; the process's own thresholds from the last one's end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _passes and _saved: passes may run in several threads
        self._passes = 0
        self._saved: tuple[int, ...] = ()

    @contextlib.contextmanager
    def during_pass(self) -> Iterator[None]:
        with self._lock:
            if self._passes == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(max(self._saved[0], PASS_YOUNG_THRESHOLD), *self._saved[1:])
            self._passes += 1
        try:
            yield
        finally:
            with self._lock:
                self._passes -= 1
                if self._passes == 0:
                    gc.set_threshold(*self._saved)


_pass_collections = _PassCollections()


def sync_sets(
    client: MlflowClient,
    sets: list[state.PublishedCycle],
    check: bool,
    now: dt.datetime,
    progress: ProgressCallback | None = None,
) -> MergedSync:
    """Recompute every KR of these sets in one pass over their source runs; write what drifted.

    Each run is read once and handed to every set it concerns, in the order of `sets`. A run two
    sets count carries tags of both (okr.krs lists the KR ids of both): the second set plans its
    tags against what the first one planned, and the run's tags are written once.
    """
    experiments = state.source_experiments(client)  # listed once for every set
    passes = []
    for published in sets:
        scan = CycleScan.build(client, published.spec, experiments=experiments)
        computations = new_computations(client, published.spec, scan)
        tags, experiment_ids = verdict_tags(published.spec), frozenset(scan.experiment_ids)
        passes.append(SetPass(published, scan, computations, tags, experiment_ids))
    keys = FactKeys()
    for item in passes:
        keys = keys.merge(item.scan.fact_keys())
    reader = reader_for(client, keys)
    routes = RunPasses(passes, [experiment.experiment_id for experiment in experiments])
    writes = RunTagWrites(client, write=not check)
    runs_read = 0
    with _pass_collections.during_pass():
        for (start, end), experiment_ids in routes.read_groups().items():
            for run in reader.scan(experiment_ids, start, end, keys):
                runs_read += 1
                _settle_run_tags(run, routes.of(run), writes)
                if progress is not None and runs_read % 1000 == 0:
                    progress(runs_read)
        for run in _left_behind_elsewhere(client, routes):
            _settle_run_tags(run, routes.of(run), writes)
    writes.flush()
    if progress is not None:
        progress(runs_read)
    results = []
    for item in passes:
        note_dataset_changes(item.scan, item.computations)
        results.append(_settle_set(client, item, check, now))
    return MergedSync(results, runs_read)


def _left_behind_elsewhere(client: MlflowClient, routes: RunPasses) -> Iterable[Any]:
    """Runs tagged for a set's KR where the pass did not read them (no KR of the set looks there)."""
    seen: set[str] = set()
    for index, item in enumerate(routes.passes):
        unread = routes.unread(index)
        if not unread:
            continue
        for run in runs_left_behind(client, item.spec, unread):
            if run.info.run_id not in seen and not routes.was_read(run):
                seen.add(run.info.run_id)
                yield run


def _settle_run_tags(run: Any, concerned: list[tuple[SetPass, bool]], writes: RunTagWrites) -> None:
    """Count `run` for the sets it concerns and plan its okr.* tags for all of them."""
    original: dict[str, str] | None = None  # the run's tags as read, once a set changes them
    memo = RunMemo.of(run)  # the run's facts, filters and verdicts, worked out once for every set
    for item, scored in concerned:
        verdicts: dict[str, Verdict] = {}
        if scored:
            item.runs += 1
            verdicts = count_run(item.scan, item.computations, run, memo)
        if run_tags_settled(item.spec, run, verdicts):
            continue
        plan = plan_run_tags(item.spec, run, verdicts)
        changes = plan.changes()
        if changes is None:
            continue
        if original is None:
            original = dict(run.data.tags)
        drifted = [*plan.changed, *plan.stale]
        item.drift_count += len(drifted)
        for key in drifted[:max(0, MAX_DRIFT_SAMPLES - len(item.run_drift))]:
            stored, computed = original.get(key), plan.desired.get(key)
            item.run_drift.append(RunDrift(run_id=run.info.run_id, tag=key, stored=stored, computed=computed))
        apply_tag_changes(run, changes)  # the next set plans against these
    if original is not None:
        writes.add_since(run, original)


def _settle_set(client: MlflowClient, item: SetPass, check: bool, now: dt.datetime) -> SyncResult:
    """Score one set's recount and settle its KR state; its `status` is the set's own."""
    published = item.published
    statuses = computed_statuses(client, published, item.computations, now)
    kr_runs = read_kr_runs(client, published)
    settled = settle_key_results(
        client, published, statuses, tally_texts(item.computations), now, check=check, kr_runs=kr_runs
    )
    assert settled.status is not None
    return SyncResult(
        cycle=published.spec.cycle.name,
        sets=[published.label],
        runs_scanned=item.runs,
        kr_drift=hide_unreadable_runs(client, settled.drift),
        run_drift=item.run_drift,
        run_drift_count=item.drift_count,
        written=not check,
        status=cycle_status(published.spec, statuses, now),
    )


def stored_cycle_status(
    client: MlflowClient, cycle: str | None = None, now: dt.datetime | None = None, team: str | None = None
) -> CycleStatus:
    """The current cycles (or `cycle`) as the stored KR state says, every set, parents rolled up."""
    return organization_status(client, cycle, team, now)


def _hide_in_tally(text: str, hidden: Any) -> str:
    """A saved tally as the caller may see it: a run they may not read shows neither id nor value."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # not a saved tally: hide the run ids it names
        return RUN_ID.sub(lambda match: hidden(match.group(0)), text)
    for board in (*BOARDS, "latest"):
        entries = data.get(board)
        listed = [entries] if board == "latest" and entries else entries
        if not isinstance(listed, list):
            continue
        shown = [
            entry if not isinstance(entry, list) or len(entry) < 2 or hidden(str(entry[1])) != UNREADABLE_RUN
            else UNREADABLE_RUN
            for entry in listed
        ]
        data[board] = shown[0] if board == "latest" else shown
    return json.dumps(data, sort_keys=True)


def hide_unreadable_runs(client: MlflowClient, drift: list[KrDrift]) -> list[KrDrift]:
    """Drift as the caller may see it: a run they may not read is not named (best run, tally)."""
    readable: dict[str, bool] = {}

    def hidden(run_id: str) -> str:
        if run_id not in readable:
            readable[run_id] = state.can_read_run(client, run_id)
        return run_id if readable[run_id] else UNREADABLE_RUN

    shown = []
    for item in drift:
        if item.field == "best_run_id" and item.stored:
            item = item.model_copy(update={"stored": hidden(item.stored)})
        elif item.field == "tally":
            texts = {
                side: _hide_in_tally(getattr(item, side) or "", hidden) for side in ("stored", "computed")
            }
            item = item.model_copy(update=texts)
        shown.append(item)
    return shown
