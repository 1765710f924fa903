"""The server deployment: the `okr` and `okr-auth` server apps (entry point group mlflow.app).

`mlflow server --backend-store-uri postgresql://... --app-name okr` serves MLflow's UI and API as
usual, hooks the server's tracking store so that every write updates KRs live (the backend URI
stays MLflow's own, so workspaces, jobs and trace rollups work: `store/serving.py`), settles on
shutdown, and serves the board at `/okr/`, read from the server's own backend store.
`--app-name okr-auth` is MLflow's basic-auth app plus all of that; there the board reads through
the server's REST API with each viewer's own credentials, so MLflow's permissions decide what
every viewer sees, exactly as for `mlflow-okr status`.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from mlflow_okr import compat
from mlflow_okr.board.app import board_blueprint
from mlflow_okr.board.credentials import forwarding
from mlflow_okr.errors import OkrError
from mlflow_okr.store.serving import catch_up_at_start, install_server_hooks, settle_at_shutdown

BOARD_PREFIX = "/okr"
BOARD_ROUTES = ("/", "/api/status", "/api/board")
# Where the board calls the server's REST API in okr-auth; default: the address the request came in on.
SERVER_URL_ENV = "MLFLOW_OKR_BOARD_SERVER_URL"


def _static_prefix() -> str:
    from mlflow.server.handlers import STATIC_PREFIX_ENV_VAR

    return os.environ.get(STATIC_PREFIX_ENV_VAR, "").rstrip("/")


def _backend_store_uri() -> str | None:
    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR

    return os.environ.get(BACKEND_STORE_URI_ENV_VAR)


def _ui_url() -> str:
    # The MLflow UI is this server: root-relative links work behind any host name or proxy.
    return _static_prefix() + "/"


def _uvicorn() -> bool:
    from mlflow.environment_variables import _MLFLOW_SGI_NAME  # checked on MLflow 3.17.2

    return _MLFLOW_SGI_NAME.get() == "uvicorn"


def _hooked(served: Any) -> Any:
    """`served` (what the worker runs) with the server's tracking store hooked.

    Under uvicorn, the FastAPI app's lifespan catches up on work killed workers left and settles
    this worker's pending KR updates when it stops; gunicorn and waitress run the Flask app, whose
    workers end through Python's exit hooks, which settle them.
    """
    install_server_hooks()
    if _uvicorn():
        compat.wrap_lifespan(served, on_startup=catch_up_at_start, on_shutdown=settle_at_shutdown)
    return served


def _served(app: Flask) -> Any:
    """What `mlflow server` runs: the Flask app, wrapped in MLflow's FastAPI app under uvicorn."""
    if _uvicorn():
        from mlflow.server.fastapi_app import create_fastapi_app

        return _hooked(create_fastapi_app(app))
    return _hooked(app)


def _workspace_from_query() -> None:
    """`/okr/?workspace=team-a`: the board of that workspace (the page passes it on to its API).

    MLflow's UI names the workspace in its links' query; its API takes it from a header, which a
    link cannot carry.
    """
    name = request.args.get("workspace")
    if name:
        compat.act_in_requested_workspace(name, request.path)


def create_app() -> Any:
    """`mlflow server --app-name okr`: MLflow's server with the board at /okr/ (no auth)."""
    from mlflow.server import app

    blueprint = board_blueprint(_backend_store_uri, _ui_url)
    blueprint.before_request(_workspace_from_query)
    app.register_blueprint(blueprint, url_prefix=_static_prefix() + BOARD_PREFIX)
    return _served(app)


def _own_rest_url() -> str:
    """The server's REST API: the socket address the request arrived on, never the client's Host header.

    Under uvicorn, MLflow's WSGI bridge fills SERVER_NAME and SERVER_PORT from the connection's local
    address (checked on MLflow 3.17.2), so a viewer cannot make the board send requests elsewhere.
    """
    configured = os.environ.get(SERVER_URL_ENV)
    if configured:
        return configured.rstrip("/")
    host, port = request.environ["SERVER_NAME"], request.environ["SERVER_PORT"]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}{_static_prefix()}"


def _allow_authenticated_viewers(paths: list[str]) -> None:
    """Let any logged-in user reach the board's routes; its reads are then checked one by one.

    MLflow's basic-auth app fails closed on routes it has no validator for (checked on MLflow
    3.17.2). The board's pages hold nothing by themselves: every read behind them is a REST call
    made with the viewer's credentials, which MLflow authorizes per experiment and run.
    """
    from mlflow.server.auth import BEFORE_REQUEST_VALIDATORS

    for path in paths:
        BEFORE_REQUEST_VALIDATORS[(path, "GET")] = lambda: True


def create_auth_app() -> Any:
    """`mlflow server --app-name okr-auth`: MLflow's basic-auth app plus the board at /okr/."""
    from mlflow.server import app
    from mlflow.server.auth import create_app as create_basic_auth_app

    if not _uvicorn() and not os.environ.get(SERVER_URL_ENV):
        # gunicorn and waitress may take SERVER_NAME from the client's Host header.
        raise OkrError(
            f"okr-auth under gunicorn or waitress needs {SERVER_URL_ENV}, the URL at which this "
            "server reaches its own REST API (e.g. http://127.0.0.1:5000)"
        )

    blueprint = board_blueprint(
        _own_rest_url,
        _ui_url,
        name="okr_board_auth",
        reading=lambda: forwarding(request.headers.get("Authorization")),
    )

    blueprint.before_request(_workspace_from_query)
    prefix = _static_prefix() + BOARD_PREFIX
    app.register_blueprint(blueprint, url_prefix=prefix)
    _allow_authenticated_viewers([prefix + route for route in BOARD_ROUTES])
    return _hooked(create_basic_auth_app(app))
