"""Concurrency: 8 processes x 4 threads write mixed metrics, tags and batches to shared KRs through
a 2-worker `mlflow server` in each deployment (`--app-name okr` over a plain URI, and an okr+
backend URI); afterwards every write that returned is stored
and `sync --check` finds no drift. The default run lasts a few seconds; `-m slow` runs a minute.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from mlflow_okr.cli import cli
from tests import servers
from tests.conftest import IN_CYCLE_MS, requires_okr_store

PROCESSES = 8
THREADS = 4
SHORT_SECONDS = 4.0
START_TIMEOUT = 120.0  # seconds the clients wait for each other to have created their runs
SETTLE_DEADLINE = 120.0  # seconds the workers have to converge once the writes stop
LONG_SECONDS = 60.0
SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: quality
    title: Better model
    category: product
    key_results:
      - id: acc
        metric: acc
        experiments: ["stress-*"]
        baseline: 0.0
        target: 1.0
        guardrails:
          - {metric: latency, max: 80}
      - id: prod-acc
        metric: acc
        experiments: ["stress-*"]
        filter: "tags.stage = 'prod'"
        baseline: 0.0
        target: 1.0
      - id: loss
        metric: loss
        experiments: ["stress-*"]
        baseline: 1.0
        target: 0.0
        aggregate: mean
"""


