"""Overhead of live KR updates: `log_metric` through okr+sqlite as a ratio to plain sqlite.

Both stores live in this process on their own SQLite files with the same published spec; calls
to the two are interleaved so machine noise hits both alike. Prints the median per-call time of
each and their ratio, for: (a) a key no KR uses, (b) a KR key improving on every call (the worst
case), (c) a KR key with noisy values, and (d) `log_batch` of 50 metrics (one of them a KR key).

    python benchmarks/overhead.py [--calls 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_okr.api import apply_spec
from mlflow_okr.spec import parse_spec
from mlflow_okr.store import flush

TARGETS = {"unused key": 1.02, "KR key, improving": 1.25, "KR key, noisy": 1.10, "log_batch of 50": 1.10}
SPEC = """
version: 1
cycle: {{name: bench, start: {start}, end: {end}}}
objectives:
  - id: quality
    title: Better models
    category: product
    key_results:
      - id: acc
        metric: val_acc
        baseline: 0.0
        target: 1000000.0
        guardrails:
          - {{metric: latency, max: 50}}
"""


def _stores(workdir: Path) -> tuple[MlflowClient, MlflowClient, str, str]:
    import datetime as dt

    today = dt.datetime.now(dt.timezone.utc).date()
    spec = parse_spec(SPEC.format(start=today - dt.timedelta(days=30), end=today + dt.timedelta(days=30)))
    runs = []
    clients = []
    for name, prefix in (("plain", ""), ("okr", "okr+")):
        uri = f"sqlite:///{workdir / name}.db"
        apply_spec(spec, tracking_uri=uri)
        client = MlflowClient(prefix + uri)
        experiment_id = client.create_experiment("bench")
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "latency", 10.0)
        clients.append(client)
        runs.append(run_id)
    return clients[0], clients[1], runs[0], runs[1]


def _timed(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(
    plain: MlflowClient, okr: MlflowClient, plain_run: str, okr_run: str, calls: int,
    write: Callable[[MlflowClient, str, int], None],
) -> tuple[list[float], list[float]]:
    """Seconds per call for plain and okr+, interleaved call by call."""
    plain_times, okr_times = [], []
    for index in range(calls):
        pairs = [(plain, plain_run, plain_times), (okr, okr_run, okr_times)]
        if index % 2:
            pairs.reverse()
        for client, run_id, times in pairs:
            times.append(_timed(lambda c=client, r=run_id, i=index: write(c, r, i)))
    return plain_times, okr_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlflow-okr-bench-"))
    plain, okr, plain_run, okr_run = _stores(workdir)
    noise = random.Random(7)

    def unused(client: MlflowClient, run_id: str, i: int) -> None:
        client.log_metric(run_id, "throughput", float(i), step=i)

    def improving(client: MlflowClient, run_id: str, i: int) -> None:
        client.log_metric(run_id, "val_acc", float(i), step=i)

    def noisy(client: MlflowClient, run_id: str, i: int) -> None:
        client.log_metric(run_id, "val_acc", 0.5 + noise.random() / 10, step=i)

    def batch(client: MlflowClient, run_id: str, i: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(f"m{k}", float(i + k), now, i) for k in range(49)]
        metrics.append(Metric("val_acc", 0.5 + noise.random() / 10, now, i))
        client.log_batch(run_id, metrics=metrics)

    # The median is the per-call cost the targets are about; the mean also carries the background
    # writer's share (it runs at most once a second, in this process, on the same cores).
    print(f"{'case':<20} {'plain ms':>9} {'okr+ ms':>9} {'ratio':>7} {'target':>7}      {'mean ratio':>10}")
    for case, write in (
        ("unused key", unused), ("KR key, improving", improving),
        ("KR key, noisy", noisy), ("log_batch of 50", batch),
    ):
        plain_times, okr_times = measure(plain, okr, plain_run, okr_run, args.calls, write)
        plain_s, okr_s = statistics.median(plain_times), statistics.median(okr_times)
        ratio = okr_s / plain_s
        mean_ratio = statistics.fmean(okr_times) / statistics.fmean(plain_times)
        verdict = "ok" if ratio <= TARGETS[case] else "over"
        print(
            f"{case:<20} {plain_s * 1000:9.2f} {okr_s * 1000:9.2f} {ratio:6.3f}x "
            f"{TARGETS[case]:6.2f}x {verdict:<4} {mean_ratio:9.3f}x"
        )
    flush_time = _timed(lambda: okr.set_terminated(okr_run))
    print(f"run end through okr+ (synchronous post-run flush): {flush_time * 1000:.1f} ms")
    flush()


if __name__ == "__main__":
    main()
