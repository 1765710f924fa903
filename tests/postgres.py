"""A real PostgreSQL server for the tests: Debian's binaries, a temporary data directory, a free port.

The server starts once per test session. Each test gets a fresh database cloned from a template
that already holds MLflow's schema, so no test pays for MLflow's migrations twice.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TEMPLATE_DATABASE = "mlflow_template"
INSTALL_HINT = "install Debian's PostgreSQL: apt-get install -y postgresql"


def find_postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL bin directory that has initdb and pg_ctl, if any."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    for initdb in reversed(candidates):
        bin_dir = Path(initdb).parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; stop() and start() simulate an outage."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-okr-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: hand the directory to the postgres user.
            shutil.chown(self.root, user="postgres")
            os.chmod(self.root, 0o755)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self._run(
            self.bin_dir / "initdb", "-D", self.data_dir, "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        pg_ctl = self.bin_dir / "pg_ctl"
        self._run(pg_ctl, "-D", self.data_dir, "-o", options, "-l", self.log_file, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True).returncode == 0

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, statement: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as connection:
            connection.execute(statement)

    def create_template(self) -> None:
        """A database with MLflow's schema already migrated, for cheap per-test copies."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self.execute(f'CREATE DATABASE "{TEMPLATE_DATABASE}"')
        store = SqlAlchemyStore(self.uri(TEMPLATE_DATABASE), str(self.root / "artifacts"))
        store.engine.dispose()

    def create_database(self) -> str:
        """A fresh database with MLflow's schema; returns its URI."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DATABASE}"')
        return self.uri(name)

    def remove(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; skips only where PostgreSQL is not installed."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL binaries not found under /usr/lib/postgresql/*/bin; {INSTALL_HINT}")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's driver for postgresql://)
    except ImportError:
        pytest.skip("psycopg is not installed; pip install 'psycopg[binary]'")
    yield from serve(PostgresServer(bin_dir))


def serve(server):
    """Initialise, start and template a database server for a test session; remove it after."""
    try:
        server.init()
        server.start()
        server.create_template()
    except BaseException:
        server.remove()
        raise
    yield server
    server.remove()


@pytest.fixture
def postgres_uri(postgres_server: PostgresServer) -> str:
    """A fresh PostgreSQL database with MLflow's schema: `postgresql://postgres@127.0.0.1:PORT/DB`."""
    if not postgres_server.is_running():
        postgres_server.start()
    return postgres_server.create_database()
