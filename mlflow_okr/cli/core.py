"""Spec and state commands: init, validate, schema, apply, sync, status, checkin."""

from __future__ import annotations

from pathlib import Path

import click

import mlflow_okr
from mlflow_okr.cli.common import (
    EXIT_CHECK_FAILED,
    CommandError,
    RunCounter,
    as_of_datetime,
    as_of_option,
    cycle_option,
    echo_json,
    format_option,
    handle_errors,
    team_option,
    tracking_uri_option,
)
from mlflow_okr.cli.practice import print_effort, report_checks, strict_option
from mlflow_okr.templates import starter_spec

spec_argument = click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="okrs.yaml")
@click.option("--cycle", default=None, help="Cycle for the starter file (default: this quarter).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@handle_errors
def init(path: Path, cycle: str | None, force: bool) -> None:
    """Write a starter okrs.yaml to PATH (default: okrs.yaml)."""
    if path.exists() and not force:
        raise CommandError(f"{path} already exists; pass --force to overwrite it")
    text = starter_spec(cycle)
    mlflow_okr.parse_spec(text, str(path))
    path.write_text(text, encoding="utf-8")
    click.echo(f"Wrote {path}. Edit it, then run: mlflow-okr validate {path} && mlflow-okr apply {path}")


@click.command()
@spec_argument
@strict_option
@tracking_uri_option
@handle_errors
def validate(spec_file: Path, strict: bool, tracking_uri: str | None) -> None:
    """Check SPEC_FILE against the okrs.yaml format; exit 2 with file:line errors if invalid.

    Then run the OKR checks (okr-bau, okr-no-business-proxy, ...): warnings, or exit 1 with
    --strict. Targets are checked against the track record only with a tracking URI.
    """
    spec = mlflow_okr.load_spec(spec_file)
    krs = spec.key_results()
    click.echo(
        f"{spec_file}: valid. Cycle {spec.cycle.name} ({spec.cycle.dates}), "
        f"{len(spec.objectives)} objectives, {len(krs)} key results."
    )
    checks = mlflow_okr.check_okrs(spec, tracking_uri=tracking_uri, track_record=tracking_uri is not None)
    report_checks(checks, strict)


@click.command()
def schema() -> None:
    """Print the JSON Schema of okrs.yaml (for editor completion and checks)."""
    echo_json(mlflow_okr.json_schema())


@click.command()
@spec_argument
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@strict_option
@tracking_uri_option
@handle_errors
def apply(spec_file: Path, dry_run: bool, strict: bool, tracking_uri: str | None) -> None:
    """Publish SPEC_FILE to the okr/<cycle> experiment: one run per objective and KR.

    The OKR checks' warnings follow; with --strict they run first and a warning stops the apply
    (exit 1).
    """
    spec = mlflow_okr.load_spec(spec_file)
    # The track record is read before the apply: a cycle applied again is not its own history.
    checks = mlflow_okr.check_okrs(spec, tracking_uri=tracking_uri)
    if strict:
        report_checks(checks, strict)
    plan = mlflow_okr.apply_spec(spec, tracking_uri=tracking_uri, dry_run=dry_run)
    verb = "Would apply" if dry_run else "Applied"
    changes = plan.changes
    click.echo(f"{verb} {spec_file} to experiment {plan.experiment}: {len(changes)} change(s).")
    for step in changes:
        detail = f"  ({step.detail})" if step.detail else ""
        click.echo(f"  {step.action:<9} {step.kind:<9} {step.id}{detail}")
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if not strict:
        report_checks(checks, strict)


def _experiments(result) -> str:
    return ", ".join(f"okr/{label}" for label in result.sets) or f"okr/{result.cycle}"


def _sync_writes(result) -> str:
    """What `sync` wrote, in words: a first sync writes every field, which does not mean they were broken."""
    if not result.kr_drift and not result.run_drift_count:
        return "Nothing to write: the stored KR state and run tags were up to date."
    return (
        f"Wrote {len(result.kr_drift)} KR state field(s) to {_experiments(result)} and "
        f"{result.run_drift_count} okr.* tag(s) to source runs."
    )


@click.command()
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the stored state drifted.")
@cycle_option
@team_option
@as_of_option
@tracking_uri_option
@handle_errors
def sync(check: bool, cycle: str | None, team: str | None, as_of, tracking_uri: str | None) -> None:
    """Recompute every KR from the source runs and repair the stored state."""
    from mlflow_okr import render

    counter = RunCounter("sync")
    result = mlflow_okr.sync(
        tracking_uri=tracking_uri, cycle=cycle, check=check, now=as_of_datetime(as_of), progress=counter,
        team=team,
    )
    counter.done()
    if check:
        if not result.drifted:
            click.echo(f"No drift: {result.scope}, {result.runs_scanned} runs checked.")
            return
        lines = [f"Drift in {result.scope}:"]
        lines += [
            f"  KR {d.kr}: {d.field} stored {d.stored!r}, recomputed {d.computed!r}" for d in result.kr_drift
        ]
        lines += [
            f"  run {d.run_id}: tag {d.tag} stored {d.stored!r}, recomputed {d.computed!r}"
            for d in result.run_drift
        ]
        if result.run_drift_count > len(result.run_drift):
            lines.append(f"  ... {result.run_drift_count - len(result.run_drift)} more run tag(s)")
        lines.append("Run `mlflow-okr sync` to repair.")
        raise CommandError("\n".join(lines), EXIT_CHECK_FAILED)
    click.echo(f"Synced {result.scope}: {result.runs_scanned} runs scanned. {_sync_writes(result)}")
    click.echo(render.status_table(result.status))


@click.command()
@format_option("table", "json", "csv")
@click.option(
    "--effort", is_flag=True,
    help="Runs, people, run-hours and improving runs per KR, objective, owner and team; and the "
    "cycle's runs that count for no KR.",
)
@cycle_option
@team_option
@as_of_option
@tracking_uri_option
@handle_errors
def status(
    output_format: str, effort: bool, cycle: str | None, team: str | None, as_of, tracking_uri: str | None
) -> None:
    """Print every objective and KR with its progress and status, for every cycle that contains today."""
    from mlflow_okr import render
    from mlflow_okr.confidence import confidence_lines
    from mlflow_okr.practice import annotated_status

    if effort:
        print_effort(tracking_uri, cycle, as_of_datetime(as_of), team, output_format)
        return
    current = annotated_status(tracking_uri=tracking_uri, cycle=cycle, now=as_of_datetime(as_of), team=team)
    if output_format == "json":
        click.echo(current.model_dump_json(indent=2))
    elif output_format == "csv":
        from mlflow_okr.results import status_frame

        click.echo(status_frame(current).to_csv(index=False), nl=False)
    else:
        click.echo(render.status_table(current))
        for line in confidence_lines(current):
            click.echo(line)


@click.command()
@click.argument("kr_id")
@click.argument("value", type=float)
@click.option("--note", default=None, help="What happened, for the record.")
@cycle_option
@tracking_uri_option
@handle_errors
def checkin(kr_id: str, value: float, note: str | None, cycle: str | None, tracking_uri: str | None) -> None:
    """Record VALUE for the manual KR KR_ID, with who and when."""
    record = mlflow_okr.checkin(kr_id, value, note=note, tracking_uri=tracking_uri, cycle=cycle)
    when = f"{record.when:%Y-%m-%d %H:%M} UTC"
    click.echo(f"Checked in {record.kr} = {record.value:g} by {record.who} at {when}.")


COMMANDS = [init, validate, schema, apply, sync, status, checkin]
