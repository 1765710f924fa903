"""The okr+ tracking store in client mode: live KR semantics, fail-open, context, invariant."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store

import mlflow_okr.store.live as live
import mlflow_okr.store.schedule as schedule
from mlflow_okr import compat, vocabulary
from mlflow_okr.store import OkrHooks, flush
from tests.live_fixtures import (
    EXPERIMENT,
    assert_no_drift,
    counting_recounts,
    kr_run,
    live_spec_text,
    operation,
    publish,
    run_operations,
    use_okr_uri,
    wait_for,
)


@pytest.fixture
def okr_uri(tracking_uri: str) -> str:
    """A published spec, and the fluent API pointed at okr+sqlite for the same database."""
    publish(tracking_uri)
    uri = use_okr_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def kr_state(client: MlflowClient, kr_id: str) -> tuple[float | None, float | None, str]:
    run = kr_run(client, kr_id)
    counted = run.data.tags.get(vocabulary.TAG_COUNTED, "0")
    value = run.data.metrics.get(vocabulary.METRIC_VALUE) if counted != "0" else None
    return value, run.data.metrics.get(vocabulary.METRIC_PROGRESS), counted


def run_tags(client: MlflowClient, run_id: str) -> dict[str, str]:
    return {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("okr.")}


def test_store_is_the_inner_stores_subclass(okr_uri: str, tracking_uri: str) -> None:
    store = _get_store(okr_uri)
    assert isinstance(store, SqlAlchemyStore) and isinstance(store, OkrHooks)
    assert type(store).__name__ == "OkrSqlAlchemyStore"
    assert type(_get_store(tracking_uri)) is SqlAlchemyStore


def test_new_best_moves_value_and_progress(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metrics({"latency": 10, "val_acc": 0.6})
        flush()
        assert kr_state(client, "acc") == (0.6, pytest.approx(0.2), "1")
        mlflow.log_metric("val_acc", 0.8)
        flush()
        assert kr_state(client, "acc")[:2] == (0.8, pytest.approx(0.6))
        mlflow.log_metric("val_acc", 0.7)  # the run's latest value is what counts
        flush()
        assert kr_state(client, "acc")[:2] == (0.7, pytest.approx(0.4))
    assert run_tags(client, run.info.run_id) == {
        "okr.cycle": "live", "okr.kr.acc": "counted", "okr.krs": "acc",
    }
    history = [m.value for m in client.get_metric_history(kr_run(client, "acc").info.run_id, "okr.value")]
    assert history == [0.6, 0.8, 0.7]  # written when it changed, not on every call
    assert_no_drift(client)


def test_late_guardrail_flips_pending_to_counted(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("val_acc", 0.9)
        flush()
        assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "pending"
        assert kr_state(client, "acc")[2] == "0"
        assert kr_run(client, "acc").data.tags["okr.pending_runs"] == "1"
        mlflow.log_metric("latency", 20)
        flush()
        assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "counted"
        assert kr_state(client, "acc")[0] == 0.9
    assert_no_drift(client)


def test_post_run_hook_turns_pending_into_excluded(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("val_acc", 0.9)
    # No flush: ending the run settles it before end_run returns.
    assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "excluded: guardrail latency never logged"
    stored = kr_run(client, "acc").data.tags
    assert (stored["okr.pending_runs"], stored["okr.excluded_runs"], stored["okr.status"]) == (
        "0", "1", "not-started",
    )
    assert_no_drift(client)


def test_a_costly_run_end_is_settled_in_the_background(
    okr_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget of 0 s stands for a store so large that the last recompute took too long.
    monkeypatch.setenv("MLFLOW_OKR_RUN_END_BUDGET", "0")
    with mlflow.start_run():
        mlflow.log_metric("val_acc", 0.9)
        flush()  # a recompute has run, so its cost (> 0 s) is known
    assert live.run_end_budget() == 0.0
    with mlflow.start_run() as run:
        mlflow.log_metric("val_acc", 0.8)
    flush()  # what the background writer does within a few recompute times
    assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "excluded: guardrail latency never logged"
    assert kr_run(client, "acc").data.tags["okr.excluded_runs"] == "2"
    assert_no_drift(client)


def test_guardrail_breach_excludes(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metrics({"val_acc": 0.9, "latency": 80})
    assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "excluded: guardrail latency = 80 breaks <= 50"
    assert kr_run(client, "acc").data.tags["okr.guardrail_breaches"] == "1"
    assert_no_drift(client)


@pytest.mark.parametrize("end_status", ["FAILED", "KILLED"])
def test_failing_the_best_run_recomputes(okr_uri: str, client: MlflowClient, end_status: str) -> None:
    with mlflow.start_run() as steady:
        mlflow.log_metrics({"val_acc": 0.6, "latency": 10})
    with mlflow.start_run() as best:
        mlflow.log_metrics({"val_acc": 0.95, "latency": 10})
        flush()
        assert kr_run(client, "acc").data.tags[vocabulary.TAG_BEST_RUN] == best.info.run_id
        mlflow.end_run(end_status)
    assert kr_state(client, "acc")[:2] == (0.6, pytest.approx(0.2))
    assert kr_run(client, "acc").data.tags[vocabulary.TAG_BEST_RUN] == steady.info.run_id
    assert run_tags(client, best.info.run_id)["okr.kr.acc"] == f"excluded: run {end_status}"
    assert_no_drift(client)


def test_deleting_and_restoring_the_best_run(okr_uri: str, client: MlflowClient) -> None:
    okr_client = MlflowClient(okr_uri)
    with mlflow.start_run() as steady:
        mlflow.log_metrics({"val_acc": 0.6, "latency": 10})
    with mlflow.start_run() as best:
        mlflow.log_metrics({"val_acc": 0.9, "latency": 10})
    assert kr_state(client, "acc")[0] == 0.9
    okr_client.delete_run(best.info.run_id)
    assert kr_state(client, "acc")[0] == 0.6
    assert_no_drift(client)
    okr_client.delete_run(steady.info.run_id)
    assert kr_state(client, "acc") == (None, 0.0, "0")
    okr_client.restore_run(best.info.run_id)
    assert kr_state(client, "acc")[0] == 0.9
    assert_no_drift(client)


def test_tag_change_moves_a_run_into_and_out_of_a_filter(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("val_acc", 0.7)
        flush()
        assert "okr.kr.staged" not in run_tags(client, run.info.run_id)
        mlflow.set_tag("stage", "prod")
        flush()
        assert run_tags(client, run.info.run_id)["okr.kr.staged"] == "counted"
        assert kr_state(client, "staged")[0] == 0.7
        mlflow.set_tag("stage", "dev")
        flush()
        assert "okr.kr.staged" not in run_tags(client, run.info.run_id)
        assert kr_state(client, "staged") == (None, 0.0, "0")
        mlflow.set_tag("stage", "prod")
        MlflowClient(okr_uri).delete_tag(run.info.run_id, "stage")
        flush()
        assert kr_state(client, "staged")[2] == "0"
    assert_no_drift(client)


def test_async_logging_updates_krs(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("latency", 5, synchronous=False)
        operation = mlflow.log_metric("val_acc", 0.85, synchronous=False)
        operation.wait()
        flush()
        assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "counted"
        assert kr_state(client, "acc")[0] == 0.85
    assert_no_drift(client)


def test_background_writer_settles_without_a_flush(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run():
        mlflow.log_metrics({"val_acc": 0.75, "latency": 5})
        deadline = time.monotonic() + 20
        while kr_state(client, "acc")[0] != 0.75 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kr_state(client, "acc")[0] == 0.75


def test_unused_keys_mark_nothing(okr_uri: str) -> None:
    store = _get_store(okr_uri)
    with mlflow.start_run():
        mlflow.log_metric("val_acc", 0.7)  # loads the definitions once
        flush()
        mlflow.log_metric("throughput", 3.0)
        mlflow.log_param("lr", "0.1")
        mlflow.set_tag("team", "reco")
        assert store._okr_live._marks.runs == {}
        mlflow.log_metric("val_acc", 0.8)
        assert list(store._okr_live._marks.runs.values()) == [{(kr_run_experiment(store), "acc"),
                                                               (kr_run_experiment(store), "staged")}]


def kr_run_experiment(store: OkrHooks) -> str:
    return next(iter(store._okr_live.watched.cycles))


def test_writes_to_okr_experiments_trigger_nothing(okr_uri: str, client: MlflowClient) -> None:
    okr_client = MlflowClient(okr_uri)
    kr = kr_run(client, "acc")
    before = kr.data.tags
    okr_client.log_metric(kr.info.run_id, "val_acc", 0.99)
    okr_client.log_batch(kr.info.run_id, metrics=[], tags=[])
    okr_client.set_tag(kr.info.run_id, "stage", "prod")
    flush()
    after = client.get_run(kr.info.run_id).data.tags
    assert {k: v for k, v in after.items() if k != "stage"} == before
    assert kr_state(client, "acc") == (None, 0.0, "0")


def test_a_spec_applied_later_is_picked_up(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "REFRESH_INTERVAL", 0.0)
    use_okr_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    store = _get_store()
    with mlflow.start_run() as run:
        mlflow.log_metric("val_acc", 0.6)
        assert store._okr_live.watched.cycles == {}
        publish(tracking_uri)
        deadline = time.monotonic() + 20
        while not store._okr_live.watched.cycles and time.monotonic() < deadline:
            mlflow.log_metric("unrelated", 1.0)
            time.sleep(0.1)
        mlflow.log_metrics({"val_acc": 0.7, "latency": 1})
    assert run_tags(client, run.info.run_id)["okr.kr.acc"] == "counted"
    assert kr_state(client, "acc")[0] == 0.7


# ---------------------------------------------------------------------------------------------
# Fail-open


def test_a_failing_hook_keeps_the_write_and_warns_once(
    okr_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("scoring exploded")

    monkeypatch.setattr(live, "_warned", False)
    monkeypatch.setattr(live, "revise_tally", broken)  # a revision
    monkeypatch.setattr(live, "compute_key_results", broken)  # and the recount standing in for one
    caplog.set_level(logging.WARNING, logger="mlflow_okr")
    with mlflow.start_run() as run:
        mlflow.log_metrics({"val_acc": 0.9, "latency": 5})
        flush()
        mlflow.log_metric("val_acc", 0.95)
    assert client.get_run(run.info.run_id).data.metrics == {"val_acc": 0.95, "latency": 5.0}
    warnings = [r for r in caplog.records if r.name == "mlflow_okr" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "scoring exploded" in warnings[0].getMessage()
    assert "mlflow-okr sync" in warnings[0].getMessage()
    monkeypatch.undo()
    from mlflow_okr.sync import sync

    sync(client)  # repairs what the hook could not write
    assert kr_state(client, "acc")[0] == 0.95
    assert_no_drift(client)


def test_unreadable_definitions_never_fail_a_write(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("backend unreadable")

    publish(tracking_uri)
    monkeypatch.setattr(live, "_warned", False)
    monkeypatch.setattr(live, "load_watched_krs", broken)
    use_okr_uri(tracking_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("val_acc", 0.9)
        mlflow.set_tag("stage", "prod")
    stored = client.get_run(run.info.run_id)
    assert stored.data.metrics["val_acc"] == 0.9 and stored.info.status == "FINISHED"
    assert sum(r.name == "mlflow_okr" for r in caplog.records) == 1


# ---------------------------------------------------------------------------------------------
# Run context


def test_context_adds_the_cycle_on_an_okr_uri(okr_uri: str, client: MlflowClient) -> None:
    with mlflow.start_run() as run:
        pass
    assert run_tags(client, run.info.run_id) == {"okr.cycle": "live"}


def test_context_adds_hypothesis_and_arm(
    okr_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_OKR_HYPOTHESIS", "h-7")
    monkeypatch.setenv("MLFLOW_OKR_ARM", "treatment")
    with mlflow.start_run() as run:
        pass
    assert run_tags(client, run.info.run_id) == {
        "okr.cycle": "live", "okr.hypothesis": "h-7", "okr.arm": "treatment",
    }


def test_a_hypothesis_tags_runs_on_a_plain_uri_too(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(tracking_uri)
    monkeypatch.setenv("MLFLOW_OKR_HYPOTHESIS", "h-9")
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        pass
    assert run_tags(client, run.info.run_id) == {"okr.cycle": "live", "okr.hypothesis": "h-9"}


def test_plain_sqlite_users_see_no_change(tracking_uri: str, client: MlflowClient) -> None:
    from sqlalchemy import event

    publish(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    store = _get_store(tracking_uri)
    assert not isinstance(store, OkrHooks)
    statements: list[str] = []

    # Paths MLflow records (artifact locations, the source script) hold the working directory and
    # this checkout, which may well contain "okr" (a clone named mlflow-okr): they are left out.
    paths = {os.getcwd(), str(Path(__file__).resolve().parents[1]), sys.prefix}

    def record(conn, cursor, statement, parameters, *args):
        text = f"{statement} {parameters}"
        for path in paths:
            text = text.replace(path, "<path>")
        statements.append(text)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with mlflow.start_run() as run:
            mlflow.log_metrics({"val_acc": 0.9, "latency": 5})
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert run_tags(client, run.info.run_id) == {}
    # MLflow's own queries only: nothing looks for okr/ experiments or okr.* tags.
    assert statements and not any("okr" in statement for statement in statements)


# ---------------------------------------------------------------------------------------------
# The invariant: whatever happens, once settled, sync --check finds nothing to repair.

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=12))
def test_live_state_always_equals_a_recompute(okr_uri: str, client: MlflowClient, operations) -> None:
    run_operations(MlflowClient(okr_uri), client, operations, flush)
    flush()
    assert_no_drift(client)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=14))
def test_revising_run_by_run_equals_a_recompute(
    okr_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch, operations
) -> None:
    """Without any recount after the fact: the saved tallies revised write by write are exact."""
    monkeypatch.setenv("MLFLOW_OKR_RUN_END_BUDGET", "0")  # run ends settle with the rest
    okr_client = MlflowClient(okr_uri)
    keeper = compat.store_of(okr_client)._okr_live
    run_operations(okr_client, client, operations, keeper._settle_marks)
    keeper._settle_marks()
    assert_no_drift(client)  # compares the saved tallies too


def keeper_counting_recounts(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, spec_text: str
) -> tuple[MlflowClient, str, live.LiveKrs, list[str]]:
    """An okr+ client of a freshly published spec, its keeper, and the experiment id of the cycle
    of each recount from then on (`counting_recounts`)."""
    monkeypatch.setenv("MLFLOW_OKR_RUN_END_BUDGET", "0")
    monkeypatch.setattr(schedule, "RECOUNT_PAUSE", 3600.0)  # no scheduled recount either
    monkeypatch.setattr(schedule, "RECOUNT_INTERVAL", 3600.0)
    publish(tracking_uri, spec_text)
    okr_client = MlflowClient(use_okr_uri(tracking_uri))
    experiment_id = okr_client.create_experiment(EXPERIMENT)
    keeper = compat.store_of(okr_client)._okr_live
    return okr_client, experiment_id, keeper, counting_recounts(keeper, monkeypatch)


def test_the_runner_up_takes_over_from_a_best_run_that_gets_worse_without_a_recount(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    okr_client, experiment_id, keeper, recounts = keeper_counting_recounts(
        tracking_uri, monkeypatch, live_spec_text()
    )
    runs = [okr_client.create_run(experiment_id).info.run_id for _ in range(3)]
    for run_id, value in zip(runs, [0.9, 0.8, 0.7], strict=True):
        okr_client.log_batch(run_id, metrics=[Metric("val_acc", value, 0, 0), Metric("latency", 10, 0, 0)])
    keeper._settle_marks()
    assert kr_state(client, "acc")[0] == 0.9
    okr_client.log_metric(runs[0], "val_acc", 0.75)  # the best run gets worse: the next one leads
    keeper._settle_marks()
    assert kr_state(client, "acc")[0] == 0.8
    okr_client.set_terminated(runs[1], "KILLED")  # and leaves: the one after takes over
    keeper._settle_marks()
    assert kr_state(client, "acc")[0] == 0.75
    assert recounts == []
    assert_no_drift(client)


def test_every_verdict_a_settling_tags_also_revises_its_kr(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settling tags a run for every KR its facts decide, marked or not. A verdict that reached
    the run's tags without its KR's tally would make the next write to the run look like a
    counted run's new value, and the KR would never count the run."""
    okr_client, experiment_id, keeper, recounts = keeper_counting_recounts(
        tracking_uri, monkeypatch, live_spec_text()
    )
    run_id = okr_client.create_run(experiment_id).info.run_id
    okr_client.log_metric(run_id, "val_acc", 0.9)  # marks the KRs of val_acc only
    client.log_metric(run_id, "val_loss", 0.8)  # beside okr+ (or read after the marks were taken)
    keeper._settle_marks()
    assert run_tags(client, run_id)["okr.kr.loss"] == "counted"
    assert kr_state(client, "loss") == (0.8, pytest.approx(0.4), "1")
    okr_client.log_metric(run_id, "val_loss", 0.6)
    keeper._settle_marks()
    assert kr_state(client, "loss") == (0.6, pytest.approx(0.8), "1")
    assert recounts == []
    assert_no_drift(client)


