"""The `demo` command: a real end-to-end example on an embedded SQLite store."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from mlflow_okr.cli.common import handle_errors


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Where to create mlflow.db and okrs.yaml (created if missing).",
)
@click.option("--force", is_flag=True, help="Replace an mlflow.db or okrs.yaml already in the directory.")
@handle_errors
def demo(directory: Path, force: bool) -> None:
    """Train scikit-learn models, log them to a new SQLite MLflow store and score them as OKRs."""
    from mlflow_okr import render
    from mlflow_okr.demo import run_demo
    from mlflow_okr.effort_views import effort_table
    from mlflow_okr.review_views import review_markdown

    result = run_demo(directory, force=force, report=click.echo)
    click.echo()
    click.echo(render.status_table(result.status))
    click.echo()
    if result.effort is not None:
        click.echo(effort_table(result.effort))
        click.echo()
    if result.review is not None:
        click.echo(review_markdown(result.review))
    click.echo(
        f"Done in {result.seconds:.0f} s: {result.training_runs} training runs, OKRs in {result.spec_path}."
    )
    click.echo("Open the MLflow UI on this store (experiment okr/<cycle> holds one run per KR):")
    click.echo(f"  {result.ui_command}")
    click.echo("Query it from the command line:")
    click.echo(f"  MLFLOW_TRACKING_URI={shlex.quote(result.store_uri)} mlflow-okr status")
    click.echo(f"  MLFLOW_TRACKING_URI={shlex.quote(result.store_uri)} mlflow-okr status --effort")
    click.echo(f"  MLFLOW_TRACKING_URI={shlex.quote(result.store_uri)} mlflow-okr review --since 7d")
