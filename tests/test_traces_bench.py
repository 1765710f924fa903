"""benchmarks/traces.py's bulk insert: MLflow aggregates the traces it inserts as logged ones."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path

import numpy
import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import traces
from mlflow_okr.spec import parse_spec

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "traces.py"
NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
NOV_1_MS = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: serve
    title: Serve fast
    category: product
    key_results:
      - {id: p99-latency, source: traces, trace_metric: latency, aggregation: p99, experiments: [svc],
         baseline: 1000, target: 100}
      - {id: avg-latency, source: traces, trace_metric: latency, aggregation: avg, experiments: [svc],
         baseline: 1000, target: 100}
      - {id: avg-score, source: traces, assessment: score, aggregation: avg, experiments: [svc],
         baseline: 0, target: 1}
"""


def load_benchmark():
    sys.path.insert(0, str(BENCHMARK.parent))  # its sibling scripts
    try:
        loaded = importlib.util.spec_from_file_location("traces_benchmark", BENCHMARK)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    return module


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_uri(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("tracking_uri" if request.param == "sqlite" else "postgres_uri")


def test_bulk_inserted_traces_aggregate_as_mlflow_aggregates_logged_ones(store_uri: str) -> None:
    benchmark = load_benchmark()
    experiment_id = MlflowClient(store_uri).create_experiment("svc")
    rng = numpy.random.default_rng(7)
    latencies = [int(value) for value in rng.integers(5, 5000, size=120)]
    timestamps = [NOV_1_MS + index * 60_000 for index in range(len(latencies))]
    scores = [int(value) / 8 for value in rng.integers(0, 9, size=len(latencies))]  # exact in binary

    benchmark.insert_traces(store_uri, experiment_id, latencies, timestamps, scores)

    spec = parse_spec(SPEC)
    client = MlflowClient(store_uri)
    measured = {
        kr_id: traces.measure(client, spec, spec.find_key_result(kr_id), NOW)
        for kr_id in ("p99-latency", "avg-latency", "avg-score")
    }
    assert [measure.count for measure in measured.values()] == [120, 120, 120]
    assert measured["p99-latency"].value == pytest.approx(numpy.percentile(latencies, 99), rel=1e-9)
    assert measured["avg-latency"].value == pytest.approx(numpy.mean(latencies), rel=1e-9)
    assert measured["avg-score"].value == pytest.approx(numpy.mean(scores), rel=1e-12)
    # MLflow reads them back as traces of the experiment, each with its own latency
    found = client.search_traces(locations=[experiment_id], max_results=200, include_spans=False)
    assert sorted(trace.info.execution_duration for trace in found) == sorted(latencies)
