"""Wording and number formats shared by the Markdown and HTML reports."""

from __future__ import annotations

from mlflow_okr.engine import SUCCESS_GRADE
from mlflow_okr.ledger.record import WinRate
from mlflow_okr.render import STATUS_MARKS
from mlflow_okr.report.model import Report
from mlflow_okr.vocabulary import KrStatus

GRADE_NOTE = (
    f"Grades run from 0.0 to 1.0. OKRs are set to stretch, so {SUCCESS_GRADE:g} is the conventional success; "
    "a steady 1.0 means the targets were too easy."
)
STATUS_TITLES = {
    KrStatus.ACHIEVED: "Achieved",
    KrStatus.ON_TRACK: "On track",
    KrStatus.AT_RISK: "At risk",
    KrStatus.OFF_TRACK: "Off track",
    KrStatus.NOT_STARTED: "Not started",
    KrStatus.MET: "Met",
    KrStatus.MISSED: "Missed",
}


def status_label(status: str) -> str:
    """A status with its symbol: ● on-track."""
    return STATUS_MARKS.get(status, status)


def grade(value: float) -> str:
    """A grade on the 0.0-1.0 scale, two decimals."""
    return f"{value:.2f}"


def percent(value: float) -> str:
    """A share as a whole percentage."""
    return f"{value:.0%}"


def headline(report: Report) -> str:
    """Cycle, dates and elapsed share in one line."""
    cycle = report.status.cycle
    return (
        f"{cycle.start:%d %b %Y} – {cycle.end:%d %b %Y} · {percent(cycle.elapsed)} of the cycle elapsed "
        f"· as of {report.as_of:%Y-%m-%d %H:%M} UTC"
    )


def verdict(report: Report) -> str:
    """One sentence on the cycle grade against the 0.7 convention."""
    score = report.status.score
    if score >= 1.0:
        return "Every key result was achieved."
    if score >= report.success_grade:
        return f"At or above the {report.success_grade:.1f} success grade."
    return f"Below the {report.success_grade:.1f} success grade."


def p_value(value: float | None) -> str:
    """A p-value as papers print it: three significant digits, or < 0.001."""
    if value is None:
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3g}"


def evidence(control_runs: int, treatment_runs: int) -> str:
    """How many runs back a hypothesis: 3 vs 3 runs."""
    if not control_runs and not treatment_runs:
        return "—"
    return f"{control_runs} control / {treatment_runs} treatment"


def effect(value: float | None, relative: float | None) -> str:
    """An effect size, with the relative change when known: 0.01 (+19.6%)."""
    if value is None:
        return "—"
    shown = f"{value:+.4g}"
    return f"{shown} ({relative:+.1%})" if relative is not None else shown


def track_record(report: Report) -> list[str]:
    """The cycle's track record as sentences: counts, win rates, validated effect, q-values and the
    validated hypotheses whose q-value is above alpha."""
    record = report.track_record
    if record is None:
        return []

    def rates(items: list[WinRate]) -> str:
        return "; ".join(
            f"{item.name or '(none)'} {item.validated}/{item.resolved}"
            + (f" ({item.win_rate:.0%})" if item.win_rate is not None else "")
            for item in items
        )

    lines = [
        f"{record.tried} hypotheses tried: {record.validated} validated, {record.invalidated} invalidated, "
        f"{record.inconclusive} inconclusive, {record.open} open."
    ]
    if record.by_objective:
        lines.append(f"Win rate by objective: {rates(record.by_objective)}.")
    if record.by_owner:
        lines.append(f"Win rate by owner: {rates(record.by_owner)}.")
    if record.validated_effect:
        lines.append("Validated effect: " + "; ".join(
            f"{metric} {effect:+.4g}" for metric, effect in record.validated_effect.items()) + ".")
    q_values = [(h.id, h.q_value) for h in report.ledger or [] if h.q_value is not None]
    if q_values:
        lines.append(
            "Benjamini-Hochberg q-values across the cycle's evaluated hypotheses: "
            + "; ".join(f"{hypothesis_id} {p_value(q)}" for hypothesis_id, q in q_values) + "."
        )
    if record.validated_above_alpha:
        lines.append(
            f"Validated but with a q-value above {record.alpha:g} (may be false discoveries): "
            f"{', '.join(record.validated_above_alpha)}."
        )
    return lines
