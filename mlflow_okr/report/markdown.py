"""The report as GitHub-flavoured Markdown: headline, tables per objective, evidence, ledger."""

from __future__ import annotations

import html

from mlflow_okr import registry
from mlflow_okr.confidence import confidence_label
from mlflow_okr.engine import SUCCESS_GRADE
from mlflow_okr.render import bar, number, target_text
from mlflow_okr.report import text
from mlflow_okr.report.charts import sparkline
from mlflow_okr.report.effort_section import effort_markdown
from mlflow_okr.report.model import Hypothesis, Report, RunLink
from mlflow_okr.results import KeyResultStatus, alignment_rows


def md(value: object) -> str:
    """User text made safe for a Markdown table cell: no HTML, no column breaks, one line."""
    escaped = html.escape(str(value), quote=False)
    for special in ("|", "[", "]"):  # a column break, or link syntax that would swallow the cell
        escaped = escaped.replace(special, "\\" + special)
    return " ".join(escaped.split())


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    separators = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(separators) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _run(link: RunLink) -> str:
    name = md(link.name or link.run_id[:8])
    shown = f"[{name}]({link.url})" if link.url else f"**{name}**"
    return f"{shown} (`{link.run_id}`)"


def _kr_rows(report: Report, krs: list[KeyResultStatus]) -> list[list[str]]:
    rows = []
    for kr in krs:
        values = [p.value for p in report.details[kr.id].history if p.value is not None]
        rows.append(
            [
                f"**{md(kr.id)}**" + (f"<br>{md(kr.title)}" if kr.title else ""),
                text.status_label(kr.status) + confidence_label(kr),
                number(kr.baseline, kr.unit),
                md(target_text(kr)),
                number(kr.current, kr.unit),
                f"`{bar(kr.progress)}` {text.percent(kr.progress)}",
                text.grade(kr.progress),
                str(kr.counted_runs),
                sparkline(values) or "—",
            ]
        )
    return rows


def _evidence(report: Report, kr: KeyResultStatus) -> list[str]:
    detail = report.details[kr.id]
    lines = []
    lines += [f"- `{md(kr.id)}`: {md(note)}" for note in kr.notes]  # e.g. evaluation data changed
    if kr.model is not None:
        where = f"version {kr.model.version}" if kr.model.version else "no version yet"
        lines.append(f"- `{md(kr.id)}` follows `{md(kr.model.name)}@{md(kr.model.alias)}`, now {where}")
        lines += [f"  - promoted: {md(registry.promotion_text(p))}" for p in kr.model.promotions]
    if detail.measures:
        lines.append(f"- `{md(kr.id)}` measures {md(detail.measures)}: {kr.counted_runs} counted")
    if detail.best_run is not None:
        value = number(detail.best_run.value, kr.unit)
        lines.append(f"- `{md(kr.id)}` best run: {_run(detail.best_run)}, {md(kr.metric)} = {value}")
    if detail.guardrail_breach_count:
        lines.append(
            f"- `{md(kr.id)}` guardrail breaches: {detail.guardrail_breach_count} run(s) would have "
            "improved this KR but broke a counter-metric"
        )
        for breach in detail.guardrail_breaches:
            value = number(breach.value, kr.unit)
            lines.append(f"  - {_run(breach)}: {md(kr.metric)} = {value}; {md(breach.reason or '')}")
    return lines


def _hypotheses(title: str, hypotheses: list[Hypothesis]) -> list[str]:
    lines = [f"### {title} ({len(hypotheses)})", ""]
    if not hypotheses:
        return lines + ["None this cycle.", ""]
    rows = []
    for h in hypotheses:
        hypothesis_id = f"[{md(h.id)}]({h.url})" if h.url else f"`{md(h.id)}`"
        rows.append(
            [
                f"{hypothesis_id} {md(h.statement or '')}",
                md(h.kr or h.objective or "—"),
                text.evidence(h.control_runs, h.treatment_runs),
                text.effect(h.effect_size, h.relative_effect),
                text.p_value(h.p_value),
                f"{h.resolved_at:%Y-%m-%d}" if h.resolved_at else "—",
                md(h.learnings or "—"),
            ]
        )
    header = ["Hypothesis", "For", "Evidence runs", "Effect size", "p", "Resolved", "Learnings"]
    return lines + _table(header, rows) + [""]


