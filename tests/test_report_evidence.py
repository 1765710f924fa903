"""The report shows the effect `ledger evaluate` computes, also for a hypothesis resolved before it."""

from __future__ import annotations

import datetime as dt

import pytest

from mlflow_okr import ledger
from mlflow_okr.report import build_report, render
from tests.conftest import NOW, invoke, make_run
from tests.test_apply import WriteCounter
from tests.test_mlflow_ui import SPEC

UI = "http://mlflow.example.test:5000"


def test_an_effect_evaluated_after_resolution_is_shown_with_its_link(
    runner, write_spec, client, tracking_uri
):
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    ab_tests = client.create_experiment("ab-tests")
    control = [make_run(client, ab_tests, {"online_ctr": v}) for v in (0.050, 0.052, 0.051)]
    treatment = [make_run(client, ab_tests, {"online_ctr": v}) for v in (0.060, 0.062, 0.061)]
    when = dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc)
    ledger.add_hypothesis(
        "Two towers beat MF", hypothesis_id="two-tower", kr="ctr", tracking_uri=tracking_uri, when=when
    )
    ledger.link_runs("two-tower", control, arm="control", tracking_uri=tracking_uri)
    ledger.link_runs("two-tower", treatment, arm="treatment", tracking_uri=tracking_uri)
    ledger.resolve_hypothesis("two-tower", "validated", "works", tracking_uri=tracking_uri, when=when)
    evaluated = invoke(runner, "ledger", "evaluate", "two-tower")  # a closed hypothesis: shown, not recorded
    assert evaluated.exit_code == 0 and "effect      +0.01 (+19.61%)" in evaluated.output
    assert ledger.get_hypothesis("two-tower", tracking_uri).evaluation is None

    counter = WriteCounter(tracking_uri)
    report = build_report(client, cycle="2026-Q4", now=NOW, ui_url=UI)

    assert counter.writes() == []
    (shown,) = report.ledger
    assert shown.effect_size == pytest.approx(0.01, abs=1e-15)
    assert shown.relative_effect == pytest.approx(0.01 / 0.051, rel=1e-12)
    assert (shown.control_runs, shown.treatment_runs) == (3, 3)
    ledger_experiment = client.get_experiment_by_name("okr/ledger").experiment_id
    run_page = f"#/experiments/{ledger_experiment}/runs/{shown.run_id}?workflowType=machine_learning"
    assert shown.url == f"{UI}/{run_page}"
    page = render(report, "html")
    assert f'<a href="{shown.url}"><code>two-tower</code></a> Two towers beat MF' in page
    assert "<td class=num>+0.01 (+19.6%)</td>" in page
