"""Trend charts of KRs over the cycle (matplotlib, SVG), and text sparklines for Markdown."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re

from mlflow_okr.report.model import KeyResultDetail, Report
from mlflow_okr.results import KeyResultStatus

ACTUAL_COLOR = "#1f5fa8"
EXPECTED_COLOR = "#9aa5b1"
AS_OF_COLOR = "#d9822b"
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
DOCTYPE = re.compile(r"<!DOCTYPE[^>]*>\s*")


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def expected_line(kr: KeyResultStatus, detail: KeyResultDetail, start: dt.datetime, end: dt.datetime):
    """The expected-progress line: baseline at the start to target at the end (a bound for maintain KRs)."""
    if kr.kind == "maintain":
        bound = detail.maintain_min if detail.maintain_min is not None else detail.maintain_max
        return ([start, end], [bound, bound]) if bound is not None else None
    if kr.baseline is None or kr.target is None:
        return None
    return [start, end], [kr.baseline, kr.target]


def trend_svg(report: Report, kr: KeyResultStatus) -> str:
    """The KR's value over the cycle with the expected-progress line, as an SVG document."""
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    detail = report.details[kr.id]
    cycle = report.status.cycle
    start, end = _utc(cycle.start), _utc(cycle.end) + dt.timedelta(days=1)
    points = [(p.time, p.value) for p in detail.history if p.value is not None]
    figure = Figure(figsize=(6.4, 2.3), dpi=100)
    axes = figure.add_subplot()
    expected = expected_line(kr, detail, start, end)
    if expected is not None:
        label = "bound" if kr.kind == "maintain" else "expected"
        axes.plot(*expected, color=EXPECTED_COLOR, linestyle="--", linewidth=1.2, label=label)
    if points:
        times = [time for time, _ in points]
        values = [value for _, value in points]
        as_of = min(max(report.as_of, times[-1]), end)
        if as_of > times[-1]:
            times.append(as_of)
            values.append(values[-1])
        axes.step(times, values, where="post", color=ACTUAL_COLOR, linewidth=2, label="actual")
        axes.plot(
            [time for time, _ in points],
            [value for _, value in points],
            "o",
            color=ACTUAL_COLOR,
            markersize=3,
        )
    if start <= report.as_of <= end:
        axes.axvline(report.as_of, color=AS_OF_COLOR, linewidth=1, alpha=0.7, label="as of")
    if not points:
        axes.text(
            0.5,
            0.5,
            "no value recorded yet",
            transform=axes.transAxes,
            ha="center",
            va="center",
            color="#666666",
            fontsize=9,
        )
    right = max([end] + [time for time, _ in points])
    axes.set_xlim(start, right)
    axes.xaxis.set_major_locator(mdates.MonthLocator())
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
    axes.tick_params(labelsize=8)
    axes.grid(True, color="#e5e8eb", linewidth=0.8)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if kr.unit:
        axes.set_ylabel(kr.unit, fontsize=8)
    axes.legend(loc="best", fontsize=7, frameon=False)
    figure.tight_layout(pad=0.4)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    # The DOCTYPE names an external DTD; nothing needs it, and the report references nothing outside.
    return DOCTYPE.sub("", buffer.getvalue(), count=1)


def trend_data_uri(report: Report, kr: KeyResultStatus) -> str:
    """The trend chart as a data: URI for an <img>: self-contained, and an image cannot run script."""
    svg = trend_svg(report, kr)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def sparkline(values: list[float], width: int = 16) -> str:
    """A unicode sparkline of the last `width` values (empty when there are none)."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK_BLOCKS[3] * len(values)
    scale = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((value - low) / (high - low) * scale)] for value in values)
