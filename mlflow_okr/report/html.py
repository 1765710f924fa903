"""The report as one self-contained HTML page: inline CSS, charts as data: images, no script.

Every string that comes from a user (spec, run names, ledger text) goes through `e()`; links are
only emitted for http(s) URLs, so a crafted value can neither inject markup nor a javascript: URL.
"""

from __future__ import annotations

import html

from mlflow_okr import registry
from mlflow_okr.confidence import confidence_label
from mlflow_okr.engine import SUCCESS_GRADE
from mlflow_okr.render import number, target_text
from mlflow_okr.report import text
from mlflow_okr.report.charts import trend_data_uri
from mlflow_okr.report.effort_section import effort_html
from mlflow_okr.report.model import Hypothesis, Report, RunLink
from mlflow_okr.report.style import STYLESHEET
from mlflow_okr.results import KeyResultStatus, ObjectiveStatus, alignment_rows


def e(value: object) -> str:
    """Escape user text for HTML element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def _link(label: str, url: str | None) -> str:
    """`label` (already escaped) linked to `url` when it is an http(s) URL."""
    if url and url.lower().startswith(("http://", "https://")):
        return f'<a href="{e(url)}">{label}</a>'
    return label


def _status_pill(status: str) -> str:
    return f'<span class="pill s-{e(status)}">{e(text.status_label(status))}</span>'


def _progress(value: float) -> str:
    width = max(0.0, min(1.0, value)) * 100
    return (
        f'<span class="bar" role="img" aria-label="{text.percent(value)}">'
        f'<span style="width:{width:.1f}%"></span></span> {text.percent(value)}'
    )


def _run(link: RunLink) -> str:
    name = e(link.name or link.run_id[:8])
    return f"{_link(name, link.url)} <code>{e(link.run_id)}</code>"


def _header(report: Report) -> str:
    status = report.status
    good = "good" if status.score >= report.success_grade else "low"
    counts = "".join(
        f'<div class="count s-{e(name)}"><b>{count}</b>'
        f"<span>{e(text.STATUS_TITLES.get(name, name))}</span></div>"
        for name, count in report.status_counts().items()
    )
    return f"""
<header class="top">
  <div>
    <p class="eyebrow">OKR report</p>
    <h1>{e(status.cycle.name)}</h1>
    <p class="sub">{e(text.headline(report))}</p>
  </div>
  <div class="grade {good}"><span class="big">{text.grade(status.score)}</span><span class="of">/ 1.0</span>
    <p>{e(text.verdict(report))}</p></div>
