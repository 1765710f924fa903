"""Faults: a writer or a server worker killed with SIGKILL mid-write, and the database going away.

The user's completed writes are all there afterwards, the database is consistent, OKR code adds
no failure mode of its own, and `mlflow-okr sync` restores the KR state (`sync --check` clean).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlflow_okr.cli import cli
from tests.conftest import IN_CYCLE_MS, requires_okr_store
from tests.test_stress import Journal, missing_writes, publish, writer_process

KILL_AFTER_SECONDS = 3.0


def cli_ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def wait_for_journal(journal_dir: Path, writes: int, seconds: float = 120) -> None:
    """Wait until the writers have journaled at least `writes` completed writes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if Journal.read(journal_dir).writes >= writes:
            return
        time.sleep(0.2)
    raise AssertionError(f"writers did not reach {writes} writes in {seconds}s")


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively, from /proc (no extra dependency)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def assert_sqlite_consistent(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@requires_okr_store
def test_writer_killed_mid_write(tmp_path):
    """A client-mode writer (okr+sqlite in the process itself) dies with SIGKILL while writing."""
    db = tmp_path / "mlflow.db"
    plain_uri = f"sqlite:///{db}"
    experiment_id = publish(plain_uri, tmp_path)
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    context = multiprocessing.get_context("fork")
    writer = context.Process(
        target=writer_process, args=("okr+" + plain_uri, experiment_id, 600.0, str(journal_dir), 0)
    )
    writer.start()
    wait_for_journal(journal_dir, 20)
    time.sleep(KILL_AFTER_SECONDS)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(timeout=30)
    assert writer.exitcode == -signal.SIGKILL

    assert_sqlite_consistent(db)
    journal = Journal.read(journal_dir)
    client = MlflowClient(plain_uri)
    assert missing_writes(client, journal) == []
    print(f"\nwriter killed after {journal.writes} completed writes; all stored")
    cli_ok("sync", "--tracking-uri", plain_uri)
    assert cli_ok("sync", "--check", "--tracking-uri", plain_uri).startswith("No drift")


@pytest.mark.server
@requires_okr_store
def test_server_worker_killed_mid_write(tmp_path):
    """One of two `mlflow server` workers dies with SIGKILL while 4 clients write through it."""
    servers = pytest.importorskip("tests.servers", reason="tests/servers.py (the server helper) is missing")
    db = tmp_path / "mlflow.db"
    plain_uri = f"sqlite:///{db}"
    experiment_id = publish(plain_uri, tmp_path)
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    with servers.mlflow_server("okr+" + plain_uri, tmp_path / "server", workers=2) as server:
        workers = [pid for pid in descendants(server.process.pid) if pid != server.process.pid]
        writer = multiprocessing.get_context("fork").Process(
            target=writer_process, args=(server.url, experiment_id, 8.0, str(journal_dir), 0)
        )
        writer.start()
        wait_for_journal(journal_dir, 10)
        victim = max(workers)  # a worker, not the supervisor (workers start last)
        os.kill(victim, signal.SIGKILL)
        writer.join(timeout=180)
        assert writer.exitcode == 0
    assert_sqlite_consistent(db)
    journal = Journal.read(journal_dir)
    assert missing_writes(MlflowClient(plain_uri), journal) == []
    print(f"\nserver worker {victim} killed; {journal.writes} completed writes stored, "
          f"{len(journal.errors)} client errors during the kill")
    cli_ok("sync", "--tracking-uri", plain_uri)
    assert cli_ok("sync", "--check", "--tracking-uri", plain_uri).startswith("No drift")


def failure_of(call) -> type[BaseException] | None:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return type(error)
    return None


@pytest.mark.postgres
@requires_okr_store
def test_database_unavailable_fails_as_plain_mlflow_and_recovers(postgres_server, postgres_uri, tmp_path):
    """PostgreSQL stops: writes fail with MLflow's own exception type through okr+ as without it."""
    experiment_id = publish(postgres_uri, tmp_path)
    plain = MlflowClient(postgres_uri)
    okr = MlflowClient("okr+" + postgres_uri)
    plain_run = plain.create_run(experiment_id, start_time=IN_CYCLE_MS).info.run_id
    okr_run = okr.create_run(experiment_id, start_time=IN_CYCLE_MS).info.run_id
    okr.log_metric(okr_run, "acc", 0.5, timestamp=IN_CYCLE_MS, step=0)

    postgres_server.stop("fast")
    try:
        writes = {
            "log_metric": lambda client, run: client.log_metric(run, "acc", 0.9, IN_CYCLE_MS, step=1),
            "set_tag": lambda client, run: client.set_tag(run, "stage", "prod"),
            "end run": lambda client, run: client.set_terminated(run, "FINISHED"),
        }
        for name, write in writes.items():
            expected = failure_of(lambda: write(plain, plain_run))  # noqa: B023 - called at once
            actual = failure_of(lambda: write(okr, okr_run))  # noqa: B023 - called at once
            assert expected is not None, f"plain {name} did not fail with the database down"
            assert actual is expected, f"{name}: okr+ raised {actual}, plain MLflow {expected}"
    finally:
        postgres_server.start()

    # The database is back: writes work again, the failed writes are absent, and sync repairs.
    okr.log_metric(okr_run, "acc", 0.8, timestamp=IN_CYCLE_MS, step=2)
    okr.log_metric(okr_run, "latency", 10.0, timestamp=IN_CYCLE_MS, step=2)
    okr.set_terminated(okr_run, "FINISHED")
    history = {(m.step, m.value) for m in plain.get_metric_history(okr_run, "acc")}
    assert history == {(0, 0.5), (2, 0.8)}
    # The live store recovered by itself: ending the run settled the KRs without a sync.
    assert cli_ok("sync", "--check", "--tracking-uri", postgres_uri).startswith("No drift")
    cli_ok("sync", "--tracking-uri", postgres_uri)
    status = CliRunner().invoke(cli, ["status", "--format", "json", "--tracking-uri", postgres_uri]).output
    assert '"current": 0.8' in status
