"""The practice commands and options: OKR checks at validate/apply, effort, the weekly review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlflow_okr.cli.common import (
    as_of_datetime,
    as_of_option,
    cycle_option,
    format_option,
    handle_errors,
    team_option,
    tracking_uri_option,
)
from mlflow_okr.errors import CheckFailed

strict_option = click.option(
    "--strict", is_flag=True, help="Fail (exit 1) on any OKR check warning, for CI."
)


def report_checks(report: Any, strict: bool) -> None:
    """Print the checks' notes and warnings (stderr); with `strict`, warnings fail the command."""
    notes = list(report.notes)
    if not report.track_record:
        notes.append(
            "okr-implausible-target: not checked; pass --tracking-uri or set MLFLOW_TRACKING_URI to "
            "check targets against the track record"
        )
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if report.warnings and strict:
        lines = [warning.line() for warning in report.warnings]
        raise CheckFailed(
            f"{len(lines)} OKR check warning(s) with --strict:\n" + "\n".join(lines)
            + "\nFix them, or allow a code on its objective or KR: `allow: [<code>]`."
        )
    for warning in report.warnings:
        click.echo(f"warning: {warning.line()}", err=True)


def print_effort(
    tracking_uri: str | None, cycle: str | None, now: Any, team: str | None, output_format: str
) -> None:
    """`status --effort` in the asked format."""
    from mlflow_okr.practice import effort_status

    current = effort_status(tracking_uri=tracking_uri, cycle=cycle, now=now, team=team)
    if output_format == "json":
        click.echo(current.model_dump_json(indent=2))
    elif output_format == "csv":
        from mlflow_okr.effort_views import effort_frame

        click.echo(effort_frame(current).to_csv(index=False), nl=False)
    else:
        from mlflow_okr.effort_views import effort_table

        click.echo(effort_table(current))


@click.command()
@click.option(
    "--since", default="7d", show_default=True,
    help="Start of the window: a span back from now (7d, 2w) or a date (2026-11-28, UTC).",
)
@format_option("md", "html", "json", default="md")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the review to this file instead of standard output.",
)
@click.option("--notify", "send", is_flag=True, help="Also post it to the spec's notify.webhooks.")
@click.option(
    "--ui-url", default=None, envvar="MLFLOW_OKR_UI_URL",
    help="Base URL of the MLflow UI (e.g. http://localhost:5000), to link runs. Env: MLFLOW_OKR_UI_URL.",
)
@cycle_option
@team_option
@as_of_option
@tracking_uri_option
@handle_errors
def review(
    since: str, output_format: str, output: Path | None, send: bool, ui_url: str | None,
    cycle: str | None, team: str | None, as_of, tracking_uri: str | None,
) -> None:
    """What moved since a date: per KR the value change, status transitions, the runs that moved
    it, stale KRs and KRs below their on-track line; from the KR history already logged."""
    from mlflow_okr.practice import post_weekly_review, weekly_review
    from mlflow_okr.review_views import no_history_line, review_html, review_markdown

    result = weekly_review(
        since, tracking_uri=tracking_uri, cycle=cycle, team=team, now=as_of_datetime(as_of), ui_url=ui_url
    )
    if output_format == "json":
        document = result.dump() + "\n"
    elif output_format == "html":
        document = review_html(result)
    else:
        document = review_markdown(result)
    if output is None:
        click.echo(document, nl=False)
    else:
        output.write_text(document, encoding="utf-8")
        click.echo(f"Wrote the review of {result.cycle} to {output}.")
    if not result.has_history and output_format == "json":
        click.echo(no_history_line(result), err=True)
    if send:
        answered = post_weekly_review(result, tracking_uri=tracking_uri, team=team)
        for webhook, ok in answered.items():
            click.echo(f"Review posted to {webhook}: {'ok' if ok else 'failed'}", err=True)


COMMANDS = [review]
