"""The live == recompute invariant over production KRs: whatever mix of run writes, traces,
feedback on traces and registry alias moves comes through okr+, once settled the stored state of
every KR (alias-following, trace, model-scoped trace) equals what `sync` recomputes."""

from __future__ import annotations

import contextlib
import time

import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow_okr.store.live as live
import mlflow_okr.store.schedule as schedule
from mlflow_okr import compat, vocabulary
from mlflow_okr.store import flush
from tests.live_fixtures import (
    EXPERIMENT,
    RUNS,
    assert_no_drift,
    kr_run,
    operation,
    publish,
    run_operation,
    spec_around_today,
    use_okr_uri,
)

SERVING = "serve-live"
MODEL = "screener"
ALIAS = "champion"
VERSIONS = 2  # each example registers two new versions, one per run, and moves the alias between them
LATENCIES_MS = [10, 40, 120, 900]
CSAT = [1.0, 3.0, 4.0, 5.0]


def production_spec_text() -> str:
    """A cycle around today with a run KR, an alias-following KR and trace KRs (two model-scoped)."""
    return spec_around_today(
        f"""
        - id: quality
          title: Ship a model users can trust
          category: product
          key_results:
            - id: acc
              metric: val_acc
              experiments: ["train-*"]
              baseline: 0.5
              target: 1.0
              guardrails:
                - {{metric: latency, max: 50}}
            - id: champion-acc
              metric: val_acc
              model: {{name: {MODEL}, alias: {ALIAS}}}
              baseline: 0.5
              target: 1.0
              guardrails:
                - {{metric: latency, max: 50}}
        - id: serve
          title: Serve users fast and well
          category: product
          key_results:
            - id: p99-latency
              source: traces
              trace_metric: latency
              aggregation: p99
              experiments: [{SERVING}]
              baseline: 1000
              target: 100
            - id: csat
              source: traces
              assessment: csat
              aggregation: avg
              experiments: [{SERVING}]
              maintain: {{min: 4}}
            - id: champion-latency
              source: traces
              trace_metric: latency
              aggregation: max
              experiments: [{SERVING}]
              model: {{name: {MODEL}, alias: {ALIAS}}}
              baseline: 1000
              target: 100
            - id: champion-csat
              source: traces
              assessment: csat
              aggregation: avg
              experiments: [{SERVING}]
              model: {{name: {MODEL}, alias: {ALIAS}}}
              maintain: {{min: 4}}
        """
    )


production_operation = st.one_of(
    operation,  # run writes: metrics, tags, ends, deletions, restores, flushes
    # A trace of version k's logged model (None: of no model) that took latency ms.
    st.tuples(st.just("trace"), st.sampled_from([0, 1, None]), st.sampled_from(LATENCIES_MS)),
    # csat feedback on one of this example's traces (picked modulo how many there are).
    st.tuples(st.just("feedback"), st.integers(0, 7), st.sampled_from(CSAT)),
    st.tuples(st.just("alias"), st.integers(0, VERSIONS - 1)),
    st.tuples(st.just("unalias"),),
)


class Production:
    """An okr+ tracking and registry client over one published spec, with the experiments and
    the registered model the KRs read."""

    def __init__(self, tracking_uri: str):
        self.client = MlflowClient(tracking_uri)
        self.train_id = self.client.create_experiment(EXPERIMENT)
        self.serving_id = self.client.create_experiment(SERVING)
        self.client.create_registered_model(MODEL)
        publish(tracking_uri, production_spec_text())
        self.okr_uri = use_okr_uri(tracking_uri)  # the trace exporter and log_feedback write here
        self.okr_client = MlflowClient(tracking_uri=self.okr_uri, registry_uri=self.okr_uri)

    def keepers(self) -> list[live.LiveKrs]:
        """The live KR keepers of the okr+ tracking store and of the okr+ registry store."""
        registry_store = self.okr_client._get_registry_client().store
        return [compat.store_of(self.okr_client)._okr_live, *registry_store._okr_keepers.all()]

    def settle(self) -> None:
        """Export queued traces, then settle every KR update both okr+ stores noted."""
        mlflow.flush_trace_async_logging()
        flush()
        for keeper in self.keepers():
            keeper.flush()

    def settle_marks(self) -> None:
        """Settle what the writes marked, and nothing else: no recount of a whole cycle after the
        fact, which would repair a write the hooks missed."""
        mlflow.flush_trace_async_logging()
        for keeper in self.keepers():
            keeper._settle_marks()
            keeper._settle_measured(None)

    def run(self, operations, settle=None) -> None:
        """New runs, each counted for the run KRs at first; a new logged model and version for each
        of the first VERSIONS runs, each with one trace; then the operations, through okr+."""
        runs = [self.okr_client.create_run(self.train_id).info.run_id for _ in range(RUNS)]
        versions, model_ids, trace_ids = [], [], []
        for index, run_id in enumerate(runs):
            self.okr_client.log_metric(run_id, "val_acc", 0.6 + index / 10)
            self.okr_client.log_metric(run_id, "latency", 10.0)
        for index, run_id in enumerate(runs[:VERSIONS]):
            logged = self.client.create_logged_model(self.train_id, source_run_id=run_id)
            version = self.client.create_model_version(MODEL, f"models:/{logged.model_id}", run_id=run_id)
            versions.append(version.version)
            model_ids.append(logged.model_id)
            trace_ids.append(self.log_trace(logged.model_id, LATENCIES_MS[index + 1]))
        deleted: set[str] = set()
        for op in operations:
            if op[0] == "flush":
                (settle or self.settle)()
            elif op[0] == "trace":
                trace_ids.append(self.log_trace(None if op[1] is None else model_ids[op[1]], op[2]))
            elif op[0] == "feedback":
                if trace_ids:
                    mlflow.flush_trace_async_logging()  # the trace must be stored before its feedback
                    mlflow.log_feedback(trace_id=trace_ids[op[1] % len(trace_ids)], name="csat", value=op[2])
            elif op[0] == "alias":
                self.okr_client.set_registered_model_alias(MODEL, ALIAS, versions[op[1]])
            elif op[0] == "unalias":
                try:
                    self.okr_client.delete_registered_model_alias(MODEL, ALIAS)
                except MlflowException:  # no alias to delete
                    pass
            else:
                run_operation(self.okr_client, runs, deleted, op)

    def log_trace(self, model_id: str | None, latency_ms: int) -> str:
        """A trace in the serving experiment that took exactly `latency_ms`, stamped with
        `model_id` as MLflow stamps the active model's id."""
        start_ns = time.time_ns()
        active = mlflow.set_active_model(model_id=model_id) if model_id else contextlib.nullcontext()
        with active:
            root = self.okr_client.start_trace(
                "predict", experiment_id=self.serving_id, start_time_ns=start_ns
            )
        self.okr_client.end_trace(root.trace_id, end_time_ns=start_ns + latency_ms * 1_000_000)
        return root.trace_id


