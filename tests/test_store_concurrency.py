"""Concurrency: threads and processes write to the same KRs at once through okr+sqlite;
afterwards `sync --check` finds no drift."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlflow_okr import vocabulary
from mlflow_okr.store import flush
from tests.live_fixtures import EXPERIMENT, assert_no_drift, kr_run, publish

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
