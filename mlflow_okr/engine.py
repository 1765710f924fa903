"""Pure OKR scoring: which runs count, current values, progress, scores and statuses.

No I/O and no clock: every caller (the live store hook, `sync`, `status`, `report`) passes in
the facts and the time, so they all share one semantics.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from mlflow_okr import vocabulary
from mlflow_okr.vocabulary import KrStatus

Direction = Literal["maximize", "minimize"]
TERMINAL_RUN_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
NOT_COUNTED_RUN_STATUSES = frozenset({"FAILED", "KILLED"})
SUCCESS_GRADE = 0.7
# Default status thresholds (okrs.yaml `status_thresholds`): progress, as a multiple of the elapsed
# fraction of the cycle, at or above which a KR is on track, or at risk.
ON_TRACK = 0.7
AT_RISK = 0.4
# A relative target or expectation: "+5%", "-10%"
RELATIVE_CHANGE = re.compile(r"^\s*([+-])\s*(\d+(?:\.\d+)?)\s*%\s*$")


class ReasonKind(enum.Enum):
    """Why a run stands as it does for a KR; readers ask this, never the reason's wording."""

    NONE = "none"  # counted
    WAITING = "waiting"  # pending: a guardrail metric not logged yet
    RUN_NOT_COUNTED = "run-not-counted"  # the run FAILED or was KILLED
    NOT_A_NUMBER = "not-a-number"  # the KR metric is NaN or infinite
    GUARDRAIL_BREACH = "guardrail-breach"  # a guardrail metric is out of bounds
    GUARDRAIL_MISSING = "guardrail-missing"  # the run ended without a guardrail metric
    OTHER_DATASET = "other-dataset"  # a dataset-pinned KR: the run's values are for other datasets
    UNKNOWN = "unknown"  # a tag this version did not write


# The wording of each reason, and the pattern that reads it back from a run's okr.kr.<id> tag:
# both live here, so rewording one rewords the other.
_REASON_PATTERNS = (
    (ReasonKind.WAITING, re.compile(r"^waiting for ")),
    (ReasonKind.RUN_NOT_COUNTED, re.compile(r"^run (FAILED|KILLED)$")),
    (ReasonKind.GUARDRAIL_MISSING, re.compile(r"^guardrail .* never logged$")),
    (ReasonKind.GUARDRAIL_BREACH, re.compile(r"^guardrail .* breaks ")),
    (ReasonKind.OTHER_DATASET, re.compile(r"^.+ logged only for dataset .+, not ")),
    (ReasonKind.NOT_A_NUMBER, re.compile(r" is \S+, not a finite number$")),
)
GUARDRAIL_TAG_PREFIX = vocabulary.EXCLUDED_PREFIX + "guardrail "  # narrows a search to breach candidates


@dataclass(frozen=True)
class Bound:
    """Inclusive bounds on a metric; either side may be open."""

    metric: str
    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def margin(self, value: float) -> float:
        """How far `value` is inside the bounds (negative when outside)."""
        margins = []
        if self.min is not None:
            margins.append(value - self.min)
        if self.max is not None:
            margins.append(self.max - value)
        return min(margins)

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class RunRule:
    """What decides whether a run counts for a metric KR, and how its values combine."""

    metric: str
    aggregate: str = "best"
    guardrails: tuple[Bound, ...] = ()
    maintain: Bound | None = None

    @property
    def sums(self) -> bool:
        """True when the value adds up the counted values (sum, mean): each one must be known."""
        return self.maintain is None and self.aggregate in ("sum", "mean")


@dataclass(frozen=True)
class RunFacts:
    """The facts about one source run that scoring needs."""

    run_id: str
    start_time: int | None
    status: str
    metrics: Mapping[str, float]
    deleted: bool = False


@dataclass(frozen=True)
class Verdict:
    """How one run stands for one KR: counted, pending, or excluded with a reason."""

    state: Literal["counted", "pending", "excluded"]
    reason: str = ""
    value: float | None = None
    reason_kind: ReasonKind = ReasonKind.NONE

    @property
    def tag_value(self) -> str:
        """The value of the run's `okr.kr.<id>` tag; cheaper to work out on each read than to cache
        (most verdicts are read once or twice)."""
        return vocabulary.verdict_text(self.state, self.reason)

    @property
    def is_guardrail_breach(self) -> bool:
        return self.reason_kind is ReasonKind.GUARDRAIL_BREACH