@pytest.fixture
def production(tracking_uri: str) -> Production:
    return Production(tracking_uri)


@pytest.fixture
def production_without_recounts(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> Production:
    """`production` whose keepers never recount a cycle on a schedule, nor settle a run end at once."""
    monkeypatch.setenv("MLFLOW_OKR_RUN_END_BUDGET", "0")
    monkeypatch.setattr(schedule, "RECOUNT_PAUSE", 3600.0)
    monkeypatch.setattr(schedule, "RECOUNT_INTERVAL", 3600.0)
    return Production(tracking_uri)


def _check(production: Production, operations) -> None:
    production.run(operations)
    production.settle()
    assert_no_drift(production.client)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(production_operation, min_size=1, max_size=12))
def test_live_production_krs_always_equal_a_recompute(production: Production, operations) -> None:
    _check(production, operations)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(production_operation, min_size=1, max_size=12))
def test_the_marks_of_production_writes_alone_keep_their_krs_exact(
    production_without_recounts: Production, operations
) -> None:
    """Without a recount of the cycle after the fact, which would hide a write no hook marked."""
    production = production_without_recounts
    production.run(operations, production.settle_marks)
    production.settle_marks()
    assert_no_drift(production.client)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(production_operation, min_size=1, max_size=30))
def test_live_production_krs_always_equal_a_recompute_at_length(production: Production, operations) -> None:
    _check(production, operations)


def test_an_alias_move_and_a_trace_of_the_new_champion_settle_to_exact_values(production: Production) -> None:
    """One fixed sequence with hand-computed values, so the property above cannot pass vacuously."""
    production.run([
        ("metric", 0, "val_acc", 0.8), ("metric", 0, "latency", 30.0),
        ("metric", 1, "val_acc", 0.95), ("metric", 1, "latency", 30.0),
        ("alias", 0), ("trace", 0, 10), ("trace", 1, 900), ("trace", None, 5000),
        ("feedback", 0, 5.0), ("feedback", 1, 3.0),
        ("flush",),
    ])
    client = production.client

    def value(kr_id: str) -> float | None:
        run = kr_run(client, kr_id)
        counted = run.data.tags.get(vocabulary.TAG_COUNTED) != "0"
        return run.data.metrics.get(vocabulary.METRIC_VALUE) if counted else None

    # Each version's setup trace took 40 and 120 ms; the feedback went on those two traces.
    assert (value("champion-acc"), value("champion-latency"), value("champion-csat")) == (0.8, 40.0, 5.0)
    assert value("csat") == 4.0
    production.okr_client.set_registered_model_alias(MODEL, ALIAS, "2")
    production.settle()
    assert (value("champion-acc"), value("champion-latency"), value("champion-csat")) == (0.95, 900.0, 3.0)
    production.okr_client.delete_registered_model_alias(MODEL, ALIAS)
    production.settle()
    assert (value("champion-acc"), value("champion-latency"), value("champion-csat")) == (None, None, None)
    assert value("acc") == 0.95
    assert_no_drift(client)


def test_a_write_to_the_run_behind_the_alias_moves_the_kr_without_a_recount(
    production_without_recounts: Production,
) -> None:
    """No run scan counts a `model:` KR: a metric write or the end of the run behind the alias
    must re-read it, or it stays stale until a recount of the whole cycle."""
    production = production_without_recounts
    production.run([("alias", 0), ("flush",), ("metric", 0, "val_acc", 0.95)], production.settle_marks)
    production.settle_marks()
    run = kr_run(production.client, "champion-acc")
    assert run.data.metrics[vocabulary.METRIC_VALUE] == 0.95
    production.run([("alias", 0), ("flush",), ("end", 0, "FAILED")], production.settle_marks)
    production.settle_marks()
    assert kr_run(production.client, "champion-acc").data.tags[vocabulary.TAG_COUNTED] == "0"
    assert_no_drift(production.client)
