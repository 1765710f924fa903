"""The caller's credentials, forwarded to MLflow's REST API while the board serves their request.

In `mlflow server --app-name okr-auth` the board reads through the server's own REST API as the
person who asked, so MLflow's auth decides what each viewer sees. The value lives in a context
variable: each request (thread) sees only its own caller's header.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

# Guards nothing shared: a ContextVar is per thread and per request context by construction.
_forwarded_authorization: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mlflow_okr_board_authorization", default=None
)


def forwarded_authorization() -> str | None:
    """The Authorization header of the board request being served, if any."""
    return _forwarded_authorization.get()


@contextmanager
def forwarding(authorization: str | None) -> Iterator[None]:
    """MLflow REST calls made inside the block carry `authorization` (the caller's header)."""
    token = _forwarded_authorization.set(authorization)
    try:
        yield
    finally:
        _forwarded_authorization.reset(token)
