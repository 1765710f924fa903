"""The report's effort section: where the cycle's run-hours went, as a chart and a table.

Shown when the report's status carries effort (`status --effort`'s figures, which `report`
always computes). The chart is a horizontal bar per objective's KRs and one for the runs that
count for no KR, in run-hours, with the improving runs written at each bar's end.
"""

from __future__ import annotations

import base64
import html
import io

from mlflow_okr.effort_views import hours_text
from mlflow_okr.report.charts import ACTUAL_COLOR, DOCTYPE, EXPECTED_COLOR
from mlflow_okr.report.model import Report

UNALIGNED_LABEL = "no KR (unaligned)"


def effort_bars(report: Report) -> list[tuple[str, float, int, int]]:
    """(label, run-hours, runs, improving runs) per KR with runs, then the unaligned runs."""
    bars = [
        (f"{objective.id} / {kr.id}", kr.effort.run_hours, kr.effort.runs, kr.effort.improving_runs)
        for objective in report.status.objectives
        for kr in objective.key_results
        if kr.effort is not None and kr.effort.runs
    ]
    loose = report.status.unaligned
    if loose is not None:
        bars.append((UNALIGNED_LABEL, loose.run_hours, loose.runs, 0))
    return bars


def effort_svg(report: Report) -> str:
    """Run-hours per KR and unaligned, as an SVG document (matplotlib)."""
    from matplotlib.figure import Figure

    bars = effort_bars(report)
    figure = Figure(figsize=(6.4, 0.45 * len(bars) + 0.8), dpi=100)
    axes = figure.add_subplot()
    labels = [label for label, *_ in bars][::-1]
    hours = [value for _, value, *_ in bars][::-1]
    colors = [EXPECTED_COLOR if label == UNALIGNED_LABEL else ACTUAL_COLOR for label in labels]
    axes.barh(labels, hours, color=colors)
    for index, (_, value, runs, improving) in enumerate(bars[::-1]):
        axes.text(value, index, f"  {runs} runs, {improving} improving", va="center", fontsize=7)
    axes.set_xlabel("run-hours", fontsize=8)
    axes.tick_params(labelsize=8)
    axes.margins(x=0.35)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    figure.tight_layout(pad=0.4)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return DOCTYPE.sub("", buffer.getvalue(), count=1)


def _rows(report: Report) -> list[list[str]]:
    rows = []
    for objective in report.status.objectives:
        for kr in objective.key_results:
            if kr.effort is not None:
                effort = kr.effort
                rows.append([objective.id, kr.id, str(effort.runs), str(effort.people),
                             hours_text(effort.run_hours), str(effort.improving_runs)])
    return rows


def _summary(report: Report) -> str:
    every, loose = report.status.effort, report.status.unaligned
    if every is None or loose is None:
        return ""
    top = ", ".join(f"{e.name} ({hours_text(e.run_hours)} h)" for e in loose.top_experiments) or "none"
    people = f"{every.people} {'person' if every.people == 1 else 'people'}"
    return (
        f"{every.runs} runs by {people}, {hours_text(every.run_hours)} run-hours this cycle; "
        f"{loose.runs} runs ({loose.runs_share:.0%}) and {hours_text(loose.run_hours)} run-hours "
        f"({loose.hours_share:.0%}) counted for no KR. Top unaligned experiments: {top}."
    )


def effort_markdown(report: Report) -> list[str]:
    """The section's Markdown lines; none when the report has no effort figures."""
    if report.status.effort is None:
        return []
    from mlflow_okr.report.markdown import md

    lines = ["## Effort", "", md(_summary(report)), ""]
    lines += [
        "| Objective | Key result | Runs | People | Run-hours | Improving runs |",
        "|---|---|--:|--:|--:|--:|",
    ]
    lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in _rows(report)]
    return lines + [""]


def effort_html(report: Report) -> str:
    """The section as HTML: the chart as a data: URI image, then the table; escaped text."""
    if report.status.effort is None:
        return ""
    e = html.escape
    svg = effort_svg(report).encode("utf-8")
    image = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in _rows(report)
    )
    return (
        '<section class="effort"><h2>Effort</h2>'
        f"<p class=muted>{e(_summary(report))}</p>"
        f'<img class="chart" alt="Run-hours per key result and unaligned" src="{image}">'
        "<table><thead><tr><th>Objective</th><th>Key result</th><th>Runs</th><th>People</th>"
        f"<th>Run-hours</th><th>Improving runs</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
