"""Start a real `mlflow server` subprocess on a free 127.0.0.1 port and wait until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

STARTUP_SECONDS = 90


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    """A running `mlflow server`: its URL and the log file of its output."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# The two server deployments of mlflow-okr, which must give the same results:
# "okr-app": `mlflow server --backend-store-uri <plain uri> --app-name okr` (docs/team.md's);
# "okr-uri": `mlflow server --backend-store-uri okr+<plain uri>` (the first one, kept working).
DEPLOYMENTS = ("okr-app", "okr-uri")


def deployment_args(deployment: str, plain_uri: str, auth: bool = False) -> tuple[str, str | None]:
    """The backend store URI and server app of `deployment` for the backend at `plain_uri`."""
    if deployment == "okr-app":
        return plain_uri, "okr-auth" if auth else "okr"
    if deployment == "okr-uri":
        return "okr+" + plain_uri, "basic-auth" if auth else None
    raise ValueError(f"unknown deployment {deployment!r}; one of {DEPLOYMENTS}")


def _wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {process.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} did not answer in {seconds:.0f}s:\n{log_path.read_text()}")


@contextmanager
def mlflow_server(
    backend_store_uri: str,
    workdir: Path,
    workers: int = 1,
    app_name: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_seconds: float = STARTUP_SECONDS,
) -> Iterator[MlflowServer]:
    """Run `mlflow server` for the duration of the block; stop it (and its workers) after.

    `app_name` selects a server app (e.g. "basic-auth"); `extra_env` is added to the
    environment (e.g. MLFLOW_AUTH_CONFIG_PATH); artifacts go under `workdir`.
    """
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"mlflow-server-{port}.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", (workdir / "artifacts").as_uri(),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
    ]
    if app_name:
        command += ["--app-name", app_name]
    command += list(extra_args)
    env = {**os.environ, **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log_path, startup_seconds)
        yield MlflowServer(url=url, process=process, log_path=log_path)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        # The server runs its workers in the same new session: stop the whole group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def basic_auth_config(directory: Path, admin: str, admin_password: str) -> Path:
    """The ini file of MLflow's basic-auth app: no permission by default, `admin` as the admin user."""
    config = directory / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{directory / 'auth.db'}\n"
        f"admin_username = {admin}\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Cache password checks: PBKDF2 on every request would dominate a test's time.
        "auth_cache_ttl_seconds = 300\n",
        encoding="utf-8",
    )
    return config