</header>
<p class="note">{e(text.GRADE_NOTE)}</p>
<section class="counts" aria-label="Key results by status">{counts}</section>"""


def _objectives_table(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{e(o.title)}<br><code>{e(o.id)}</code></td><td>{e(o.category)}</td>"
        f"<td>{e(o.owner or '—')}</td><td class=num>{text.grade(o.score)}</td>"
        f"<td>{_progress(o.score)}</td></tr>"
        for o in report.status.objectives
    )
    return (
        '<section><h2>Objectives</h2><table class="objectives"><thead><tr><th>Objective</th>'
        "<th>Category</th><th>Owner</th><th class=num>Score</th><th>Progress</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _kr_row(report: Report, kr: KeyResultStatus) -> str:
    return (
        f'<tr><td><a href="#kr-{e(kr.id)}"><code>{e(kr.id)}</code></a></td><td>{_status_pill(kr.status)}'
        f"{e(confidence_label(kr))}</td>"
        f"<td class=num>{e(number(kr.baseline, kr.unit))}</td>"
        f"<td class=num>{e(target_text(kr))}</td>"
        f"<td class=num>{e(number(kr.current, kr.unit))}</td><td>{_progress(kr.progress)}</td>"
        f"<td class=num>{text.grade(kr.progress)}</td><td class=num>{kr.counted_runs}</td></tr>"
    )


def _measure(kr: KeyResultStatus) -> str:
    """What moves the KR, in words."""
    if kr.kind == "ledger":
        return "hypotheses validated in the ledger this cycle"
    if kr.kind == "manual":
        return "manual check-ins (<code>mlflow-okr checkin</code>)"
    aim = {"maximize": "higher is better", "minimize": "lower is better"}.get(kr.direction or "", "")
    kind = "held over every counted run" if kr.kind == "maintain" else aim
    return f"<code>{e(kr.metric)}</code>" + (f" · {kind}" if kind else "")


def _kr_card(report: Report, kr: KeyResultStatus) -> str:
    detail = report.details[kr.id]
    facts = [f"<dt>Measured by</dt><dd>{_measure(kr)}</dd>"]
    if kr.model is not None:
        history = "".join(f"<li>{e(registry.promotion_text(p))}</li>" for p in kr.model.promotions)
        where = f"version {kr.model.version}" if kr.model.version else "no version yet"
        facts.append(
            f"<dt>Model</dt><dd><code>{e(kr.model.name)}@{e(kr.model.alias)}</code> · now {e(where)}"
            + (f"<ul>{history}</ul>" if history else "") + "</dd>"
        )
    if detail.measures:
        facts.append(f"<dt>Traces</dt><dd>{e(detail.measures)}</dd>")
    if detail.best_run is not None:
        value = e(number(detail.best_run.value, kr.unit))
        facts.append(f"<dt>Best run</dt><dd>{_run(detail.best_run)} · {e(kr.metric)} = {value}</dd>")
    if kr.pending_runs or kr.excluded_runs:
        facts.append(f"<dt>Not counted</dt><dd>{kr.pending_runs} pending, {kr.excluded_runs} excluded</dd>")
    if detail.guardrail_breach_count:
        breaches = "".join(
            f"<li>{_run(b)} · {e(kr.metric)} = {e(number(b.value, kr.unit))} · {e(b.reason)}</li>"
            for b in detail.guardrail_breaches
        )
        more = detail.guardrail_breach_count - len(detail.guardrail_breaches)
        breaches += f"<li>… and {more} more</li>" if more > 0 else ""
        facts.append(
            f"<dt>Guardrail breaches</dt><dd>{detail.guardrail_breach_count} run(s) would have improved "
            "this KR "
            f"but broke a counter-metric<ul>{breaches}</ul></dd>"
        )
    for note in kr.notes:
        facts.append(f"<dt>Note</dt><dd>{e(note)}</dd>")
    label = e(kr.title or kr.id)
    chart = f'<img class="chart" alt="Trend of {label} over the cycle" src="{trend_data_uri(report, kr)}">'
    return f"""
<article class="kr" id="kr-{e(kr.id)}">
  <h3><code>{e(kr.id)}</code> {e(kr.title or "")} {_status_pill(kr.status)}</h3>
  <div class="kr-body">{chart}<dl>{"".join(facts)}</dl></div>
</article>"""


def _objective(report: Report, objective: ObjectiveStatus) -> str:
    owner = f" · owner {e(objective.owner)}" if objective.owner else ""
    rows = "".join(_kr_row(report, kr) for kr in objective.key_results)
    cards = "".join(_kr_card(report, kr) for kr in objective.key_results)
    return f"""
<section class="objective">
  <h2>{e(objective.title)}</h2>
  <p class="meta"><code>{e(objective.id)}</code> · {e(objective.category)}{owner} · score
    <b>{text.grade(objective.score)}</b></p>
  <table class="krs"><thead><tr><th>Key result</th><th>Status</th><th class=num>Baseline</th>
    <th class=num>Target</th><th class=num>Current</th><th>Progress</th><th class=num>Grade</th>
    <th class=num>Runs</th></tr></thead><tbody>{rows}</tbody></table>
  {cards}
