"""Plain-text rendering of statuses and plans for terminals."""

from __future__ import annotations

from mlflow_okr.engine import SUCCESS_GRADE
from mlflow_okr.results import CycleStatus, KeyResultStatus, alignment_rows
from mlflow_okr.vocabulary import KrStatus

STATUS_MARKS = {
    KrStatus.ACHIEVED: "✔ achieved",
    KrStatus.ON_TRACK: "● on-track",
    KrStatus.AT_RISK: "▲ at-risk",
    KrStatus.OFF_TRACK: "✖ off-track",
    KrStatus.NOT_STARTED: "○ not-started",
    KrStatus.MET: "✔ met",
    KrStatus.MISSED: "✖ missed",
}


def number(value: float | None, unit: str | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def bar(progress: float, width: int = 10) -> str:
    filled = round(progress * width)
    return "█" * filled + "░" * (width - filled)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns, as wide as their widest cell, under a header and a rule."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), "  ".join("-" * width for width in widths), *map(line, rows)])


def target_text(kr: KeyResultStatus) -> str:
    """The target as people read it: a number, or the bound a maintain KR (of runs or of traces)
    must hold: `stay ≥ 4.5`."""
    if kr.maintain is None:
        return number(kr.target, kr.unit)
    bounds = []
    if kr.maintain.min is not None:
        bounds.append(f"≥ {number(kr.maintain.min, kr.unit)}")
    if kr.maintain.max is not None:
        bounds.append(f"≤ {number(kr.maintain.max, kr.unit)}")
    return "stay " + " and ".join(bounds)


def kr_row(kr: KeyResultStatus) -> list[str]:
    return [
        "  " + kr.id,
        STATUS_MARKS.get(kr.status, kr.status),
        number(kr.baseline, kr.unit),
        number(kr.current, kr.unit),
        target_text(kr),
        f"{bar(kr.progress)} {kr.progress:.0%}",
        str(kr.counted_runs),
    ]


def status_table(status: CycleStatus) -> str:
    """Every cycle shown (innermost first) as a table: objectives by team with their scores, KRs
    below each; then the alignment tree when objectives align to others."""
    blocks = [_cycle_table(cycle) for cycle in [status, *status.enclosing_cycles]]
    tree = alignment_tree(status)
    if tree:
        heading = "Alignment (objective, score; children indented under the objective they serve)"
        blocks.append(heading + "\n" + tree)
    return "\n\n".join(blocks)


def _cycle_table(status: CycleStatus) -> str:
    cycle = status.cycle
    lines = [
        f"Cycle {cycle.name} ({cycle.start} .. {cycle.end}), {cycle.elapsed:.0%} elapsed. "
        f"Score {status.score:.2f} ({SUCCESS_GRADE:g} is the conventional success grade)",
        "",
    ]
    rows: list[list[str]] = []
    teams = {objective.team for objective in status.objectives}
    shown_team: object = object()
    for objective in status.objectives:
        if len(teams) > 1 and objective.team != shown_team:
            shown_team = objective.team
            label = f"[team {objective.team}]" if objective.team else "[unnamed set]"
            rows.append([label, "", "", "", "", "", ""])
        score = f"score {objective.score:.2f}"
        if objective.aligned_children and objective.own_score is not None:
            score += f" (own KRs {objective.own_score:.2f})"
        rows.append([objective.id, score, "", "", "", "", ""])
        rows.extend(kr_row(kr) for kr in objective.key_results)
    header = ["objective / KR", "status", "baseline", "current", "target", "progress", "runs"]
    lines.append(table(rows, header))
    return "\n".join(lines)


def alignment_tree(status: CycleStatus) -> str:
    """Objectives that others align to, with their children indented below (deeper levels further)."""
    rows = alignment_rows(status)
    return "\n".join(f"{'  ' * (depth + 1)}{ref}  {number_or_unknown(score)}" for depth, ref, score in rows)


def number_or_unknown(score: float | None) -> str:
    return f"{score:.2f}" if score is not None else "(not shown)"
