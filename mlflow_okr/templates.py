"""The starter okrs.yaml that `mlflow-okr init` writes."""

from __future__ import annotations

import datetime as dt

STARTER = """\
# OKRs for one cycle. Reference: docs/okrs-yaml.md in mlflow-okr's repository;
# `mlflow-okr schema` prints the JSON Schema for editors, `mlflow-okr validate` checks this file.
version: 1
cycle: {cycle}
status_thresholds: {{on_track: 0.7, at_risk: 0.4}}
objectives:
  - id: model-quality
    title: Ship a model users can trust
    category: product
    owner: ml-team
    key_results:
      - id: accuracy
        title: Raise validation accuracy from 0.90 to 0.95
        metric: val_accuracy
        baseline: 0.90
        target: 0.95
        guardrails:
          - {{metric: p99_latency_ms, max: 50}}
  - id: serving
    title: Keep serving fast and reliable
    category: operational
    key_results:
      - id: latency
        title: Reduce p99 latency from 200 ms to 50 ms
        metric: p99_latency_ms
        unit: ms
        baseline: 200
        target: 50
      - id: alerting-live
        title: Alerting on model drift is live
        source: manual
        target: 1
"""


def starter_spec(cycle: str | None = None) -> str:
    if cycle is None:
        today = dt.date.today()
        cycle = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
    return STARTER.format(cycle=cycle)
