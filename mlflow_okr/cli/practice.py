"""The practice commands and options: OKR checks at validate/apply, effort, the weekly review."""

from __future__ import annotations

from typing import Any

import click

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