def render_markdown(report: Report) -> str:
    """The whole report as Markdown."""
    status = report.status
    lines = [f"# OKR report {md(status.cycle.name)}", "", text.headline(report), ""]
    lines += [
        f"## Grade {text.grade(status.score)} / 1.0 — {text.verdict(report)}",
        "",
        f"> {text.GRADE_NOTE}",
        "",
    ]
    counts = report.status_counts()
    lines += _table(
        [text.STATUS_TITLES.get(s, s) for s in counts], [[str(n) for n in counts.values()]], "r" * len(counts)
    )
    lines += ["", "## Objectives", ""]
    rows = [
        [md(o.title), md(o.category), md(o.owner or "—"), text.grade(o.score), f"`{bar(o.score)}`"]
        for o in status.objectives
    ]
    lines += _table(["Objective", "Category", "Owner", "Score", ""], rows) + [""]
    for objective in status.objectives:
        lines += [f"### {md(objective.title)}", ""]
        owner = f" · owner {md(objective.owner)}" if objective.owner else ""
        owner += f" · team {md(objective.team)}" if objective.team else ""
        owner += "".join(f" · serves `{md(parent)}`" for parent in objective.aligned_to)
        lines += [
            f"`{md(objective.id)}` · {md(objective.category)}{owner} "
            f"· score **{text.grade(objective.score)}**",
            "",
        ]
        header = [
            "Key result",
            "Status",
            "Baseline",
            "Target",
            "Current",
            "Progress",
            "Grade",
            "Runs",
            "Trend",
        ]
        lines += _table(header, _kr_rows(report, objective.key_results), "llrrrlrrl") + [""]
        evidence = [line for kr in objective.key_results for line in _evidence(report, kr)]
        lines += evidence + ([""] if evidence else [])
    rows = alignment_rows(status)
    if rows:
        note = "Each objective's score counts the objectives that serve it, listed below it."
        lines += ["## Alignment", "", note, ""]
        lines += [
            f"{'  ' * depth}- `{md(ref)}` {text.grade(score) if score is not None else '—'}"
            for depth, ref, score in rows
        ]
        lines += [""]
    lines += effort_markdown(report)
    if report.ledger is not None:
        lines += ["## Hypotheses resolved this cycle", ""]
        record = [f"- {md(line)}" for line in text.track_record(report)]
        lines += record + ([""] if record else [])
        for title, group in report.hypothesis_groups():
            lines += _hypotheses(title, group)
    if report.next_cycle is not None:
        draft = report.next_cycle
        lines += [f"## Next cycle: {md(draft.cycle)}", ""]
        lines += [
            f"Targets calibrated on this cycle's track record so that about {SUCCESS_GRADE:g} is the "
            "expected grade.",
            "",
        ]
        rows = [
            [md(kr.objective), f"`{md(kr.kr)}` {md(kr.title)}", md(kr.baseline), md(kr.target)]
            for kr in draft.key_results
        ]
        lines += _table(["Objective", "Key result", "Baseline", "Target"], rows, "llrr") + [""]
        fence = "~~~~" if "```" in draft.text else "```"
        lines += [
            "<details><summary>Draft okrs.yaml</summary>",
            "",
            fence + "yaml",
            draft.text.rstrip(),
            fence,
            "",
            "</details>",
            "",
        ]
    lines.append(f"_Generated by mlflow-okr on {report.generated_at:%Y-%m-%d %H:%M} UTC._")
    return "\n".join(lines) + "\n"
