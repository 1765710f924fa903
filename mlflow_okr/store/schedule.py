"""The live writer's schedule: which runs and KRs to revisit, and when to recount which KRs."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlflow_okr.store.definitions import KrRef

ALL_KRS = None  # a mark that concerns every KR of the run's cycle (run ended, deleted, restored)
# A KR revised run by run is checked (its saved tally read back; recounted from all its runs when
# another writer replaced it) once no write has come for RECOUNT_PAUSE, and at least every
# RECOUNT_INTERVAL while writes go on; never sooner after the last check than
# BACKGROUND_SHARE_FACTOR times that check's duration. A recount reads every run in scope (about
# 6 s at 100,000 runs on SQLite), in the user's process: so it takes at most a twentieth of that
# process however large the store, and revisions keep the state fresh between.
RECOUNT_PAUSE = 2.0
RECOUNT_INTERVAL = 30.0
BACKGROUND_SHARE_FACTOR = 20.0
# Trace and `model:` KRs are re-measured (two SQL aggregates each) once their writes pause for
# MEASURE_PAUSE, and at least every MEASURE_INTERVAL while traces stream in: a new trace shows within
# the 5 s freshness bound, and a busy serving process pays one measurement per interval, not one per
# settling. An alias move (rare, and expected within a second) is measured at once.
MEASURE_PAUSE = 1.0
MEASURE_INTERVAL = 3.0


@dataclass
class Marks:
    """Runs to revisit and, per run, the KRs a write may have changed (ALL_KRS: every KR)."""

    runs: dict[str, set[KrRef] | None] = field(default_factory=dict)
    failures: int = 0  # settlings of these marks that failed (a locked database, a timeout)

    def add(self, run_id: str, krs: Iterable[KrRef] | None) -> None:
        """Mark `run_id` for these KRs (ALL_KRS: all of them)."""
        if krs is ALL_KRS:
            self.runs[run_id] = ALL_KRS
        elif run_id not in self.runs:
            self.runs[run_id] = set(krs)
        elif self.runs[run_id] is not ALL_KRS:
            self.runs[run_id].update(krs)  # type: ignore[union-attr]

    def merge(self, other: Marks) -> None:
        for run_id, krs in other.runs.items():
            self.add(run_id, krs)


@dataclass
class Recounts:
    """KRs revised run by run since their last recount, and when each may be recounted again."""

    first_revised: dict[KrRef, float] = field(default_factory=dict)
    last_revised: dict[KrRef, float] = field(default_factory=dict)
    earliest_next: dict[KrRef, float] = field(default_factory=dict)

    @property
    def due(self) -> dict[KrRef, float]:
        """Each scheduled KR and the moment it is due once its writes have paused."""
        return {ref: self._due(ref, busy=False) for ref in self.last_revised}

    def _due(self, ref: KrRef, busy: bool) -> float:
        # While writes go on (`busy`), only the interval makes a KR due, and only once a recount's
        # cost is known (a recount holds up revisions for as long as it takes); once they pause,
        # the pause.
        if busy and ref not in self.earliest_next:
            return math.inf
        by_interval = self.first_revised[ref] + RECOUNT_INTERVAL
        # A recount counts the whole cycle, so the pause is the cycle's: a KR revised once stays
        # waiting while another KR of its cycle is still being revised.
        cycle_last = max(last for (cycle, _), last in self.last_revised.items() if cycle == ref[0])
        due = by_interval if busy else min(cycle_last + RECOUNT_PAUSE, by_interval)
        return max(due, self.earliest_next.get(ref, 0.0))

    def revised(self, ref: KrRef, now: float) -> None:
        """`ref` was revised run by run at `now`."""
        self.first_revised.setdefault(ref, now)
        self.last_revised[ref] = now

    def recounted(self, ref: KrRef, started: float, seconds: float) -> None:
        self.first_revised.pop(ref, None)
        self.last_revised.pop(ref, None)
        self.earliest_next[ref] = started + BACKGROUND_SHARE_FACTOR * seconds

    def take(self, now: float | None, busy: bool = False) -> set[KrRef]:
        """The KRs due at `now` (None: every one scheduled), removed from the schedule."""
        refs = {ref for ref in self.last_revised if now is None or self._due(ref, busy) <= now}
        for ref in refs:
            self.first_revised.pop(ref)
            self.last_revised.pop(ref)
        return refs

    def next_due(self) -> float | None:
        due = self.due
        return min(due.values()) if due else None


@dataclass
class MeasuredMarks:
    """Trace and `model:` KRs to re-measure, and when the first and the last of those marks came."""

    krs: set[KrRef] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    at_once: bool = False  # an alias moved: due now, with no pause

    def add(self, krs: Iterable[KrRef], now: float, at_once: bool = False) -> bool:
        """Mark these KRs at `now` (`at_once`: due now); True when none were waiting."""
        waiting = bool(self.krs)
        if not waiting:
            self.first = now
        self.krs.update(krs)
        self.last = now
        self.at_once = self.at_once or at_once
        return not waiting

    def due(self) -> float | None:
        """When the waiting marks are due (None: none wait)."""
        if not self.krs:
            return None
        return min(self.first + MEASURE_INTERVAL, self.last + (0.0 if self.at_once else MEASURE_PAUSE))

    def take(self, now: float | None) -> set[KrRef]:
        """The marked KRs if they are due at `now` (None: whatever the schedule), removed."""
        due = self.due()
        if due is None or (now is not None and now < due):
            return set()
        krs, self.krs, self.at_once = self.krs, set(), False
        return krs
