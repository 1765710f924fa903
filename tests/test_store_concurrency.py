"""Concurrency: threads and processes write to the same KRs at once through okr+sqlite;
afterwards `sync --check` finds no drift."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.store import flush, settling_lock
from mlflow_okr.store.live import LiveKrs
from mlflow_okr.store.schedule import ALL_KRS
from tests.live_fixtures import CYCLE, EXPERIMENT, assert_no_drift, counting_recounts, kr_run, publish

THREADS = 4
PROCESSES = 2
RUNS_PER_WRITER = 2
WRITES_PER_RUN = 5

WRITER = r'''
import random, sys
from mlflow.tracking import MlflowClient

def write(client, experiment_id, seed):
    rng = random.Random(seed)
    for _ in range(RUNS):
        run_id = client.create_run(experiment_id).info.run_id
        for step in range(WRITES):
            client.log_metric(run_id, rng.choice(["val_acc", "val_acc", "val_loss"]), rng.random(), step=step)
            if rng.random() < 0.3:
                client.set_tag(run_id, "stage", rng.choice(["prod", "dev"]))
        if rng.random() < 0.7:
            client.log_metric(run_id, "latency", rng.choice([10.0, 90.0]))
        if rng.random() < 0.15:
            client.delete_run(run_id)
        else:
            client.set_terminated(run_id, rng.choice(["FINISHED", "FINISHED", "FAILED", "KILLED"]))

if __name__ == "__main__":
    uri, experiment_id, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    write(MlflowClient(uri), experiment_id, seed)
'''


def test_threads_and_processes_leave_no_drift(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    publish(tracking_uri)
    okr_uri = vocabulary.OKR_SCHEME_PREFIX + tracking_uri
    experiment_id = client.create_experiment(EXPERIMENT)
    source = WRITER.replace("RUNS", str(RUNS_PER_WRITER)).replace("WRITES", str(WRITES_PER_RUN))
    script = tmp_path / "writer.py"
    script.write_text(source)
    namespace: dict = {}
    exec(compile(source, str(script), "exec"), namespace)  # the same writer, in threads here

    processes = [
        subprocess.Popen(
            [sys.executable, str(script), okr_uri, experiment_id, str(seed)], stderr=subprocess.PIPE
        )
        for seed in range(PROCESSES)
    ]
    okr_client = MlflowClient(okr_uri)
    errors: list[BaseException] = []

    def thread_body(seed: int) -> None:
        try:
            namespace["write"](okr_client, experiment_id, seed)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=thread_body, args=(100 + i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    outputs = [process.communicate(timeout=240)[1].decode() for process in processes]
    assert not errors, errors
    assert [process.returncode for process in processes] == [0] * PROCESSES, outputs
    assert not any("mlflow-okr could not update" in output for output in outputs), outputs
    flush()
    flush()

    writers = THREADS + PROCESSES
    runs = client.search_runs([experiment_id], run_view_type=3, max_results=1000)
    assert len(runs) == writers * RUNS_PER_WRITER
    assert_no_drift(client)
    counted = [
        run for run in runs
        if run.data.tags.get("okr.kr.acc") == "counted" and run.info.lifecycle_stage == "active"
    ]
    assert counted, "the seeds should produce at least one counted run"
    assert kr_run(client, "acc").data.tags[vocabulary.TAG_COUNTED] == str(len(counted))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def store_uri(request: pytest.FixtureRequest) -> str:
    """A fresh store with MLflow's schema: SQLite (where flock exists), PostgreSQL and MariaDB."""
    if request.param == "sqlite" and settling_lock.fcntl is None:
        pytest.skip("no flock on this platform: SQLite stores keep the check alone")
    return request.getfixturevalue("tracking_uri" if request.param == "sqlite" else f"{request.param}_uri")


def test_two_keepers_settling_at_once_take_turns(store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes keeping one store settle one at a time. Without that, a keeper that read a
    KR's saved tally before the other wrote its own would write its revision over it, and each
    keeper, checking at once (as at a process's exit), would find the tally it wrote: the other's
    run lost for good."""
    publish(store_uri)
    client = MlflowClient(store_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    first, second = LiveKrs(store_uri), LiveKrs(store_uri)
    for keeper, value in ((first, 0.8), (second, 0.6)):
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "val_loss", value)
        keeper._marks.add(run_id, ALL_KRS)  # no writer thread: the test drives both settlings
    # Both revise the tally `apply` saved, run by run; a count from all the runs would hide the race.
    recounts = counting_recounts(first, monkeypatch) + counting_recounts(second, monkeypatch)

    first_revised, go_on, second_waits_or_ends = threading.Event(), threading.Event(), threading.Event()
    write = first._write

    def write_when_told(*args, **options):
        first_revised.set()  # the first keeper holds its revision of the saved tally
        assert go_on.wait(120)
        return write(*args, **options)

    monkeypatch.setattr(first, "_write", write_when_told)
    try_acquire = second._store_lock.try_acquire

    def try_and_tell() -> bool:
        got = try_acquire()
        if not got:
            second_waits_or_ends.set()
        return got

    monkeypatch.setattr(second._store_lock, "try_acquire", try_and_tell)

    def second_flush() -> None:
        try:
            second.flush()
        finally:
            second_waits_or_ends.set()

    first_thread = threading.Thread(target=first.flush, daemon=True)
    first_thread.start()
    assert first_revised.wait(120)
    second_thread = threading.Thread(target=second_flush, daemon=True)
    second_thread.start()
    assert second_waits_or_ends.wait(120)
    go_on.set()
    first_thread.join(120)
    second_thread.join(120)

    assert kr_run(client, "loss").data.tags[vocabulary.TAG_COUNTED] == "2"
    assert recounts == []
    assert_no_drift(client)


def test_a_settling_that_stops_waiting_for_the_lock_has_its_krs_counted_afresh(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process held the store's lock past the wait limit: the keeper settles without it,
    and its check cannot tell whether it wrote over that process's revision, so it counts the
    cycle from all its runs instead."""
    if settling_lock.fcntl is None:
        pytest.skip("no flock on this platform")
    publish(tracking_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    holder, keeper = LiveKrs(tracking_uri), LiveKrs(tracking_uri)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "val_loss", 0.8)
    keeper._marks.add(run_id, ALL_KRS)
    recounts = counting_recounts(keeper, monkeypatch)
    keeper._store_lock.wait_limit = 0.0
    with holder._store_lock:  # another process's long settling
        assert not holder._store_lock.bypassed
        keeper._settle_marks()
        assert keeper._store_lock.bypassed
    assert kr_run(client, "loss").data.tags[vocabulary.TAG_COUNTED] == "1"
    assert recounts == []
    keeper._store_lock.wait_limit = settling_lock.WAIT_LIMIT
    keeper._recount(None)
    assert recounts == [state.load_published(client, CYCLE).experiment_id]
    assert not keeper._store_lock.bypassed
    assert_no_drift(client)