def server_env() -> dict[str, str]:
    """The servers' environment: a connection pool with room for every client's `log_batch` at once.

    MLflow's SQL store holds one pooled connection inside `log_batch` while it takes another for
    each part of the batch, so a worker serving more concurrent batches than its pool holds (5 + 10
    overflow by default) deadlocks the pool until SQLAlchemy's 30 s timeout: plain MLflow as much
    as okr+ (32 batch-only clients on one plain worker: 41 batches, 32 errors). Both servers get
    the pool an operator would size for this many clients.
    """
    return {
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(2 * PROCESSES * THREADS),
        # A server settles run ends in its writer, as deployed (the suite's default settles them
        # in the caller; the checks here run after the server has stopped and settled).
        "MLFLOW_OKR_RUN_END_BUDGET": "0",
        # MLflow's job runner (GenAI scorer jobs) starts beside a plain database URI only, and its
        # start-up takes the CPU the first clients need: off for both servers, as the load compared
        # is tracking writes.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


# ---------------------------------------------------------------------------------------------
# The writers: each thread owns one run; every write that returned is appended to a journal.


def write_for(
    url: str, experiment_id: str, seconds: float, journal: Path, seed: int, start: Any = None
) -> None:
    """One thread's work: a run of mixed writes until time is up, journaled once each returns.

    With a `start` barrier, writing begins once every client has created its run, so all of them
    write at once for the whole window.
    """
    rng = random.Random(seed)
    client = MlflowClient(url)
    with open(journal, "a", encoding="utf-8") as out:

        def done(kind: str, run_id: str, key: str, value, step: int = 0) -> None:
            out.write(json.dumps([kind, run_id, key, value, step, time.time()]) + "\n")
            out.flush()

        def attempt(call, *entry) -> None:
            for item in entry:
                if item[0] == "tag":  # a write in flight when a writer is killed may still land
                    done("try", *item[1:])
            try:
                call()
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                out.write(json.dumps(["error", type(error).__name__, str(error)[:200]]) + "\n")
                out.flush()
                return
            for item in entry:
                done(*item)

        run = client.create_run(experiment_id, start_time=IN_CYCLE_MS + rng.randrange(10**6))
        run_id = run.info.run_id
        done("run", run_id, "", "")
        if start is not None:
            try:
                start.wait(START_TIMEOUT)
            except threading.BrokenBarrierError:
                pass  # a client failed to start: the others write anyway
        deadline = time.monotonic() + seconds  # the window starts once the run exists
        step = 0
        while time.monotonic() < deadline:
            step += 1
            timestamp = IN_CYCLE_MS + step
            choice = rng.random()
            if choice < 0.4:
                key = rng.choice(["acc", "loss", "latency", "other"])
                value = round(rng.random() * (100 if key == "latency" else 1), 6)
                call = partial(client.log_metric, run_id, key, value, timestamp=timestamp, step=step)
                attempt(call, ("metric", run_id, key, value, step))
            elif choice < 0.7:
                metrics = [Metric("acc", round(rng.random(), 6), timestamp, step),
                           Metric("latency", round(rng.random() * 100, 6), timestamp, step)]
                attempt(
                    partial(client.log_batch, run_id, metrics=metrics, tags=[RunTag("batch", str(step))]),
                    *[("metric", run_id, m.key, m.value, step) for m in metrics],
                    ("tag", run_id, "batch", str(step)),
                )
            else:
                stage = rng.choice(["prod", "dev"])
                attempt(partial(client.set_tag, run_id, "stage", stage), ("tag", run_id, "stage", stage))
        status = rng.choice(["FINISHED", "FINISHED", "FAILED", None])
        if status:
            attempt(partial(client.set_terminated, run_id, status, end_time=IN_CYCLE_MS + 10**7),
                    ("status", run_id, "", status))


def writer_process(
    url: str, experiment_id: str, seconds: float, journal_dir: str, index: int, start: Any = None
) -> None:
    """One process: THREADS threads writing at once, each to its own journal file."""
    threads = [
        threading.Thread(
            target=write_for,
            args=(url, experiment_id, seconds, Path(journal_dir) / f"p{index}-t{t}.jsonl", index * 100 + t,
                  start),
        )
        for t in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class Journal:
    """What the writers say they stored: values per (run, key), final tags, statuses, errors."""

    metrics: dict[tuple[str, str], set[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    runs: set[str] = field(default_factory=set)
    attempted: dict[tuple[str, str], str] = field(default_factory=dict)  # last tag value tried
    errors: list[list[str]] = field(default_factory=list)
    writes: int = 0

    @classmethod
    def read(cls, journal_dir: Path) -> Journal:
        journal = cls()
        for path in sorted(journal_dir.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed writer may be cut short
                journal.add(entry)
        return journal

    def add(self, entry: list) -> None:
        kind = entry[0]
        if kind == "error":
            self.errors.append(entry)
            return
        _, run_id, key, value, step, _moment = entry
        self.runs.add(run_id)
        if kind == "try":
            self.attempted[(run_id, key)] = value
            return
        if kind == "metric":
            self.metrics.setdefault((run_id, key), set()).add((step, value))
        elif kind == "tag":
            self.tags[(run_id, key)] = value  # one thread per run, so the last write wins
        if kind in ("metric", "tag"):
            self.writes += 1
        elif kind == "status":
            self.statuses[run_id] = value


def missing_writes(client: MlflowClient, journal: Journal) -> list[str]:
    """Every journaled write that the backend does not hold."""
    missing = []
    for (run_id, key), values in journal.metrics.items():
        stored = {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
        missing += [f"{run_id} {key} step {step} = {value}" for step, value in values - stored]
    for (run_id, key), value in journal.tags.items():
        stored = client.get_run(run_id).data.tags.get(key)
        # The last write that returned, or one tried after it that was cut off but landed.
        if stored not in (value, journal.attempted.get((run_id, key), value)):
            missing.append(f"{run_id} tag {key}: journal {value!r}, stored {stored!r}")
    for run_id, status in journal.statuses.items():
        stored = client.get_run(run_id).info.status
        if stored != status:
            missing.append(f"{run_id} status: journal {status}, stored {stored}")
    return missing


def run_writers(url: str, experiment_id: str, seconds: float, journal_dir: Path) -> list:
    """Start PROCESSES writer processes (forked: start-up is instant; each makes its own client).

    They start writing together, once every client has its run: a server busy with the first
    clients' writes would otherwise hold back the others' `create_run`.
    """
    context = multiprocessing.get_context("fork")
    start = context.Barrier(PROCESSES * THREADS)
    processes = [
        context.Process(
            target=writer_process, args=(url, experiment_id, seconds, str(journal_dir), index, start)
        )
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    return processes


def cli_check(uri: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["sync", "--check", "--tracking-uri", uri], catch_exceptions=False)
    return result.exit_code, result.output


def publish(uri: str, tmp_path: Path) -> str:
    spec_path = tmp_path / "okrs.yaml"
    spec_path.write_text(SPEC.lstrip(), encoding="utf-8")
    result = CliRunner().invoke(cli, ["apply", str(spec_path), "--tracking-uri", uri], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return MlflowClient(uri).create_experiment("stress-shared")


@pytest.fixture(params=servers.DEPLOYMENTS)
def server_factory(tmp_path, request) -> Iterator:
    """A 2-worker server over a plain backend URI, in one deployment of mlflow-okr each time."""

    def start(plain_uri: str):
        backend, app_name = servers.deployment_args(request.param, plain_uri)
        return servers.mlflow_server(
            backend, tmp_path / "server", workers=2, app_name=app_name, extra_env=server_env()
        )

    return start


def stress(plain_uri: str, tmp_path: Path, server_factory, seconds: float) -> Journal:
    experiment_id = publish(plain_uri, tmp_path)
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    with server_factory(plain_uri) as server:
        processes = run_writers(server.url, experiment_id, seconds, journal_dir)
        for process in processes:
            process.join(timeout=seconds + 120)
            assert process.exitcode == 0, f"writer process exited with {process.exitcode}"
        journal = Journal.read(journal_dir)
        # The writes have stopped: each worker's writer settles its last marks and, once its KRs
        # have had no write for RECOUNT_PAUSE, recounts them. The condition is the invariant itself
        # (uvicorn ends a worker on SIGTERM without Python's exit hooks, so the check runs while
        # the server is up); a lost mark would never converge and the deadline reports it.
        deadline = time.monotonic() + SETTLE_DEADLINE
        code, output = cli_check(plain_uri)
        while code != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            code, output = cli_check(plain_uri)
    if code != 0:  # what the workers said about KR settling, for the failure message
        said = [line for line in server.log().splitlines() if "okr" in line.lower() or "Error" in line]
        output += "\nserver log, lines about mlflow-okr and errors:\n" + "\n".join(said[-40:])
    print(
        f"\nstress {plain_uri.split(':')[0]}: {journal.writes} writes "
        f"in {seconds:g}s per client "
        f"({journal.writes / seconds:.0f} writes/s held by {PROCESSES}x{THREADS} clients), "
        f"{len(journal.runs)} runs, {len(journal.errors)} errors"
    )
    for error in journal.errors[:5]:
        print("  error:", error[1], error[2])
    assert len(journal.runs) == PROCESSES * THREADS
    assert journal.writes > 0
    assert missing_writes(MlflowClient(plain_uri), journal) == []
    assert code == 0, output
    return journal


@pytest.mark.server
@pytest.mark.postgres
@requires_okr_store
def test_stress_okr_postgresql(postgres_uri, tmp_path, server_factory):
    journal = stress(postgres_uri, tmp_path, server_factory, SHORT_SECONDS)
    assert journal.errors == []


@pytest.mark.server
@requires_okr_store
def test_stress_okr_sqlite(tmp_path, server_factory):
    """SQLite serializes writers; MLflow retries locked writes, so none may fail here either."""
    uri = f"sqlite:///{tmp_path / 'stress.db'}"
    journal = stress(uri, tmp_path, server_factory, SHORT_SECONDS)
    assert journal.errors == []


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.postgres
@requires_okr_store
def test_stress_okr_postgresql_long(postgres_uri, tmp_path, server_factory):
    journal = stress(postgres_uri, tmp_path, server_factory, LONG_SECONDS)
    assert journal.errors == []