def verdict_from_tag(tag_value: str | None, value_text: str | None = None) -> Verdict | None:
    """The verdict a run's `okr.kr.<id>` tag records, or None when untagged.

    A counted verdict carries its value when `value_text` (the `okr.kr.<id>.value` tag that runs
    of sum and mean KRs carry) gives it.
    """
    tag = vocabulary.read_verdict(tag_value)
    if tag is None:
        return None
    if tag.state == vocabulary.COUNTED:
        value = _parsed_value(value_text)
        return Verdict("counted", "", value) if value is not None else Verdict("counted")
    if tag.state == vocabulary.PENDING:
        return Verdict("pending", "", None, ReasonKind.WAITING)
    kind = ReasonKind.UNKNOWN
    if tag.well_formed:
        kind = next((k for k, pattern in _REASON_PATTERNS if pattern.search(tag.reason)), ReasonKind.UNKNOWN)
    return Verdict("excluded", tag.reason, None, kind)


def value_text(value: float) -> str:
    """A counted value as tag text; `float` reads it back exactly."""
    return repr(float(value))


def _parsed_value(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _is_number(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def classify_run(rule: RunRule, run: RunFacts) -> Verdict | None:
    """How `run` stands for a KR with `rule`, or None when the KR does not concern it.

    The caller has already checked scope (experiments, filter, cycle); here only the run's own
    state and metrics decide.
    """
    if run.deleted or rule.metric not in run.metrics:
        return None
    value = run.metrics[rule.metric]
    if run.status in NOT_COUNTED_RUN_STATUSES:
        return Verdict("excluded", f"run {run.status}", value, ReasonKind.RUN_NOT_COUNTED)
    if not _is_number(value):
        return Verdict(
            "excluded", f"{rule.metric} is {value}, not a finite number", value, ReasonKind.NOT_A_NUMBER
        )
    finished = run.status in TERMINAL_RUN_STATUSES
    missing = []
    for guardrail in rule.guardrails:
        if guardrail.metric not in run.metrics:
            missing.append(guardrail.metric)
            continue
        guard_value = run.metrics[guardrail.metric]
        if not _is_number(guard_value) or not guardrail.holds(guard_value):
            return Verdict(
                "excluded",
                f"guardrail {guardrail.metric} = {guard_value:g} breaks {guardrail.describe()}",
                value,
                ReasonKind.GUARDRAIL_BREACH,
            )
    if missing:
        names = ", ".join(missing)
        if finished:
            return Verdict("excluded", f"guardrail {names} never logged", value, ReasonKind.GUARDRAIL_MISSING)
        return Verdict("pending", f"waiting for {names}", value, ReasonKind.WAITING)
    return Verdict("counted", "", value)


SUM_SCALE = 1074  # every finite float is a whole multiple of 2**-1074, the smallest subnormal
LEADERS = 8  # runs kept per extreme: the leader can get worse or leave this many times between recounts
BOARDS = ("lowest", "highest", "worst_margin")


def _rank(board: str, entry: tuple) -> tuple:
    """Where `entry` of `board` ranks, smallest first. Ties break on run id, so every order of
    additions gives the same runs."""
    if board == "highest":
        return (-entry[0], entry[1])
    return (entry[0], entry[1])  # lowest: (value, run id); worst_margin: (margin, run id, value)


def summaries_agree(saved: Mapping[str, Any], recounted: Mapping[str, Any]) -> bool:
    """True when a saved tally says what a recount says: the same counts, sum and latest run, and
    boards of which the shorter is the start of the longer (a board revised run by run may list
    fewer runner-ups than a recount's, every one of them exact)."""
    saved, recounted = json.loads(json.dumps(saved)), json.loads(json.dumps(recounted))
    for key in set(saved) | set(recounted):
        mine, theirs = saved.get(key), recounted.get(key)
        if key in BOARDS and isinstance(mine, list) and isinstance(theirs, list):
            depth = min(len(mine), len(theirs))
            if mine[:depth] != theirs[:depth] or (depth == 0 and mine != theirs):
                return False
        elif mine != theirs:
            return False
    return True


@dataclass
class Tally:
    """Running aggregate of one KR's runs; the order of `note` calls does not matter.

    Counted runs feed the aggregate; pending and excluded runs are counted by kind. A tally can be
    saved with `summary()` and revised run by run (`forget` the run's old verdict, `note` its new
    one), so a write to one run need not re-read every other run.

    Each extreme the aggregate reads is a board of up to LEADERS entries, best first, that are
    exactly the best of all counted runs (an unlisted run ranks after the last one listed). When
    the leader gets worse or stops counting, the next one listed takes over; only a board that
    runs dry needs a recount.
    """

    rule: RunRule
    direction: Direction | None = None
    count: int = 0
    # Only sums and means need the exact sum; the other aggregates skip it. It is kept as a whole
    # number of 2**-SUM_SCALE, the unit every finite float is a multiple of (`exact_sum`).
    scaled_sum: int | None = None
    boards: dict[str, list[tuple]] = field(default_factory=dict)  # lowest: [(value, run id)], ...
    latest: tuple[int, str, float] | None = None
    pending: int = 0
    excluded: int = 0
    guardrail_breaches: int = 0

    def __post_init__(self) -> None:
        if self.scaled_sum is None and self.needs_sum:
            self.scaled_sum = 0
        # Only the extremes the aggregate reads are kept: a run holding one that is not read must
        # not force a recount when its value moves.
        best = "lowest" if self.direction == "minimize" else "highest"
        if self.rule.maintain is not None:
            tracked = {"worst_margin"}
        else:
            tracked = {"min": {"lowest"}, "max": {"highest"}, "latest": {"latest"}}.get(
                self.rule.aggregate, {best}
            )
        self._latest = "latest" in tracked
        self.boards = {board: list(self.boards.get(board, [])) for board in BOARDS if board in tracked}

    @property
    def needs_sum(self) -> bool:
        return self.rule.sums

    def leader(self, board: str) -> tuple | None:
        entries = self.boards.get(board)
        return entries[0] if entries else None

    @property
    def lowest(self) -> tuple[float, str] | None:
        return self.leader("lowest")

    @property
    def highest(self) -> tuple[float, str] | None:
        return self.leader("highest")

    @property
    def worst_margin(self) -> tuple[float, str, float] | None:
        return self.leader("worst_margin")

    def note(self, run_id: str, verdict: Verdict, start_time: int | None) -> None:
        """Count one run's verdict."""
        if verdict.state == "counted":
            assert verdict.value is not None
            self.add(run_id, verdict.value, start_time)
        elif verdict.state == "pending":
            self.pending += 1
        else:
            self.excluded += 1
            if verdict.is_guardrail_breach:
                self.guardrail_breaches += 1

    def forget(self, run_id: str, verdict: Verdict) -> bool:
        """Take back a run noted with `verdict`; False when what remains cannot be known this way.

        That is when the run was the last one listed on a board (or holds the latest run), when a
        sum or mean would need the run's old value and the verdict lacks it, or when the counts
        say the run was never noted. The caller then recomputes the KR from all of its runs.
        """
        if verdict.state == "pending":
            if self.pending <= 0:
                return False
            self.pending -= 1
            return True
        if verdict.state == "excluded":
            if self.excluded <= 0 or (verdict.is_guardrail_breach and self.guardrail_breaches <= 0):
                return False
            self.excluded -= 1
            if verdict.is_guardrail_breach:
                self.guardrail_breaches -= 1
            return True
        if self.count <= 0 or (self.latest is not None and self.latest[1] == run_id):
            return False
        if self.needs_sum:
            if verdict.value is None or self.scaled_sum is None:
                return False
            self.scaled_sum -= _scaled(verdict.value)
        for entries in self.boards.values():
            if not self._unlist(entries, run_id):
                return False
        self.count -= 1
        return all(entries or self.count == 0 for entries in self.boards.values())

    def add(self, run_id: str, value: float, start_time: int | None) -> None:
        if self.scaled_sum is not None:
            # Floats are exact binary fractions: their exact sum does not depend on the order of
            # additions (the live hook and `sync` see runs in different orders and must agree) and
            # cannot overflow before the final rounding.
            self.scaled_sum += _scaled(value)
        count = self.count
        for board, entries in self.boards.items():
            # Every counted run so far listed: the board is complete, so the new one joins it.
            complete = len(entries) == count
            if not complete and (not entries or self._ranks_after(board, value, entries[-1])):  # most runs
                continue
            entry = self._entry(board, run_id, value)
            self._offer(board, entries, entry, complete=complete)
        self.count = count + 1
        if self._latest:
            started = start_time or 0
            if self.latest is None or (started, run_id) > (self.latest[0], self.latest[1]):
                self.latest = (started, run_id, value)

    def update(
        self, run_id: str, value: float, start_time: int | None, old_value: float | None = None
    ) -> bool:
        """A counted run stays counted with a new `value`; False when what remains cannot be known.

        A sum or mean needs the run's `old_value` to take it out. On each board the run takes its
        new place; one that falls below the last run listed leaves the board, and a board left
        empty needs a recount.
        """
        if self.count <= 0:
            return False
        if self.needs_sum:
            if old_value is None or self.scaled_sum is None:
                return False
            self.scaled_sum += _scaled(value) - _scaled(old_value)
        for board, entries in self.boards.items():
            if not self._unlist(entries, run_id):
                return False
            # The others are all listed when the board holds every counted run but this one.
            entry = self._entry(board, run_id, value)
            self._offer(board, entries, entry, complete=len(entries) == self.count - 1)
            if not entries:
                return False
        if self.latest is not None and self.latest[1] == run_id:
            self.latest = (self.latest[0], run_id, value)
        elif self._latest:
            started = start_time or 0
            if self.latest is None or (started, run_id) > (self.latest[0], self.latest[1]):
                self.latest = (started, run_id, value)
        return True

    def _ranks_after(self, board: str, value: float, last: tuple) -> bool:
        """True when a run of `value` surely ranks after `last`, the last entry of `board`, without
        building its entry (a tie is left to `_rank`, which breaks it on run id)."""
        if board == "highest":
            return value < last[0]
        if board == "worst_margin":
            assert self.rule.maintain is not None
            value = self.rule.maintain.margin(value)
        return value > last[0]

    def _entry(self, board: str, run_id: str, value: float) -> tuple:
        if board == "worst_margin":
            assert self.rule.maintain is not None
            return (self.rule.maintain.margin(value), run_id, value)
        return (value, run_id)

    def _unlist(self, entries: list[tuple], run_id: str) -> bool:
        """Take `run_id` off a board; False when the board says it is not counted at all."""
        for index, entry in enumerate(entries):
            if entry[1] == run_id:
                del entries[index]
                return True
        # Not listed: it ranks after the last one listed, unless the board lists every counted run.
        return len(entries) < self.count

    @staticmethod
    def _offer(board: str, entries: list[tuple], entry: tuple, complete: bool) -> None:
        """List an unlisted counted run's entry if it ranks before the last one listed (or the
        board is complete), keeping the best LEADERS."""
        rank = _rank(board, entry)
        if not complete and not (entries and rank < _rank(board, entries[-1])):
            return
        index = next((i for i, other in enumerate(entries) if rank < _rank(board, other)), len(entries))
        entries.insert(index, entry)
        del entries[LEADERS:]

    @property
    def exact_sum(self) -> Fraction | None:
        """The exact sum of the counted values (None when the aggregate needs none)."""
        if self.scaled_sum is None:
            return None
        return Fraction(self.scaled_sum, 1 << SUM_SCALE)

    def summary(self) -> dict[str, Any]:
        """The tally as JSON-ready data, for `from_summary`."""
        exact_sum = None
        if self.exact_sum is not None:
            exact_sum = [str(self.exact_sum.numerator), str(self.exact_sum.denominator)]
        return {
            "count": self.count,
            "sum": exact_sum,
            **{board: self.boards.get(board) for board in BOARDS},
            "latest": self.latest,
            "pending": self.pending,
            "excluded": self.excluded,
            "guardrail_breaches": self.guardrail_breaches,
        }

    @classmethod
    def from_summary(cls, rule: RunRule, direction: Direction | None, data: Mapping[str, Any]) -> Tally:
        """The tally that `summary()` saved; raises ValueError (or KeyError, TypeError) on a
        malformed one, or on one saved by a version that kept a single run per extreme."""
        scaled_sum = None
        if data["sum"] is not None:
            numerator, denominator = data["sum"]
            scaled_sum = _scaled_fraction(Fraction(int(numerator), int(denominator)))
        boards = {}
        for board in BOARDS:
            entries = data[board]
            if entries is not None:
                if any(not isinstance(entry, (list, tuple)) for entry in entries):
                    raise ValueError(f"{board} is not a list of entries")
                boards[board] = [(float(entry[0]), str(entry[1]), *entry[2:]) for entry in entries]
        latest = data["latest"]
        tally = cls(
            rule,
            direction,
            count=int(data["count"]),
            scaled_sum=scaled_sum,
            boards=boards,
            latest=None if latest is None else tuple(latest),
            pending=int(data["pending"]),
            excluded=int(data["excluded"]),
            guardrail_breaches=int(data["guardrail_breaches"]),
        )
        if tally.needs_sum and scaled_sum is None:
            raise ValueError("the summary has no sum")
        if any(not entries and tally.count for entries in tally.boards.values()):
            raise ValueError("a board is empty while runs are counted")
        return tally

    @property
    def total(self) -> float:
        """The sum of the counted values, correctly rounded whatever the order of additions."""
        assert self.exact_sum is not None
        return _to_float(self.exact_sum)

    def current(self) -> tuple[float | None, str | None]:
        """The KR's current value and the run that best represents it."""
        if self.count == 0:
            return None, None
        if self.rule.maintain is not None:
            assert self.worst_margin is not None
            return self.worst_margin[2], self.worst_margin[1]
        aggregate = self.rule.aggregate
        if aggregate == "latest":
            assert self.latest is not None
            return self.latest[2], self.latest[1]
        if aggregate == "min":
            assert self.lowest is not None
            return self.lowest
        if aggregate == "max":
            assert self.highest is not None
            return self.highest
        best = self.highest if self.direction != "minimize" else self.lowest
        assert best is not None
        if aggregate == "best":
            return best
        if aggregate == "mean":
            assert self.exact_sum is not None
            return _to_float(self.exact_sum / self.count), best[1]
        if aggregate == "sum":
            return self.total, best[1]
        if aggregate == "count":
            return float(self.count), best[1]
        raise ValueError(f"unknown aggregate {aggregate!r}")


def _scaled(value: float) -> int:
    """`value` in units of 2**-SUM_SCALE, exactly: a float's denominator is a power of two."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (SUM_SCALE + 1 - denominator.bit_length())


def _scaled_fraction(exact: Fraction) -> int:
    """A saved exact sum in units of 2**-SUM_SCALE; ValueError when it is no sum of floats."""
    denominator = exact.denominator
    if denominator & (denominator - 1) or denominator.bit_length() > SUM_SCALE + 1:
        raise ValueError(f"the saved sum {exact} is not a sum of floats")
    return exact.numerator << (SUM_SCALE + 1 - denominator.bit_length())


def _to_float(exact: Fraction) -> float:
    """The nearest float; beyond the float range, the largest finite float of that sign.

    Saturating rather than returning an infinity keeps the value storable: MLflow records an
    infinite metric as the largest float, and the stored state must equal the recompute.
    """
    try:
        return float(exact)
    except OverflowError:
        return sys.float_info.max if exact > 0 else -sys.float_info.max


def relative_change(text: str) -> float | None:
    """`+5%` -> 0.05, `-10%` -> -0.1; None when `text` is not a relative change."""
    match = RELATIVE_CHANGE.match(text)
    if match is None:
        return None
    return float(match.group(2)) / 100 * (1 if match.group(1) == "+" else -1)


def has_data(counted: int, needs_baseline: bool, baseline: float | None) -> bool:
    """Whether a KR has anything to score: a counted run, and its baseline when it needs one."""
    return counted > 0 and (not needs_baseline or baseline is not None)


def infer_direction(baseline: float, target: float, explicit: Direction | None) -> Direction | None:
    """The KR's direction: explicit, or from target vs baseline (None when they are equal)."""
    if explicit is not None:
        return explicit
    if target == baseline:
        return None
    return "maximize" if target > baseline else "minimize"


def clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def metric_progress(current: float | None, baseline: float | None, target: float | None) -> float:
    """Progress of a metric KR: the share of the way from baseline to target, in [0, 1]."""
    if current is None or baseline is None or target is None or target == baseline:
        return 0.0
    if not math.isfinite(current):
        return 0.0
    return clamp((current - baseline) / (target - baseline))


def maintain_progress(counted_runs: int, worst_value: float | None, bound: Bound) -> float:
    """1 if the bound held over every counted run (and there is at least one), else 0."""
    if counted_runs == 0 or worst_value is None:
        return 0.0
    return 1.0 if bound.holds(worst_value) else 0.0


def counter_progress(current: float | None, target: float) -> float:
    """Progress of a ledger or manual KR: current / target, clamped."""
    if current is None or target <= 0:
        return 0.0
    return clamp(current / target)


def status_of(
    progress: float,
    has_data: bool,
    elapsed: float,
    cycle_over: bool,
    on_track: float = ON_TRACK,
    at_risk: float = AT_RISK,
) -> KrStatus:
    """The KR status for `progress` when `elapsed` of the cycle has passed."""
    if progress >= 1.0:
        return KrStatus.ACHIEVED
    if cycle_over:
        return KrStatus.MET if has_data and progress >= SUCCESS_GRADE else KrStatus.MISSED
    if not has_data:
        return KrStatus.NOT_STARTED
    if progress >= on_track * elapsed:
        return KrStatus.ON_TRACK
    if progress >= at_risk * elapsed:
        return KrStatus.AT_RISK
    return KrStatus.OFF_TRACK


def weighted_mean(pairs: Iterable[tuple[float, float]]) -> float:
    """Weighted mean of (value, weight) pairs; 0 when there are none."""
    pairs = list(pairs)
    total_weight = sum(weight for _, weight in pairs)
    if total_weight <= 0:
        return 0.0
    return sum(value * weight for value, weight in pairs) / total_weight


@dataclass(frozen=True)
class Scored:
    """The scoring of one KR, before it is dressed up for output."""

    current: float | None
    progress: float
    status: KrStatus
    counted_runs: int
    best_run_id: str | None
    direction: Direction | None
    target: float | None
    baseline: float | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def score_metric_kr(
    tally: Tally,
    baseline: float | None,
    target: float | None,
    elapsed: float,
    cycle_over: bool,
    on_track: float = ON_TRACK,
    at_risk: float = AT_RISK,
) -> Scored:
    """Score a metric or maintain KR from its tally, baseline and (absolute) target."""
    current, run_id = tally.current()
    notes: list[str] = []
    if tally.rule.maintain is not None:
        progress = maintain_progress(tally.count, current, tally.rule.maintain)
        scorable = has_data(tally.count, False, baseline)
    else:
        if baseline is None:
            notes.append("baseline not resolved yet")
        progress = metric_progress(current, baseline, target)
        scorable = has_data(tally.count, True, baseline)
        # A baseline read from a run can land on the wrong side of the target; scoring it would
        # reward moving the metric the wrong way.
        if baseline is not None and target is not None and tally.direction is not None:
            implied = infer_direction(baseline, target, None)
            if implied != tally.direction:
                notes.append(
                    f"baseline {baseline:g} -> target {target:g} contradicts direction {tally.direction}"
                )
                progress = 0.0
    status = status_of(progress, scorable, elapsed, cycle_over, on_track, at_risk)
    return Scored(
        current=current,
        progress=progress,
        status=status,
        counted_runs=tally.count,
        best_run_id=run_id,
        direction=tally.direction,
        target=target,
        baseline=baseline,
        notes=tuple(notes),
    )


def score_counter_kr(
    current: float | None,
    events: int,
    target: float,
    elapsed: float,
    cycle_over: bool,
    on_track: float = ON_TRACK,
    at_risk: float = AT_RISK,
) -> Scored:
    """Score a ledger or manual KR: `events` is how many hypotheses or check-ins it has."""
    progress = counter_progress(current, target)
    status = status_of(progress, events > 0, elapsed, cycle_over, on_track, at_risk)
    return Scored(
        current=current,
        progress=progress,
        status=status,
        counted_runs=events,
        best_run_id=None,
        direction="maximize",
        target=target,
        baseline=0.0,
    )


def score_aggregate_kr(
    current: float | None,
    count: int,
    baseline: float | None,
    target: float | None,
    direction: Direction | None,
    maintain: Bound | None,
    elapsed: float,
    cycle_over: bool,
    on_track: float = ON_TRACK,
    at_risk: float = AT_RISK,
) -> Scored:
    """Score a KR whose value is one aggregate the backend computed over `count` items (a trace KR).

    A maintain KR holds while the aggregate stays within its bound: a p99 latency is already the
    worst case the KR speaks of, so no per-item check applies.
    """
    if current is None or count <= 0:
        current, count = None, 0
    if maintain is not None:
        progress = 1.0 if current is not None and maintain.holds(current) else 0.0
    else:
        progress = metric_progress(current, baseline, target)
    status = status_of(progress, count > 0, elapsed, cycle_over, on_track, at_risk)
    return Scored(
        current=current,
        progress=progress,
        status=status,
        counted_runs=count,
        best_run_id=None,
        direction=direction,
        target=target,
        baseline=baseline,
    )
