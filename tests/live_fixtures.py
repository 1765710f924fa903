"""Fixtures and helpers shared by the live-store tests: a spec around today, an okr+ URI."""

from __future__ import annotations

import datetime as dt
import textwrap
import time
from typing import Any

import mlflow
import pytest
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.api import apply_spec
from mlflow_okr.spec import parse_spec
from mlflow_okr.sync import sync

CYCLE = "live"
EXPERIMENT = "train-live"


def spec_around_today(objectives: str, cycle: str = CYCLE) -> str:
    """An okrs.yaml whose cycle runs from 45 days ago to 45 days ahead (runs and traces created now
    fall in it), with `objectives` (YAML list items, any common indentation) under `objectives:`."""
    today = dt.datetime.now(dt.timezone.utc).date()
    start, end = today - dt.timedelta(days=45), today + dt.timedelta(days=45)
    items = textwrap.indent(textwrap.dedent(objectives).strip("\n"), "  ")
    return f"version: 1\ncycle: {{name: {cycle}, start: {start}, end: {end}}}\nobjectives:\n{items}\n"


def live_spec_text() -> str:
    """A cycle around today (runs created now fall in it) with metric KRs of every shape."""
    return spec_around_today(
        """
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
                - {metric: latency, max: 50}
            - id: staged
              metric: val_acc
              experiments: ["train-*"]
              filter: "tags.stage = 'prod'"
              baseline: 0.5
              target: 1.0
        - id: cost
          title: Spend less
          category: operational
          key_results:
            - id: loss
              metric: val_loss
              experiments: ["train-*"]
              baseline: 1.0
              target: 0.5
              aggregate: latest
        """
    )


def publish(plain_uri: str, text: str | None = None) -> None:
    """Publish the spec and compute its KRs, as `mlflow-okr apply` does."""
    apply_spec(parse_spec(text or live_spec_text()), tracking_uri=plain_uri)


def use_okr_uri(plain_uri: str) -> str:
    """Point the fluent API at `okr+<plain uri>` and return that URI."""
    okr_uri = vocabulary.OKR_SCHEME_PREFIX + plain_uri
    mlflow.set_tracking_uri(okr_uri)
    return okr_uri


def kr_run(client: MlflowClient, kr_id: str):
    """The MLflow run that holds KR `kr_id`'s state."""
    published = state.load_published(client, CYCLE)
    return client.get_run(published.kr_runs[kr_id])


def counting_recounts(keeper: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The experiment ids of the cycles `keeper` (a `LiveKrs`) counts from all their runs, from
    now on, one entry per count."""
    recounts: list[str] = []
    recount_cycle = keeper._recount_cycle

    def counted(published, **options):
        recounts.append(published.experiment_id)
        return recount_cycle(published, **options)

    monkeypatch.setattr(keeper, "_recount_cycle", counted)
    return recounts


def assert_no_drift(client: MlflowClient) -> None:
    """`mlflow-okr sync --check` finds nothing to repair."""
    result = sync(client, cycle=CYCLE, check=True)
    assert not result.drifted, (result.kr_drift, result.run_drift)


# ---------------------------------------------------------------------------------------------
# Random write sequences for the invariant: whatever happens, once settled, sync --check finds nothing.

RUNS = 3
operation = st.one_of(
    st.tuples(
        st.just("metric"),
        st.integers(0, RUNS - 1),
        st.sampled_from(["val_acc", "latency", "val_loss"]),
        st.sampled_from([0.4, 0.6, 0.8, 0.95, 30.0, 70.0]),
    ),
    st.tuples(st.just("tag"), st.integers(0, RUNS - 1), st.sampled_from(["prod", "dev", None])),
    st.tuples(st.just("end"), st.integers(0, RUNS - 1), st.sampled_from(["FINISHED", "FAILED", "KILLED"])),
    st.tuples(st.just("delete"), st.integers(0, RUNS - 1)),
    st.tuples(st.just("restore"), st.integers(0, RUNS - 1)),
    st.tuples(st.just("flush"),),
)


def run_operations(okr_client: MlflowClient, client: MlflowClient, operations, settle) -> None:
    """Apply a random sequence of writes through okr+; `settle` stands for the "flush" operation."""
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = [okr_client.create_run(experiment_id).info.run_id for _ in range(RUNS)]
    deleted: set[str] = set()
    for op in operations:
        if op[0] == "flush":
            settle()
            continue
        run_operation(okr_client, runs, deleted, op)


def run_operation(okr_client: MlflowClient, runs: list[str], deleted: set[str], op) -> None:
    """One write of `operation` (not "flush") to one of `runs`; `deleted` follows deletions."""
    run_id = runs[op[1]]
    if op[0] == "restore":
        if run_id in deleted:
            okr_client.restore_run(run_id)
            deleted.discard(run_id)
        return
    if run_id in deleted:
        return
    if op[0] == "metric":
        okr_client.log_metric(run_id, op[2], op[3])
    elif op[0] == "tag":
        if op[2] is None:
            okr_client.set_tag(run_id, "stage", "none")
            okr_client.delete_tag(run_id, "stage")
        else:
            okr_client.set_tag(run_id, "stage", op[2])
    elif op[0] == "end":
        okr_client.set_terminated(run_id, op[2])
    elif op[0] == "delete":
        okr_client.delete_run(run_id)
        deleted.add(run_id)


def wait_for(condition, seconds: float = 30.0) -> bool:
    """Poll `condition` until it holds or `seconds` pass; the caller asserts on the result."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
