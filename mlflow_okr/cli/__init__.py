"""The `mlflow-okr` command line: options, calls into the library, printing."""

from __future__ import annotations

import click

from mlflow_okr import __version__
from mlflow_okr.cli import board as board_command
from mlflow_okr.cli import core, demo
from mlflow_okr.cli import ledger as ledger_commands
from mlflow_okr.cli import practice as practice_commands
from mlflow_okr.cli import report as report_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlflow-okr")
def cli() -> None:
    """Objectives and key results, tracked live in MLflow."""


for command in core.COMMANDS:
    cli.add_command(command)
cli.add_command(demo.demo)
cli.add_command(board_command.board)
for command in report_commands.COMMANDS:
    cli.add_command(command)
for command in ledger_commands.COMMANDS:
    cli.add_command(command)
for command in practice_commands.COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="mlflow-okr")
