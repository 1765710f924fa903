"""Trace KRs kept live by the okr+ store: windowed KRs move with time, measurements coalesce."""

from __future__ import annotations

import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import mlflow_okr.store.live as live
import mlflow_okr.store.schedule as schedule
from mlflow_okr import vocabulary
from mlflow_okr.store import flush
from mlflow_okr.store.hooks import build_tracking_store
from tests.conftest import requires_okr_store
from tests.live_fixtures import assert_no_drift, kr_run, publish, spec_around_today, wait_for

HOUR_MS = 3_600_000


def windowed_spec_text() -> str:
    """A cycle around today with a max-latency trace KR over the last hour of experiment `svc`."""
    return spec_around_today(
        """
        - id: serve
          title: Serve fast
          category: product
          key_results:
            - id: slowest
              source: traces
              trace_metric: latency
              aggregation: max
              experiments: [svc]
              window: 1h
              baseline: 1000
              target: 100
        """
    )


def log_trace(client: MlflowClient, experiment_id: str, start_ms: int, latency_ms: int) -> None:
    """One trace that started at `start_ms` and took exactly `latency_ms`."""
    root = client.start_trace("predict", experiment_id=experiment_id, start_time_ns=start_ms * 1_000_000)
    client.end_trace(root.trace_id, end_time_ns=(start_ms + latency_ms) * 1_000_000)


def kr_value(client: MlflowClient) -> tuple[float | None, str | None]:
    run = kr_run(client, "slowest")
    return run.data.metrics.get(vocabulary.METRIC_VALUE), run.data.tags.get(vocabulary.TAG_COUNTED)


@requires_okr_store
def test_a_windowed_trace_kr_moves_when_its_trace_leaves_the_window(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "WINDOW_REFRESH", 1.0)
    experiment_id = client.create_experiment("svc")
    publish(tracking_uri, windowed_spec_text())
    okr_uri = vocabulary.OKR_SCHEME_PREFIX + tracking_uri
    mlflow.set_tracking_uri(okr_uri)  # the tracing exporter writes where this points
    okr_client = MlflowClient(okr_uri)
    now_ms = int(time.time() * 1000)
    leaves_at = now_ms + 8_000  # the slow trace falls out of the last hour 8 s from now
    log_trace(okr_client, experiment_id, leaves_at - HOUR_MS, 900)
    log_trace(okr_client, experiment_id, now_ms - 2_000, 100)
    mlflow.flush_trace_async_logging()
    assert wait_for(lambda: kr_value(client) == (900.0, "2"))
    assert time.time() * 1000 < leaves_at, "the machine was too slow to see the trace in the window"
    # No write from here on: the keeper's schedule re-measures the window.
    assert wait_for(lambda: kr_value(client) == (100.0, "1"))
    mlflow.set_tracking_uri(tracking_uri)
    assert_no_drift(client)


def test_an_idle_server_worker_moves_a_windowed_trace_kr_with_time(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server worker's keeper (durable) that gets no write at all still re-measures the window."""
    monkeypatch.setattr(live, "WINDOW_REFRESH", 1.0)
    experiment_id = client.create_experiment("svc")
    now_ms = int(time.time() * 1000)
    leaves_at = now_ms + 8_000
    log_trace(client, experiment_id, leaves_at - HOUR_MS, 900)  # written before the server started
    log_trace(client, experiment_id, now_ms - 2_000, 100)
    mlflow.flush_trace_async_logging()
    publish(tracking_uri, windowed_spec_text())  # measures the KR: both traces in the window
    assert kr_value(client) == (900.0, "2")
    keeper = live.LiveKrs(tracking_uri, durable=True)
    keeper.start_catch_up()  # what a starting worker does; then no write reaches it
    try:
        assert time.time() * 1000 < leaves_at, "the machine was too slow to see the trace in the window"
        assert wait_for(lambda: kr_value(client) == (100.0, "1"))
    finally:
        keeper.close()
    assert_no_drift(client)


def test_trace_writes_streaming_in_are_measured_once_per_interval_and_once_they_pause(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trace write marks the KR; the writer measures while they stream only every
    MEASURE_INTERVAL, and once more when they pause, so the last trace always counts."""
    from mlflow.entities import TraceInfo, TraceLocation, TraceState

    monkeypatch.setattr(schedule, "MEASURE_PAUSE", 0.5)
    monkeypatch.setattr(schedule, "MEASURE_INTERVAL", 2.0)
    experiment_id = client.create_experiment("svc")
    publish(tracking_uri, windowed_spec_text())
    store = build_tracking_store(vocabulary.OKR_SCHEME_PREFIX + tracking_uri)
    keeper = store._okr_live
    measured = []
    settle_measured = keeper._settle_measured

    def counting(now: float | None) -> None:
        with keeper._lock:
            due = keeper._measured_marks.due()
        if due is not None and (now is None or now >= due):
            measured.append(time.monotonic())
        settle_measured(now)

    monkeypatch.setattr(keeper, "_settle_measured", counting)
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < 5.0:  # a trace every 50 ms, never a 0.5 s pause
        now_ms = int(time.time() * 1000)
        store.start_trace(
            TraceInfo(
                trace_id=f"tr-{count}", trace_location=TraceLocation.from_experiment_id(experiment_id),
                request_time=now_ms - 10 - count, execution_duration=10 + count, state=TraceState.OK,
            )
        )
        count += 1
        time.sleep(0.05)
    streaming = [moment for moment in measured if moment < started + 5.0]
    assert 1 <= len(streaming) <= 3, streaming  # every 2 s at most, not every 0.5 s settling
    # The writes paused: the last trace shows with no flush.
    assert wait_for(lambda: kr_value(client) == (float(10 + count - 1), str(count)))
    flush(store)
    assert_no_drift(client)


def test_trace_marks_wait_for_a_pause_or_the_interval_and_an_alias_move_is_due_at_once() -> None:
    marks = schedule.MeasuredMarks()
    for moment in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5):  # traces stream in: never a pause
        marks.add({("1", "p99-latency")}, moment)
        assert marks.take(moment) == set()
    assert marks.due() == schedule.MEASURE_INTERVAL  # the interval since the first mark
    assert marks.take(schedule.MEASURE_INTERVAL) == {("1", "p99-latency")}
    marks.add({("1", "p99-latency")}, 10.0)
    assert marks.due() == 10.0 + schedule.MEASURE_PAUSE
    marks.add({("1", "champion-auc")}, 10.1, at_once=True)
    assert marks.take(10.1) == {("1", "p99-latency"), ("1", "champion-auc")}
    marks.add({("1", "p99-latency")}, 11.0)
    assert marks.due() == 11.0 + schedule.MEASURE_PAUSE  # at once was for that alias move only
