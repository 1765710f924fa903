"""The `board` command: serve the live OKR board on this machine."""

from __future__ import annotations

import click

from mlflow_okr.cli.common import CommandError, cycle_option, handle_errors, team_option, tracking_uri_option


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=5050, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on."
)
@click.option(
    "--ui-url",
    default=None,
    envvar="MLFLOW_OKR_UI_URL",
    help="MLflow UI base URL for run links (default: the tracking URI when it is http(s), else no "
    "links). Env: MLFLOW_OKR_UI_URL.",
)
@cycle_option
@team_option
@tracking_uri_option
@handle_errors
def board(
    host: str, port: int, ui_url: str | None, cycle: str | None, team: str | None, tracking_uri: str | None
) -> None:
    """Serve a live OKR board: every objective and KR, updating as runs are logged."""
    # Flask and MLflow load here, not when the CLI starts: other commands stay fast.
    from mlflow_okr.board.app import create_board_app
    from mlflow_okr.board.data import default_ui_url

    app = create_board_app(tracking_uri, ui_url or default_ui_url(tracking_uri), cycle, team)
    click.echo(f"OKR board on http://{host}:{port}/ (JSON at /api/status); Ctrl+C stops it.")
    # Flask's own threaded server: enough for a team's local board. For a shared board, mount it in
    # the tracking server instead: `mlflow server --app-name okr` (or okr-auth) serves it at /okr/.
    try:
        app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
    except OSError as exc:
        raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None

