"""Quarter-end commands: `report` (Markdown, HTML, JSON, CSV; a CI gate) and `notify --test`."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_okr.cli.common import (
    EXIT_CHECK_FAILED,
    CommandError,
    as_of_datetime,
    as_of_option,
    cycle_option,
    format_option,
    handle_errors,
    team_option,
    tracking_uri_option,
)


@click.command()
@format_option("md", "html", "json", "csv", default="md")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report to this file instead of standard output.",
)
@click.option(
    "--ui-url",
    default=None,
    envvar="MLFLOW_OKR_UI_URL",
    help="Base URL of the MLflow UI (e.g. http://localhost:5000), to link runs. Env: MLFLOW_OKR_UI_URL.",
)
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 when the cycle grade is below this (e.g. 0.7), for CI gates.",
)
@cycle_option
@team_option
@as_of_option
@tracking_uri_option
@handle_errors
def report(
    output_format: str,
    output: Path | None,
    ui_url: str | None,
    fail_under: float | None,
    cycle: str | None,
    team: str | None,
    as_of,
    tracking_uri: str | None,
) -> None:
    """Write the cycle's report: grades, KRs with evidence and trends, hypotheses, next cycle."""
    from mlflow_okr import state
    from mlflow_okr.report import build_report, render

    if ui_url and not ui_url.lower().startswith(("http://", "https://")):
        raise CommandError(f"--ui-url {ui_url!r} must start with http:// or https://")
    client = state.make_client(tracking_uri)
    result = build_report(client, cycle=cycle, now=as_of_datetime(as_of), ui_url=ui_url, team=team)
    document = render(result, output_format)
    if output is None:
        click.echo(document, nl=False)
    else:
        try:
            output.write_text(document, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(
            f"Wrote the {output_format} report of cycle {result.status.cycle.name} to {output}.", err=True
        )
    score = result.status.score
    if fail_under is not None and score < fail_under:
        raise CommandError(
            f"cycle {result.status.cycle.name} grade {score:.2f} is below --fail-under {fail_under:.2f}",
            EXIT_CHECK_FAILED,
        )


@click.command()
@click.option("--test", "send_test", is_flag=True, help="Send a test message to every configured webhook.")
@cycle_option
@team_option
@tracking_uri_option
@handle_errors
def notify(send_test: bool, cycle: str | None, team: str | None, tracking_uri: str | None) -> None:
    """Check the `notify:` webhooks of the published sets (KR transitions are sent automatically)."""
    from mlflow_okr import notify as notifications
    from mlflow_okr import state

    sets = state.current_sets(state.make_client(tracking_uri), cycle, team)
    configured = [published for published in sets if published.spec.notify and published.spec.notify.webhooks]
    if not configured:
        names = ", ".join(published.label for published in sets)
        raise CommandError(
            f"no webhooks are configured for {names}: add a `notify:` section "
            "with `webhooks:` to okrs.yaml and run `mlflow-okr apply`"
        )
    results: dict[str, bool] = {}
    for published in configured:
        config = published.spec.notify
        assert config is not None
        label = f"Cycle {published.cycle.name}" + (f", team {published.team}" if published.team else "")
        transitions = ", ".join(config.transitions)
        click.echo(f"{label}: {len(config.webhooks)} webhook(s), transitions reported: {transitions}.")
        if not send_test:
            continue
        answers = notifications.send_test_message(config, published.cycle.name)
        for webhook, ok in answers.items():
            click.echo(f"  {'ok    ' if ok else 'FAILED'} {notifications.describe_webhook(webhook)}")
        results.update(answers)
    if not send_test:
        return
    answered = sum(results.values())
    summary = f"{answered} of {len(results)} webhook(s) answered."
    if answered < len(results):
        raise CommandError(summary + " See the log above for why.", EXIT_CHECK_FAILED)
    click.echo(summary)


COMMANDS = [report, notify]
