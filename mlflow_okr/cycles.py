"""Which cycles are current: the one rule every command, the board, the API and the run context use.

Annual, half-year and quarterly cycles may be published at once. The cycles that contain a moment
are current, innermost first: the shortest span, then the latest start, then the name. When none
contains it (between cycles), the cycle that ended last stands in, so `status` still shows the
quarter that just closed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import TypeVar

from mlflow_okr.spec import Cycle, as_utc

Item = TypeVar("Item")


def innermost_first(cycle: Cycle) -> tuple[int, int, str]:
    """The sort key that puts the innermost cycle first: shortest, then latest start, then name."""
    return (cycle.end_ms - cycle.start_ms, -cycle.start_ms, cycle.name)


def current(items: Iterable[Item], now: dt.datetime, cycle_of: Callable[[Item], Cycle]) -> list[Item]:
    """The items whose cycles contain `now`, innermost first; else those of the cycle that ended last."""
    items = list(items)
    moment = int(as_utc(now).timestamp() * 1000)
    containing = [item for item in items if cycle_of(item).contains(moment)]
    if containing:
        return sorted(containing, key=lambda item: innermost_first(cycle_of(item)))
    if not items:
        return []
    latest = max(items, key=lambda item: (cycle_of(item).end_ms, cycle_of(item).start_ms))
    return [item for item in items if cycle_of(item).name == cycle_of(latest).name]


def encloses(outer: Cycle, inner: Cycle) -> bool:
    """Whether `outer` contains every day of `inner` (a cycle encloses itself)."""
    return outer.start <= inner.start and inner.end <= outer.end


def overlaps(first: Cycle, second: Cycle) -> bool:
    return first.start <= second.end and second.start <= first.end
