"""Entry point of the board's request header provider (mlflow.request_header_provider)."""

import sys

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider


class BoardRequestHeaderProvider(RequestHeaderProvider):
    """Forwards the board viewer's Authorization header; only while the board serves a request."""

    def in_context(self):
        # Every MLflow REST call asks; a process that never loaded the board must not import it.
        credentials = sys.modules.get("mlflow_okr.board.credentials")
        return credentials is not None and credentials.forwarded_authorization() is not None

    def request_headers(self):
        from mlflow_okr.board.credentials import forwarded_authorization

        return {"Authorization": forwarded_authorization()}
