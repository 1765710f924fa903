"""Trace and alias KRs, live: the cost of a trace write through okr+, and how soon KRs move.

Prints (a) the median `start_trace` time through okr+ as a ratio to the plain store, calls
interleaved (target <= 1.02x); (b) seconds until a new trace shows in a p99 latency KR (target
<= 5 s; the writer measures a trace KR once trace writes pause for 1 s, at most every 3 s while
they stream in); (c) one trace KR measurement (`sync --check`'s two SQL aggregates), `sync` and
`status` over --traces traces (target: status <= 1 s); (d) seconds until an alias move shows in a
`model:` KR (target <= 1 s).

The --traces traces of (c) are inserted in bulk into MLflow's own trace tables (`insert_traces`:
rows copied from one trace logged through the API), which is far faster than one `start_trace`
per trace; MLflow's `query_trace_metrics` counts them as it counts logged ones. Every store is a
SQLite file, or with --postgres a database on a temporary PostgreSQL server (`freshness.databases`).

    python benchmarks/traces.py [--calls 300] [--traces 20000] [--postgres] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import TraceInfo, TraceLocation, TraceState
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts: overhead, freshness
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.postgres

import freshness  # noqa: E402
from overhead import _timed  # noqa: E402

from mlflow_okr import api, compat, traces, vocabulary  # noqa: E402
from mlflow_okr.spec import parse_spec  # noqa: E402
from mlflow_okr.store import flush  # noqa: E402

INSERT_CHUNK = 5000  # traces per transaction of the bulk insert
SPREAD_MS = 20 * 86_400_000  # the bulk-inserted traces' request times: over the last 20 days
TARGETS = {
    "trace write": 1.02, "new trace visible (s)": 5.0, "status (s)": 1.0, "alias move visible (s)": 1.0,
}
SPEC = """
version: 1
cycle: {{name: bench, start: {start}, end: {end}}}
objectives:
  - id: serve
    title: Serve fast
    category: product
    key_results:
      - id: p99-latency
        source: traces
        trace_metric: latency
        aggregation: p99
        experiments: [svc]
        baseline: 1000
        target: 100
      - id: champion-auc
        metric: auc
        model: {{name: screener, alias: champion}}
        baseline: 0.5
        target: 1.0
