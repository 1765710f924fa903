"""The weekly review for people: Markdown, one self-contained HTML page, and a Slack message."""

from __future__ import annotations

import html

from mlflow_okr.render import number
from mlflow_okr.review import KeyResultReview, Review


def _change(kr: KeyResultReview) -> str:
    if kr.from_value is None and kr.to_value is None:
        return "no value yet"
    if kr.from_value is None:
        return f"first value {number(kr.to_value, kr.unit)}"
    if kr.delta == 0:
        return f"{number(kr.to_value, kr.unit)} (unchanged)"
    return f"{number(kr.from_value, kr.unit)} → {number(kr.to_value, kr.unit)} ({kr.delta:+.4g})"


def _flags(kr: KeyResultReview) -> list[str]:
    flags = []
    if kr.stale:
        flags.append("stale")
    if kr.below_line:
        flags.append(f"below the line (expected {kr.expected_progress:.0%}, has {(kr.progress_to or 0):.0%})")
    if kr.confidence is not None:
        flags.append(f"confidence {kr.confidence.probability:.0%}")
    if kr.guardrail_breaches:
        flags.append(f"{len(kr.guardrail_breaches)} new guardrail breach(es)")
    if kr.checkin is not None:
        who = f" by {kr.checkin.who}" if kr.checkin.who else ""
        note = f": {kr.checkin.note}" if kr.checkin.note else ""
        flags.append(f"checked in {kr.checkin.value:g}{who} on {kr.checkin.when:%Y-%m-%d}{note}")
    return flags


def _moves(kr: KeyResultReview) -> list[tuple[str, str | None]]:
    """(label, url) of the runs that moved the KR, the last few named."""
    return [
        (f"{run.name or run.run_id}" + (f" by {run.user}" if run.user else ""), run.url)
        for run in kr.moved_runs
    ]


def _window(review: Review) -> str:
    return f"{review.since:%Y-%m-%d %H:%M} → {review.until:%Y-%m-%d %H:%M} UTC"


def no_history_line(review: Review) -> str:
    return f"Cycle {review.cycle} has no KR history yet: nothing to review (run `mlflow-okr sync`)."


def review_markdown(review: Review) -> str:
    lines = [f"# Weekly review: {review.cycle}", "", f"{_window(review)}", ""]
    if not review.has_history:
        return "\n".join([*lines, no_history_line(review), ""])
    lines += ["| KR | status | change | moved by | notes |", "|---|---|---|---|---|"]
    for kr in review.key_results:
        status = " → ".join([kr.transitions[0].from_status, *(t.to_status for t in kr.transitions)]) \
            if kr.transitions else kr.status
        moved = ", ".join(f"[{label}]({url})" if url else label for label, url in _moves(kr))
        extra = len(kr.moved_by) - len(kr.moved_runs)
        moved += f" and {extra} more" if extra > 0 else ""
        cells = [f"`{kr.id}`", status, _change(kr), moved or "—", "; ".join(_flags(kr)) or "—"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if review.hypotheses:
        lines += ["", "## Hypotheses", ""]
        lines += [f"- `{h.id}` {h.event} ({h.status}), {h.time:%Y-%m-%d}" for h in review.hypotheses]
    return "\n".join(lines) + "\n"


def review_html(review: Review) -> str:
    """One self-contained page (no network); every user text escaped."""
    esc = html.escape
    rows = []
    for kr in review.key_results:
        status = " → ".join([kr.transitions[0].from_status, *(t.to_status for t in kr.transitions)]) \
            if kr.transitions else kr.status
        moved = ", ".join(
            f'<a href="{esc(url)}">{esc(label)}</a>' if url else esc(label) for label, url in _moves(kr)
        )
        rows.append(
            f"<tr><td><code>{esc(kr.id)}</code><br><small>{esc(kr.title or '')}</small></td>"
            f"<td>{esc(status)}</td><td>{esc(_change(kr))}</td><td>{moved or '—'}</td>"
            f"<td>{esc('; '.join(_flags(kr)) or '—')}</td></tr>"
        )
    body = (
        f"<p>{esc(no_history_line(review))}</p>" if not review.has_history else
        "<table><thead><tr><th>KR</th><th>status</th><th>change</th><th>moved by</th><th>notes</th></tr>"
        "</thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<title>Weekly review: {esc(review.cycle)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head>"
        f"<body><h1>Weekly review: {esc(review.cycle)}</h1><p>{esc(_window(review))}</p>{body}"
        "</body></html>\n"
    )


def review_message(review: Review) -> str:
    """The review as one Slack-compatible message (mrkdwn)."""
    from mlflow_okr.notify import slack_escape

    head = f"*{slack_escape(review.cycle)}* weekly review, {_window(review)}"
    if not review.has_history:
        return f"{head}\n{slack_escape(no_history_line(review))}"
    lines = [head]
    for kr in review.key_results:
        moves = f", moved by {len(kr.moved_by)} run(s)" if kr.moved_by else ""
        shifts = "".join(f", {t.from_status} → {t.to_status}" for t in kr.transitions)
        flags = "".join(f", {flag}" for flag in _flags(kr))
        lines.append(f"• `{slack_escape(kr.id)}` {slack_escape(_change(kr))}{shifts}{moves}{flags}")
    return "\n".join(lines)
