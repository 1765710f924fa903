"""Which store URIs `okr+<scheme>://` can wrap: the one list of supported inner schemes.

No MLflow import here: the CLI checks a `--tracking-uri` with it before it loads MLflow.
"""

from __future__ import annotations

from mlflow_okr.errors import InputError
from mlflow_okr.vocabulary import OKR_SCHEME_PREFIX, has_okr_scheme, without_okr_scheme

# The database URIs MLflow's SQLAlchemy store takes (dialect and the drivers MLflow documents),
# and its REST store. Each one is registered as okr+<scheme> in setup.cfg.
SQL_SCHEMES = (
    "sqlite",
    "postgresql",
    "postgresql+psycopg2",
    "postgresql+psycopg",
    "postgresql+pg8000",
    "mysql",
    "mysql+pymysql",
    "mysql+mysqldb",
    "mysql+mysqlconnector",
    "mssql",
    "mssql+pyodbc",
)
REST_SCHEMES = ("http", "https")
INNER_SCHEMES = SQL_SCHEMES + REST_SCHEMES
# Schemes MLflow itself knows but okr+ cannot wrap. They are registered too, so that MLflow
# hands them to mlflow-okr and the user gets the error below instead of MLflow's "unsupported URI".
REJECTED_SCHEMES = ("file", "databricks", "databricks-uc", "uc")


class UnsupportedStoreUri(InputError):
    """An okr+ URI whose inner scheme mlflow-okr cannot wrap (a file store, Databricks, a typo)."""


def supported_schemes_text() -> str:
    return ", ".join(OKR_SCHEME_PREFIX + scheme for scheme in INNER_SCHEMES)


def inner_uri_of(store_uri: str) -> str:
    """`okr+sqlite:///x.db` -> `sqlite:///x.db`; raises UnsupportedStoreUri for any other inner scheme."""
    # Only the scheme goes into the message: the rest of a database URI may hold a password.
    scheme, separator, _ = store_uri.partition(":")
    inner_scheme = without_okr_scheme(scheme).lower() if has_okr_scheme(scheme) else None
    if inner_scheme is None or not separator or inner_scheme not in INNER_SCHEMES:
        raise UnsupportedStoreUri(
            f"unsupported store URI scheme {scheme!r}: okr+ wraps a database or an MLflow server; "
            f"use one of {supported_schemes_text()}"
        )
    return without_okr_scheme(store_uri)
