"""Fixtures and helpers shared by the live-store tests: a spec around today, an okr+ URI."""

from __future__ import annotations

import datetime as dt
import textwrap

import mlflow
from mlflow.tracking import MlflowClient

from mlflow_okr import state
from mlflow_okr.api import apply_spec
from mlflow_okr.spec import parse_spec
from mlflow_okr.sync import sync

CYCLE = "live"
EXPERIMENT = "train-live"


def live_spec_text() -> str:
    """A cycle around today (runs created now fall in it) with metric KRs of every shape."""
    today = dt.datetime.now(dt.timezone.utc).date()
    start, end = today - dt.timedelta(days=45), today + dt.timedelta(days=45)
    return textwrap.dedent(
        f"""
        version: 1
        cycle: {{name: {CYCLE}, start: {start}, end: {end}}}
        objectives:
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
    ).lstrip()


def publish(plain_uri: str, text: str | None = None) -> None:
    """Publish the spec and compute its KRs, as `mlflow-okr apply` does."""
    apply_spec(parse_spec(text or live_spec_text()), tracking_uri=plain_uri)


def use_okr_uri(plain_uri: str) -> str:
    """Point the fluent API at `okr+<plain uri>` and return that URI."""
    okr_uri = state.OKR_PLUGIN_SCHEME_PREFIX + plain_uri
    mlflow.set_tracking_uri(okr_uri)
    return okr_uri


def kr_run(client: MlflowClient, kr_id: str):
    """The MLflow run that holds KR `kr_id`'s state."""
    published = state.load_published(client, CYCLE)
    return client.get_run(published.kr_runs[kr_id])


def assert_no_drift(client: MlflowClient) -> None:
    """`mlflow-okr sync --check` finds nothing to repair."""
    result = sync(client, cycle=CYCLE, check=True)
    assert not result.drifted, (result.kr_drift, result.run_drift)
