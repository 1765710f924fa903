"""Options and error handling shared by every command."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from mlflow_okr.errors import CheckFailed, InputError, OkrError, SpecError
from mlflow_okr.vocabulary import has_okr_scheme

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class CommandError(click.ClickException):
    """A ClickException with the exit code mlflow-okr promises (1 failed check, 2 bad input)."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into clear messages and exit codes, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SpecError as exc:
            raise CommandError("\n".join(exc.problems)) from None
        except CheckFailed as exc:
            raise CommandError(str(exc), EXIT_CHECK_FAILED) from None
        except InputError as exc:
            raise CommandError(_naming_the_option(exc)) from None
        except OkrError as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:
            # Commands that never talk to MLflow do not import it; if it is not loaded, this
            # cannot be one of its errors.
            mlflow_exceptions = sys.modules.get("mlflow.exceptions")
            if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
                raise CommandError(f"MLflow: {exc.message}") from None
            raise

    return wrapper


def _naming_the_option(error: InputError) -> str:
    """The library's message, led by the option of the current command that takes its parameter."""
    context = click.get_current_context(silent=True)
    if error.parameter and context is not None:
        for param in context.command.params:
            if param.name == error.parameter and isinstance(param, click.Option):
                return f"{max(param.opts, key=len)}: {error}"
    return str(error)


def _checked_tracking_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An okr+ URI must wrap a scheme mlflow-okr supports; say so before MLflow guesses at it."""
    if has_okr_scheme(value):
        from mlflow_okr.store.uris import UnsupportedStoreUri, inner_uri_of

        try:
            inner_uri_of(value)
        except UnsupportedStoreUri as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


tracking_uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    callback=_checked_tracking_uri,
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI). An okr+ prefix is accepted.",
)
cycle_option = click.option(
    "--cycle", default=None, help="Cycle name, e.g. 2026-Q4 (default: every cycle that contains today)."
)
team_option = click.option(
    "--team",
    default=None,
    help="Only this team's set (its okrs.yaml's `team:`); '' is the unnamed set (default: every set).",
)


def format_option(*choices: str, default: str = "table") -> Callable[..., Any]:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="Output format.",
    )


def as_of_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--as-of",
        type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
        default=None,
        help="Evaluate statuses as of this date (UTC), for reproducible output.",
    )(command)


def as_of_datetime(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


class RunCounter:
    """A progress line on a terminal (stderr) for work whose total is not known up front."""

    def __init__(self, label: str):
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, count: int) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}: {count:,} runs scanned", nl=False, err=True)

    def done(self) -> None:
        if self.enabled:
            click.echo(err=True)