"""


def trace_info(experiment_id: str, latency_ms: int) -> TraceInfo:
    return TraceInfo(
        trace_id=f"tr-{uuid.uuid4().hex}",
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=int(time.time() * 1000) - latency_ms,
        execution_duration=latency_ms,
        state=TraceState.OK,
    )


def insert_traces(
    tracking_uri: str,
    experiment_id: str,
    latencies_ms: Sequence[int],
    timestamps_ms: Sequence[int],
    scores: Sequence[float] | None = None,
) -> None:
    """Create one trace per latency, in bulk into MLflow's own trace tables.

    The first trace goes through the API (`start_trace`, with a `score` feedback when `scores` is
    given); the others copy its rows in MLflow's schema (trace_info, its tags and metadata, its
    assessment) with their own ids, times, latencies and scores, in chunks of SQLAlchemy Core
    inserts: what MLflow's `query_trace_metrics` reads of them is what it reads of a logged trace.
    """
    import sqlalchemy
    from mlflow.entities import AssessmentSource, Feedback
    from mlflow.store.tracking.dbmodels.models import (
        SqlAssessments,
        SqlTraceInfo,
        SqlTraceMetadata,
        SqlTraceTag,
    )
    from mlflow.store.tracking.utils.trace_analytics import assessment_aggregate

    template = trace_info(experiment_id, latencies_ms[0])
    template.request_time = timestamps_ms[0]
    if scores is not None:
        source = AssessmentSource(source_type="CODE", source_id="bench")
        template.assessments = [Feedback(name="score", value=scores[0], source=source)]
    compat.store_of(MlflowClient(tracking_uri)).start_trace(template)
    template_id = template.trace_id
    info, tags, metadata, assessments = (
        SqlTraceInfo.__table__, SqlTraceTag.__table__, SqlTraceMetadata.__table__, SqlAssessments.__table__,
    )
    engine = sqlalchemy.create_engine(tracking_uri)
    with engine.connect() as connection:
        def rows_of(table: Any, column: Any) -> list[dict[str, Any]]:
            found = connection.execute(table.select().where(column == template_id))
            return [dict(row._mapping) for row in found]

        info_row, = rows_of(info, info.c.request_id)
        tag_rows = rows_of(tags, tags.c.request_id)
        metadata_rows = rows_of(metadata, metadata.c.request_id)
        assessment_rows = rows_of(assessments, assessments.c.trace_id)
    pending: dict[Any, list[dict[str, Any]]] = {info: [], tags: [], metadata: [], assessments: []}

    def flush() -> None:
        with engine.begin() as connection:
            for table, rows in pending.items():
                if rows:
                    connection.execute(table.insert(), rows)
                    rows.clear()

    for index in range(1, len(latencies_ms)):
        trace_id, timestamp = f"tr-{uuid.uuid4().hex}", timestamps_ms[index]
        pending[info].append(
            {**info_row, "request_id": trace_id, "timestamp_ms": timestamp,
             "execution_time_ms": latencies_ms[index]}
        )
        for table, template_rows in ((tags, tag_rows), (metadata, metadata_rows)):
            pending[table].extend(
                {**row, "request_id": trace_id, "value": row["value"].replace(template_id, trace_id)}
                for row in template_rows
            )
        for row in assessment_rows:
            assert scores is not None
            aggregate_value, is_numeric = assessment_aggregate(scores[index])
            pending[assessments].append(
                {**row, "assessment_id": f"a-{uuid.uuid4().hex}", "trace_id": trace_id,
                 "trace_timestamp_ms": timestamp, "value": json.dumps(scores[index]),
                 "aggregate_value": aggregate_value, "is_numeric_value": is_numeric}
            )
        if len(pending[info]) >= INSERT_CHUNK:
            flush()
    flush()
    engine.dispose()


def wait_until(condition, seconds: float = 60.0) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > seconds:
            return float("inf")
        time.sleep(0.01)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the SQLite stores go.")
    args = parser.parse_args()
    if args.calls < 1 or args.traces < 1:
        parser.error("--calls and --traces must be at least 1")
    # A plain `kill` must still stop the PostgreSQL server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with freshness.databases(args.postgres) as database:
        if args.postgres:
            uris = {name: database() for name in ("plain", "okr")}
        else:
            workdir = args.workdir or Path(tempfile.mkdtemp(prefix="okr-traces-"))
            uris = {name: f"sqlite:///{workdir / name}.db" for name in ("plain", "okr")}
        run(args, uris)


def run(args: argparse.Namespace, uris: dict[str, str]) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    spec = parse_spec(SPEC.format(start=today - dt.timedelta(days=30), end=today + dt.timedelta(days=30)))
    backend = "PostgreSQL" if uris["plain"].startswith("postgresql") else "SQLite"
    print(f"{backend}, --calls {args.calls}, --traces {args.traces:,}")

    clients, experiments = {}, {}
    for name, prefix in (("plain", ""), ("okr", "okr+")):
        uri = uris[name]
        MlflowClient(uri).create_experiment("svc")
        api.apply_spec(spec, tracking_uri=uri)
        clients[name] = MlflowClient(tracking_uri=prefix + uri, registry_uri=prefix + uri)
        experiments[name] = clients[name].get_experiment_by_name("svc").experiment_id
    stores = {name: compat.store_of(client) for name, client in clients.items()}
    figures: dict[str, float] = {}

    # (a) the write itself, interleaved so machine noise hits both alike
    times: dict[str, list[float]] = {"plain": [], "okr": []}
    for index in range(args.calls):
        order = ["plain", "okr"] if index % 2 else ["okr", "plain"]
        for name in order:
            info = trace_info(experiments[name], 10 + index % 50)
            times[name].append(_timed(lambda s=stores[name], i=info: s.start_trace(i)))
    plain, okr = statistics.median(times["plain"]), statistics.median(times["okr"])
    figures["trace write"] = okr / plain
    print(f"(a) start_trace median: plain {plain * 1e3:.2f} ms, okr+ {okr * 1e3:.2f} ms, {okr / plain:.3f}x")

    # (b) a new, slow trace moves the p99 KR
    client = clients["okr"]
    status = api.status(tracking_uri=uris["okr"])
    kr_run = status.find("p99-latency").run_id
    def counted() -> str | None:  # how many traces the KR counts: every new trace moves it
        return client.get_run(kr_run).data.tags.get(vocabulary.TAG_COUNTED)

    wait_until(lambda: counted() == str(args.calls))  # the writes of (a) settled
    stores["okr"].start_trace(trace_info(experiments["okr"], 60_000))
    seconds = wait_until(lambda: counted() == str(args.calls + 1))
    figures["new trace visible (s)"] = seconds
    print(f"(b) a new trace shows in the p99 KR after {seconds:.2f} s")

    # (c) many traces, inserted in bulk over the last 20 days: the KR's measurement (MLflow's SQL
    # aggregation), sync and status
    plain_uri = uris["plain"]
    now_ms = int(time.time() * 1000)
    latencies = [5 + index % 200 for index in range(args.traces)]
    timestamps = [
        now_ms - latency - index * SPREAD_MS // args.traces for index, latency in enumerate(latencies)
    ]
    started = time.perf_counter()
    insert_traces(plain_uri, experiments["plain"], latencies, timestamps)
    print(f"    {args.traces:,} traces inserted in bulk in {time.perf_counter() - started:.1f} s")
    plain_client = MlflowClient(plain_uri)
    kr = spec.find_key_result("p99-latency")
    started = time.perf_counter()
    measured = traces.measure(plain_client, spec, kr, dt.datetime.now(dt.timezone.utc))
    measure_seconds = time.perf_counter() - started
    # Every trace counts: those of (a) and the bulk-inserted ones
    assert measured.count == args.calls + args.traces, (measured.count, args.calls + args.traces)
    started = time.perf_counter()
    api.sync(tracking_uri=plain_uri)
    sync_seconds = time.perf_counter() - started
    started = time.perf_counter()
    api.status(tracking_uri=plain_uri)
    figures["status (s)"] = status_seconds = time.perf_counter() - started
    print(
        f"(c) {measured.count:,} traces: one trace KR measurement {measure_seconds:.3f} s, "
        f"sync {sync_seconds:.2f} s, status {status_seconds:.3f} s"
    )

    # (d) an alias move through the okr+ registry
    experiment_id = client.create_experiment("train")
    runs = []
    for auc in (0.6, 0.9):
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "auc", auc)
        client.set_terminated(run_id)
        runs.append(run_id)
    client.create_registered_model("screener")
    for run_id in runs:
        client.create_model_version("screener", f"runs:/{run_id}/model", run_id=run_id)
    champion_run = status.find("champion-auc").run_id
    moves = []
    def best_run() -> str | None:
        return client.get_run(champion_run).data.tags.get(vocabulary.TAG_BEST_RUN)

    for version, run_id in (("1", runs[0]), ("2", runs[1]), ("1", runs[0]), ("2", runs[1])):
        started = time.perf_counter()
        client.set_registered_model_alias("screener", "champion", version)
        moves.append(time.perf_counter() - started + wait_until(lambda r=run_id: best_run() == r))
    figures["alias move visible (s)"] = statistics.median(moves)
    print(f"(d) an alias move shows in the model KR after {statistics.median(moves):.2f} s (median of 4)")

    # Settle what the okr+ store has pending while the database is still up (a PostgreSQL server
    # stops when the benchmark leaves it; the exit hook would then meet a closed port)
    flush(stores["okr"])
    for name, target in TARGETS.items():
        verdict = "met" if figures[name] <= target else "NOT met"
        print(f"  {name}: {figures[name]:.3f} (target <= {target}) {verdict}")


if __name__ == "__main__":
    main()
