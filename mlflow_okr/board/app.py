"""The board's Flask blueprint: the page at `/`, the status object at `/api/status`, details at `/api/board`.

The same blueprint serves `mlflow-okr board` (its own Flask app) and the board mounted at `/okr/`
inside `mlflow server --app-name okr|okr-auth`; only where it reads from differs.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from mlflow.exceptions import MlflowException

from mlflow_okr.board import data
from mlflow_okr.errors import InputError, NotPublishedError, OkrError

PAGE_TEMPLATE = resources.files("mlflow_okr.board").joinpath("page.html")
NONCE_PLACEHOLDER = "{{nonce}}"


def _page(nonce: str) -> str:
    return PAGE_TEMPLATE.read_text(encoding="utf-8").replace(NONCE_PLACEHOLDER, nonce)


def _as_of() -> dt.datetime | None:
    """`?as_of=2026-11-15` (or an ISO time) evaluates statuses at that moment, as `status --as-of`."""
    raw = request.args.get("as_of")
    if not raw:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise InputError(f"bad as_of {raw!r}: give a date such as 2026-11-15 or an ISO time") from None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def _error(status_code: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status_code
    return response


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def board_blueprint(
    tracking_uri: Callable[[], str | None],
    ui_url: Callable[[], str | None],
    cycle: str | None = None,
    name: str = "okr_board",
    reading: Callable[[], AbstractContextManager[Any]] = nullcontext,
    team: str | None = None,
) -> Blueprint:
    """The board's routes; `tracking_uri()` and `ui_url()` are asked on every request.

    Every read happens inside `reading()`, e.g. with the viewer's credentials forwarded.
    """
    blueprint = Blueprint(name, __name__)

    def chosen_cycle() -> str | None:
        return request.args.get("cycle") or cycle

    def chosen_team() -> str | None:
        return request.args.get("team", team)

    @blueprint.get("/")
    def page() -> Response:
        nonce = secrets.token_urlsafe(16)
        response = Response(_page(nonce), mimetype="text/html")
        # Nothing may load from elsewhere (the page works offline), and only the page's own script
        # runs: a <script> that slipped into user text could not execute.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; "
            f"script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return _no_store(response)

    @blueprint.get("/api/status")
    def status() -> Response:
        with reading():
            current = data.cycle_status(tracking_uri(), chosen_cycle(), _as_of(), chosen_team())
        return _no_store(jsonify(data.status_json(current)))

    @blueprint.get("/api/board")
    def board() -> Response:
        with reading():
            state = data.board_state(tracking_uri(), ui_url(), chosen_cycle(), _as_of(), chosen_team())
        return _no_store(jsonify(state))

    @blueprint.errorhandler(OkrError)
    def okr_error(exc: OkrError) -> Response:
        return _no_store(_error(404 if isinstance(exc, NotPublishedError) else 400, str(exc)))

    @blueprint.errorhandler(MlflowException)
    def mlflow_error(exc: MlflowException) -> Response:
        return _no_store(_error(exc.get_http_status_code(), f"MLflow: {exc.message}"))

    return blueprint


def create_board_app(
    tracking_uri: str | None = None,
    ui_url: str | None = None,
    cycle: str | None = None,
    team: str | None = None,
) -> Flask:
    """The board as its own Flask app (what `mlflow-okr board` serves), reading `tracking_uri`."""
    if ui_url is not None and not ui_url.lower().startswith(("http://", "https://")):
        # The page turns it into link targets: only web addresses, never javascript: or file: URLs.
        raise InputError(f"MLflow UI URL {ui_url!r} must start with http:// or https://")
    app = Flask("mlflow_okr.board")
    app.json.sort_keys = False
    app.register_blueprint(board_blueprint(lambda: tracking_uri, lambda: ui_url, cycle, team=team))
    return app
