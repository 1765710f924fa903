"""Effort for people (a terminal table) and for machines (a DataFrame, for CSV)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mlflow_okr.practice_results import Effort
from mlflow_okr.render import table
from mlflow_okr.results import CycleStatus

EFFORT_COLUMNS = [
    "level", "id", "runs", "people", "run_hours", "improving_runs", "runs_share", "hours_share", "cycle",
]


def hours_text(hours: float) -> str:
    """Run-hours to a tenth; a few minutes of runs show as <0.1, not as nothing."""
    return "<0.1" if 0 < hours < 0.05 else f"{hours:.1f}"


def _people(count: int) -> str:
    return f"{count} {'person' if count == 1 else 'people'}"


def _cells(label: str, effort: Effort | None) -> list[str]:
    if effort is None:
        return [label, "—", "—", "—", "—"]
    hours = hours_text(effort.run_hours)
    return [label, str(effort.runs), str(effort.people), hours, str(effort.improving_runs)]


def effort_table(status: CycleStatus) -> str:
    """Each cycle shown (innermost first): objectives and their KRs, then owners and teams, then
    the cycle's unaligned runs."""
    return "\n\n".join(_cycle_table(cycle) for cycle in [status, *status.enclosing_cycles])


def _cycle_table(status: CycleStatus) -> str:
    rows = []
    for objective in status.objectives:
        rows.append(_cells(objective.id, objective.effort))
        rows += [_cells("  " + kr.id, kr.effort) for kr in objective.key_results]
    if status.effort is not None:
        rows += [_cells(f"owner {group.id}", group) for group in status.effort.owners]
        rows += [_cells(f"team {group.id}", group) for group in status.effort.teams]
    header = ["objective / KR", "runs", "people", "run-hours", "improving"]
    lines = [
        f"Effort in {status.cycle.name}: runs started in the cycle, outside okr/ experiments; improving "
        "runs raised their KR's progress",
        "",
        table(rows, header),
    ]
    if status.effort is not None and status.unaligned is not None:
        every, loose = status.effort, status.unaligned
        lines += [
            "",
            f"All runs: {every.runs} by {_people(every.people)}, {hours_text(every.run_hours)} run-hours.",
            f"Unaligned (count for no KR): {loose.runs} runs ({loose.runs_share:.0%}), "
            f"{hours_text(loose.run_hours)} run-hours ({loose.hours_share:.0%}).",
        ]
        lines += [
            f"  {experiment.name}: {experiment.runs} runs, {hours_text(experiment.run_hours)} run-hours"
            for experiment in loose.top_experiments
        ]
    return "\n".join(lines)


def _row(level: str, name: str, effort: Effort, **shares: Any) -> dict[str, Any]:
    return {"level": level, "id": name, **effort.model_dump(include=set(Effort.model_fields)), **shares}


def effort_frame(status: CycleStatus) -> pd.DataFrame:
    """Per cycle shown (innermost first), one row per KR, objective, owner and team, one for all
    runs and one for the unaligned ones; `cycle` names the cycle."""
    rows = [
        {**row, "cycle": cycle.cycle.name} for cycle in [status, *status.enclosing_cycles]
        for row in _cycle_rows(cycle)
    ]
    return pd.DataFrame(rows, columns=EFFORT_COLUMNS)


def _cycle_rows(status: CycleStatus) -> list[dict[str, Any]]:
    rows = []
    for objective in status.objectives:
        if objective.effort is not None:
            rows.append(_row("objective", objective.id, objective.effort))
        rows += [_row("kr", kr.id, kr.effort) for kr in objective.key_results if kr.effort is not None]
    if status.effort is not None:
        rows += [_row("owner", group.id, group) for group in status.effort.owners]
        rows += [_row("team", group.id, group) for group in status.effort.teams]
        every = status.effort
        rows.append(_row("cycle", status.cycle.name, Effort(
            runs=every.runs, people=every.people, run_hours=every.run_hours)))
    if status.unaligned is not None:
        loose = status.unaligned
        rows.append(_row("unaligned", status.cycle.name, Effort(runs=loose.runs, run_hours=loose.run_hours),
                         runs_share=loose.runs_share, hours_share=loose.hours_share))
        rows += [
            _row("unaligned-experiment", experiment.name,
                 Effort(runs=experiment.runs, run_hours=experiment.run_hours))
            for experiment in loose.top_experiments
        ]
    return rows
