"""A real MySQL server for the tests: Debian's MariaDB, a temporary data directory, a free port.

The server starts once per test session. Each test gets a fresh database copied from a template
that already holds MLflow's schema (MySQL has no CREATE DATABASE ... TEMPLATE), so no test pays
for MLflow's migrations, which take many seconds on MySQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import serve
from tests.servers import free_port

TEMPLATE_DATABASE = "mlflow_template"
INSTALL_HINT = "install Debian's MariaDB: apt-get install -y mariadb-server"
STARTUP_SECONDS = 60


def find_mariadb() -> tuple[Path, Path] | None:
    """The MariaDB server and mariadb-install-db executables, if both are installed."""
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
    install_db = shutil.which("mariadb-install-db")
    if server is None or install_db is None:
        return None
    return Path(server), Path(install_db)


class MysqlServer:
    """One MariaDB server in a temporary directory, reachable on 127.0.0.1 as root without password."""

    def __init__(self, server: Path, install_db: Path):
        self.server = server
        self.install_db = install_db
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-okr-mysql-"))
        self.data_dir = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.log_file = self.root / "server.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def _user_options(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; otherwise it runs as whoever starts it.
        return ["--user=root"] if os.geteuid() == 0 else []

    def init(self) -> None:
        # --no-defaults: the system's /etc/mysql configuration must not move the socket, port or
        # data directory of this private server.
        subprocess.run(
            [
                str(self.install_db), "--no-defaults", f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal", "--skip-test-db", *self._user_options(),
            ],
            check=True, capture_output=True, text=True, timeout=120,
        )

    def start(self) -> None:
        command = [
            str(self.server), "--no-defaults", f"--datadir={self.data_dir}", f"--port={self.port}",
            f"--socket={self.socket}", f"--pid-file={self.root / 'mysqld.pid'}",
            f"--log-error={self.log_file}", "--bind-address=127.0.0.1", "--skip-networking=0",
            "--skip-name-resolve", "--skip-log-bin", "--max-connections=300",
            # Debian's packaged server (and MySQL 8) default to utf8mb4; --no-defaults would leave
            # the compiled-in latin1, which stores no text outside Latin-1.
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
            # Durability is not under test; these keep the many small commits cheap.
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--sync-binlog=0",
            *self._user_options(),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._accepts_connections():
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd accepted no connection in {STARTUP_SECONDS}s:\n{self.log()}")
            time.sleep(0.1)

    def _accepts_connections(self) -> bool:
        import pymysql

        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2).close()
        except pymysql.err.OperationalError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)
        self.process = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def uri(self, database: str = "") -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str | None = None):
        import pymysql

        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database=database, autocommit=True
        )

    def create_template(self) -> None:
        """A database with MLflow's schema already migrated, for cheap per-test copies."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{TEMPLATE_DATABASE}`")
        store = SqlAlchemyStore(self.uri(TEMPLATE_DATABASE), str(self.root / "artifacts"))
        store.engine.dispose()

    def create_database(self) -> str:
        """A fresh database with the template's tables, keys and rows; returns its URI."""
        name = "t_" + uuid.uuid4().hex[:12]
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = %s",
                (TEMPLATE_DATABASE,),
            )
            tables = cursor.fetchall()
            views = [table for table, kind in tables if kind != "BASE TABLE"]
            assert not views, f"copying views is not implemented: {views}"
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute(f"USE `{name}`")
            # Tables are created in any order, so their foreign keys may name tables not made yet;
            # the Default experiment's id 0 must be copied as 0, not as the next auto-increment value.
            cursor.execute("SET foreign_key_checks = 0")
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')")
            for table, _ in tables:
                cursor.execute(f"SHOW CREATE TABLE `{TEMPLATE_DATABASE}`.`{table}`")
                cursor.execute(cursor.fetchone()[1])
                cursor.execute(f"INSERT INTO `{table}` SELECT * FROM `{TEMPLATE_DATABASE}`.`{table}`")
            cursor.execute("SET foreign_key_checks = 1")
        return self.uri(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MysqlServer]:
    """A MariaDB server for the whole session; skips only where MariaDB is not installed."""
    executables = find_mariadb()
    if executables is None:
        pytest.skip(f"mariadbd or mariadb-install-db is not on PATH nor in /usr/sbin; {INSTALL_HINT}")
    try:
        import pymysql  # noqa: F401  (the driver of mysql+pymysql://)
    except ImportError:
        pytest.skip("pymysql is not installed; pip install pymysql")
    yield from serve(MysqlServer(*executables))


@pytest.fixture
def mysql_uri(mysql_server: MysqlServer) -> str:
    """A fresh MariaDB database with MLflow's schema: `mysql+pymysql://root@127.0.0.1:PORT/DB`."""
    if not mysql_server.is_running():
        mysql_server.start()
    return mysql_server.create_database()