def test_a_pause_verifies_the_revised_tallies_and_recounts_only_one_another_writer_replaced(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once writes pause (and at exit) a keeper reads back the tallies it revised. One that still
    holds what it wrote stands; one that another writer replaced, revised from the same saved
    tally at the same moment, may have lost this keeper's run: the cycle is counted afresh."""
    okr_client, experiment_id, keeper, recounts = keeper_counting_recounts(
        tracking_uri, monkeypatch, live_spec_text()
    )
    first = okr_client.create_run(experiment_id).info.run_id
    okr_client.log_metric(first, "val_loss", 0.8)
    keeper._settle_marks()
    keeper._recount(None)
    assert recounts == []
    before = kr_run(client, "loss").data.tags[vocabulary.TAG_TALLY]  # counts the first run
    second = okr_client.create_run(experiment_id).info.run_id
    okr_client.log_metric(second, "val_loss", 0.6)
    keeper._settle_marks()
    assert kr_state(client, "loss")[2] == "2"
    # The other writer revised `before` with a run of its own, and wrote last: this keeper's
    # second run is lost from the tally.
    client.set_tag(kr_run(client, "loss").info.run_id, vocabulary.TAG_TALLY, before)
    keeper._recount(None)
    assert recounts == [kr_run(client, "loss").info.experiment_id]  # the cycle's okr/ experiment
    assert kr_state(client, "loss") == (0.6, pytest.approx(0.8), "2")
    assert_no_drift(client)


def test_a_counted_runs_new_value_revises_a_mean_without_a_recount(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run keeps the value its mean counts in okr.kr.<id>.value: a new value is taken out and
    # put in without reading the KR's other runs.
    okr_client, experiment_id, keeper, recounts = keeper_counting_recounts(
        tracking_uri, monkeypatch, live_spec_text().replace("aggregate: latest", "aggregate: mean")
    )
    runs = [okr_client.create_run(experiment_id).info.run_id for _ in range(3)]
    for run_id, value in zip(runs, [0.9, 0.7, 0.6], strict=True):
        okr_client.log_metric(run_id, "val_loss", value)
    keeper._settle_marks()
    assert run_tags(client, runs[1])["okr.kr.loss.value"] == "0.7"
    okr_client.log_metric(runs[1], "val_loss", 0.3)  # neither the best (lowest) nor the worst run
    okr_client.log_metric(runs[0], "val_loss", 0.8)
    keeper._settle_marks()
    assert recounts == []
    assert kr_state(client, "loss")[0] == pytest.approx((0.8 + 0.3 + 0.6) / 3)
    assert run_tags(client, runs[1])["okr.kr.loss.value"] == "0.3"
    okr_client.set_terminated(runs[0], "FAILED")  # leaves the mean with the value it kept
    keeper._settle_marks()
    assert recounts == []
    assert kr_state(client, "loss")[0] == pytest.approx((0.3 + 0.6) / 2)
    assert "okr.kr.loss.value" not in run_tags(client, runs[0])
    assert_no_drift(client)


def test_a_settling_for_another_kr_that_reads_a_new_value_revises_the_mean_too(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settling marked for one KR reads all of the run's facts, and its tags take the value a
    mean now counts, so the mean's tally must take it too: the settling of the write that marked
    the mean (another server worker's) then finds the run's tags already saying so."""
    okr_client, experiment_id, keeper, recounts = keeper_counting_recounts(
        tracking_uri, monkeypatch, live_spec_text().replace("aggregate: latest", "aggregate: mean")
    )
    run_id = okr_client.create_run(experiment_id).info.run_id
    okr_client.log_metric(run_id, "val_loss", 0.9)
    keeper._settle_marks()
    client.log_metric(run_id, "val_loss", 0.5)  # through the other worker: marked there
    okr_client.log_metric(run_id, "val_acc", 0.8)  # marks the KRs of val_acc only, here
    keeper._settle_marks()
    assert run_tags(client, run_id)["okr.kr.loss.value"] == "0.5"
    assert kr_state(client, "loss")[0] == pytest.approx(0.5)
    okr_client.log_metric(run_id, "val_loss", 0.5)  # the other worker's mark, settled after
    keeper._settle_marks()
    assert kr_state(client, "loss")[0] == pytest.approx(0.5)
    assert recounts == []
    assert_no_drift(client)


def test_exit_never_waits_long_on_a_stuck_backend(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A recompute stuck on a backend that went away holds the flush lock (MLflow's HTTP client
    # retries for minutes); process exit must give up on settling instead of hanging.
    monkeypatch.setattr(live, "EXIT_FLUSH_TIMEOUT", 0.2)
    keeper = live.LiveKrs(tracking_uri)
    keeper._flush_lock.acquire()
    try:
        exiting = threading.Thread(target=keeper.flush_at_exit)
        with caplog.at_level(logging.WARNING, logger="mlflow_okr"):
            exiting.start()
            exiting.join(60)
        assert not exiting.is_alive()
        assert "could not settle key results within 0 s at exit" in caplog.text
    finally:
        keeper._flush_lock.release()


# ---------------------------------------------------------------------------------------------
# The writer's lifecycle


def test_an_idle_writer_ends_and_the_next_write_starts_one(
    okr_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "IDLE_EXIT", 0.2)
    keeper = _get_store(okr_uri)._okr_live
    with mlflow.start_run():
        mlflow.log_metrics({"val_acc": 0.6, "latency": 1})
        first = keeper._thread
        assert first is not None
        assert wait_for(lambda: not first.is_alive())
        mlflow.log_metric("val_acc", 0.7)
        assert keeper._thread is not first and keeper._thread.is_alive()
        flush()
    assert kr_state(client, "acc")[0] == 0.7


def test_a_writer_whose_database_is_gone_stops(tmp_path, sqlite_template, client: MlflowClient) -> None:
    import shutil

    path = tmp_path / "gone.db"
    shutil.copyfile(sqlite_template, path)
    publish(f"sqlite:///{path}")
    keeper = live.LiveKrs(f"sqlite:///{path}")
    keeper.watched  # noqa: B018 - loads the definitions while the database is there
    path.unlink()
    keeper._mark("0" * 32, live.ALL_KRS)
    writer = keeper._thread
    assert writer is not None
    assert wait_for(lambda: not writer.is_alive())
    assert keeper._stop.is_set() and keeper._marks.runs == {}
    keeper._mark("1" * 32, live.ALL_KRS)  # a closed keeper starts no writer again
    assert keeper._thread is writer


def test_a_run_being_deleted_is_never_tagged(
    okr_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_OKR_RUN_END_BUDGET", "0")  # nothing settles in this thread
    store = _get_store(okr_uri)
    keeper = store._okr_live
    with mlflow.start_run() as run:
        mlflow.log_metrics({"val_acc": 0.9, "latency": 1})
        flush()
    run_id = run.info.run_id
    with keeper._flush_lock:  # the writer is busy while the run goes
        MlflowClient(okr_uri).log_metric(run_id, "val_acc", 0.95)  # marked, not settled yet
        store.delete_run(run_id)
        assert run_id in keeper._deleting
        store._hard_delete_run(run_id)  # what `mlflow gc` calls
    flush()  # the marks name a run that is gone: nothing is written for it, nothing fails
    assert client.search_runs([run.info.experiment_id], f"attributes.run_id = '{run_id}'") == []
    assert kr_state(client, "acc") == (None, 0.0, "0")
    assert_no_drift(client)


def test_a_recount_waits_for_the_writes_to_its_whole_cycle_to_pause() -> None:
    # A recount counts every KR of the cycle (seconds at 100,000 runs): a KR revised once must not
    # start one while another KR of the same cycle is revised on every settling.
    recounts = schedule.Recounts()
    recounts.revised(("1", "latest-latency"), 0.0)
    for moment in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        recounts.revised(("1", "accuracy"), moment)
        assert recounts.take(moment) == set()
    recounts.revised(("2", "other-cycle"), 0.0)
    assert recounts.take(3.0) == {("2", "other-cycle")}
    assert recounts.take(3.0 + schedule.RECOUNT_PAUSE) == {("1", "latest-latency"), ("1", "accuracy")}


def test_a_spec_applied_through_the_okr_store_counts_the_next_write(
    tracking_uri: str, client: MlflowClient
) -> None:
    """As a client applying through an okr server does: the definitions the store loaded before
    the apply are replaced at once, so the first write after it counts with no later write."""
    from mlflow.entities import RunTag

    from mlflow_okr.apply import apply_spec
    from mlflow_okr.spec import parse_spec

    okr_client = MlflowClient(use_okr_uri(tracking_uri))
    experiment_id = okr_client.create_experiment(EXPERIMENT)
    warm_up = okr_client.create_run(experiment_id).info.run_id
    okr_client.log_metric(warm_up, "warm_up", 1.0)  # the store loads its definitions: none yet
    apply_spec(okr_client, parse_spec(live_spec_text()))
    run_id = okr_client.create_run(experiment_id).info.run_id
    now = int(time.time() * 1000)
    okr_client.log_batch(
        run_id, metrics=[Metric("val_acc", 0.7, now, 0), Metric("latency", 12, now, 0)],
        tags=[RunTag("stage", "prod")],
    )
    assert wait_for(lambda: kr_run(client, "acc").data.tags.get(vocabulary.TAG_BEST_RUN) == run_id)
    flush()
    assert_no_drift(client)


@pytest.mark.parametrize("then", ["next-check", "exit"])
def test_a_settling_from_definitions_older_than_a_new_inner_cycle_is_settled_again(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """A worker that has not yet seen a quarter published inside the year settles a run only the
    year counts from its older definitions, putting back the okr.cycle the apply had just moved to
    the quarter. Its next look at the definitions settles that run again; a process that ends
    first looks before its last settling."""
    from mlflow_okr.store.hooks import build_tracking_store
    from tests.live_fixtures import spec_around_today

    monkeypatch.setattr(live, "REFRESH_INTERVAL", 30.0)  # no check for new specs unless called
    today = dt.datetime.now(dt.timezone.utc).date()
    year = spec_around_today(
        "- id: company\n  title: Company\n  category: product\n  key_results:\n"
        "    - {id: company-acc, metric: val_acc, experiments: ['train-*'], baseline: 0.5, target: 1.0}\n",
        cycle="live-year",
    ).replace(str(today - dt.timedelta(days=45)), str(today - dt.timedelta(days=90)))
    quarter = spec_around_today(
        "- id: team\n  title: Team\n  category: product\n  key_results:\n"
        "    - {id: team-loss, metric: loss, experiments: ['train-*'], baseline: 1.0, target: 0.5}\n"
    ).replace("version: 1\n", "version: 1\nteam: vision\n")
    publish(tracking_uri, year)
    run_id = client.create_run(client.create_experiment(EXPERIMENT)).info.run_id
    worker = build_tracking_store(vocabulary.OKR_SCHEME_PREFIX + tracking_uri)

    def log_acc(value: float) -> None:
        worker.log_metric(run_id, Metric("val_acc", value, int(time.time() * 1000), 0))
        worker.flush_okr()

    def cycle_tag() -> str | None:
        return client.get_run(run_id).data.tags.get(vocabulary.TAG_CYCLE)

    log_acc(0.6)
    assert cycle_tag() == "live-year"
    publish(tracking_uri, quarter)  # through another store; its apply re-tags the year's runs
    assert cycle_tag() == "live"
    if then == "exit":
        worker.log_metric(run_id, Metric("val_acc", 0.7, int(time.time() * 1000), 0))
        worker._okr_live.flush_at_exit()
    else:
        log_acc(0.7)  # settled from the definitions loaded before the quarter
        assert cycle_tag() == "live-year"
        assert worker._okr_live.refresh()
        worker.flush_okr()
    assert cycle_tag() == "live"
    assert_no_drift(client)


def test_a_spec_applied_elsewhere_counts_a_write_made_right_after_with_no_later_write(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two server workers on one database: the one that did not serve the apply loaded its
    definitions before it, then gets the first KR write and nothing after it. The KR shows it with
    no further write and no sync: a write owes the store one more look for a newly applied spec."""
    from mlflow.entities import RunTag

    from mlflow_okr.store.hooks import build_tracking_store

    interval = 10.0  # longer than the apply takes, so the write comes before any due check
    monkeypatch.setattr(live, "REFRESH_INTERVAL", interval)
    experiment_id = client.create_experiment(EXPERIMENT)
    run_id = client.create_run(experiment_id).info.run_id
    worker = build_tracking_store(vocabulary.OKR_SCHEME_PREFIX + tracking_uri)
    worker.log_metric(run_id, Metric("warm_up", 1.0, int(time.time() * 1000), 0))  # loads: none yet
    loaded = time.monotonic()
    assert worker._okr_live.watched.cycles == {}
    publish(tracking_uri)  # through another store: no hook of this one sees it
    now = int(time.time() * 1000)
    worker.log_batch(
        run_id, metrics=[Metric("val_acc", 0.7, now, 0), Metric("latency", 12, now, 0)], params=[],
        tags=[RunTag("stage", "prod")],
    )
    assert time.monotonic() - loaded < interval  # the write came before the interval ran out
    assert wait_for(lambda: kr_run(client, "acc").data.tags.get(vocabulary.TAG_BEST_RUN) == run_id, 60)
    assert kr_state(client, "acc")[0] == 0.7
    worker.flush_okr()
    assert_no_drift(client)