</section>"""


def _hypotheses(title: str, hypotheses: list[Hypothesis]) -> str:
    if not hypotheses:
        return f"<h3>{e(title)} (0)</h3><p class=muted>None this cycle.</p>"
    rows = "".join(
        f"<tr><td>{_link(f'<code>{e(h.id)}</code>', h.url)} {e(h.statement or '')}</td>"
        f"<td>{e(h.kr or h.objective or '—')}</td>"
        f"<td>{e(text.evidence(h.control_runs, h.treatment_runs))}</td>"
        f"<td class=num>{e(text.effect(h.effect_size, h.relative_effect))}</td>"
        f"<td class=num>{e(text.p_value(h.p_value))}</td>"
        f"<td class=num>{h.resolved_at:%Y-%m-%d}</td><td>{e(h.learnings or '—')}</td></tr>"
        for h in hypotheses
    )
    return (
        f"<h3>{e(title)} ({len(hypotheses)})</h3><table><thead><tr><th>Hypothesis</th><th>For</th>"
        "<th>Evidence runs</th><th class=num>Effect size</th><th class=num>p</th><th>Resolved</th>"
        "<th>Learnings</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _track_record(report: Report) -> str:
    lines = text.track_record(report)
    if not lines:
        return ""
    return '<div class="track-record">' + "".join(f"<p>{e(line)}</p>" for line in lines) + "</div>"


def _ledger(report: Report) -> str:
    if report.ledger is None:
        return ""
    return (
        '<section class="ledger"><h2>Hypotheses resolved this cycle</h2>'
        + _track_record(report)
        + "".join(_hypotheses(title, group) for title, group in report.hypothesis_groups())
        + "</section>"
    )


def _next_cycle(report: Report) -> str:
    draft = report.next_cycle
    if draft is None:
        return ""
    rows = "".join(
        f"<tr><td>{e(kr.objective)}</td><td><code>{e(kr.kr)}</code> {e(kr.title)}</td>"
        f"<td class=num>{e(kr.baseline)}</td><td class=num>{e(kr.target)}</td></tr>"
        for kr in draft.key_results
    )
    return (
        f'<section class="next"><h2>Next cycle: {e(draft.cycle)}</h2><p class=muted>Targets calibrated on '
        f"this cycle's track record so that about {SUCCESS_GRADE:g} is the expected grade "
        "(<code>mlflow-okr suggest</code>).</p><table><thead><tr><th>Objective</th><th>Key result</th>"
        f"<th class=num>Baseline</th><th class=num>Target</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<details><summary>Draft okrs.yaml, with the reasoning per KR</summary><pre>{e(draft.text)}</pre>"
        "</details>"
        # Paper cannot expand a <details>: print shows the draft in full instead.
        f'<div class="print-only"><h3>Draft okrs.yaml</h3><pre>{e(draft.text)}</pre></div></section>'
    )


def _alignment(report: Report) -> str:
    """The alignment tree: each objective others serve, with those objectives nested below it."""
    rows = alignment_rows(report.status)
    if not rows:
        return ""
    items = "".join(
        f'<li style="margin-left:{depth * 1.5}em"><code>{e(ref)}</code> '
        f"{e(text.grade(score)) if score is not None else '—'}</li>"
        for depth, ref, score in rows
    )
    return (
        '<section class="alignment"><h2>Alignment</h2><p class=muted>Each objective\'s score counts '
        f"the objectives that serve it, listed below it.</p><ul>{items}</ul></section>"
    )


def render_html(report: Report) -> str:
    """The whole report as one HTML document."""
    body = (
        _header(report)
        + _objectives_table(report)
        + "".join(_objective(report, objective) for objective in report.status.objectives)
        + _alignment(report)
        + effort_html(report)
        + _ledger(report)
        + _next_cycle(report)
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mlflow-okr">
<title>OKR report {e(report.status.cycle.name)}</title>
<style>
{STYLESHEET}
</style>
</head>
<body>
<main>
{body}
<footer>Generated by mlflow-okr on {report.generated_at:%Y-%m-%d %H:%M} UTC from the MLflow tracking
server's OKR runs. Statuses as of {report.as_of:%Y-%m-%d %H:%M} UTC.</footer>
</main>
</body>
</html>
"""
