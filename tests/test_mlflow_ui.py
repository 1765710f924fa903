"""The OKR experiment and KR run descriptions written for MLflow's own UI."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest
from mlflow.entities import Metric

from mlflow_okr import api, mlflow_ui, state
from mlflow_okr.apply import apply_spec
from mlflow_okr.spec import Cycle, load_spec
from tests.conftest import NOW, invoke, make_run
from tests.test_apply import WriteCounter

SPEC = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Improve *recommendation* relevance <script>alert(1)</script>
    category: product
    owner: reco_team
    key_results:
      - id: ctr
        title: Raise CTR [from 5% to 8%]
        metric: online_ctr
        experiments: [reco-a]
        baseline: 0.05
        target: 0.08
        guardrails:
          - {metric: p99_latency_ms, max: 50}
      - id: f1
        metric: f1
        experiments: [reco-*]
        baseline: {filter: "tags.role = 'baseline'", experiments: [reco-a]}
        target: "+5%"
  - id: serving
    title: Keep serving fast
    category: operational
    key_results:
      - id: latency
        metric: p99_latency_ms
        unit: ms
        experiments: [serving]
        baseline: 200
        target: 50
      - id: alerting-live
        source: manual
        target: 1
"""


@pytest.fixture
def published_cycle(runner, write_spec, client, tracking_uri):
    """A cycle applied with the CLI and synced: returns (published, status, experiment ids, run ids)."""
    reco_a = client.create_experiment("reco-a")
    reco_b = client.create_experiment("reco-b")
    serving = client.create_experiment("serving")
    runs = {
        "baseline": make_run(client, reco_a, {"f1": 0.8}, {"role": "baseline"}),
        "ctr-best": make_run(client, reco_a, {"online_ctr": 0.065, "p99_latency_ms": 40, "f1": 0.82}),
        "ctr-slow": make_run(client, reco_a, {"online_ctr": 0.07, "p99_latency_ms": 60}),
        "f1-b": make_run(client, reco_b, {"f1": 0.81}),
        "latency": make_run(client, serving, {"p99_latency_ms": 125}),
    }
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    result = api.sync(tracking_uri, cycle="2026-Q4", now=NOW)
    published = state.load_published(client, "2026-Q4")
    experiments = {"reco-a": reco_a, "reco-b": reco_b, "serving": serving}
    return published, result.status, experiments, runs


def ml_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def test_apply_tags_the_okr_experiment_for_the_runs_view(runner, write_spec, client):
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    experiment = client.get_experiment_by_name("okr/2026-Q4")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_next_apply_tags_older_okr_and_ledger_experiments(runner, write_spec, client):
    path = write_spec(SPEC)
    assert invoke(runner, "apply", str(path)).exit_code == 0
    cycle_id = client.get_experiment_by_name("okr/2026-Q4").experiment_id
    client.delete_experiment_tag(cycle_id, "mlflow.experimentKind")
    ledger_id = client.create_experiment("okr/ledger")  # as older versions created it

    again = invoke(runner, "apply", str(path))

    assert again.exit_code == 0, again.output
    assert (
        "  update    cycle     2026-Q4  (mlflow.experimentKind: open in MLflow's runs view)" in again.output
    )
    assert (
        "  update    ledger    okr/ledger  (mlflow.experimentKind: open in MLflow's runs view)"
        in again.output
    )
    for experiment_id in (cycle_id, ledger_id):
        assert (
            client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
        )
    assert "0 change(s)." in invoke(runner, "apply", str(path)).output


def test_a_new_ledger_experiment_opens_in_the_runs_view(client, tracking_uri):
    from mlflow_okr.ledger.store import ledger_experiment_id

    experiment = client.get_experiment(ledger_experiment_id(client, create=True))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_escape_keeps_user_text_literal():
    assert mlflow_ui.escape("<b>*x*</b> & [a](b) | 1.5\nnext") == (
        "&lt;b&gt;\\*x\\*&lt;/b&gt; &amp; \\[a\\]\\(b\\) \\| 1\\.5 next"
    )


def test_runs_table_link_filters_one_or_several_experiments():
    counted = "tags.`okr.kr.ctr` = 'counted'"
    encoded = quote(counted, safe="")
    assert encoded == "tags.%60okr.kr.ctr%60%20%3D%20%27counted%27"
    assert mlflow_ui.runs_table_link(["7"], counted) == (
        f"#/experiments/7/runs?workflowType=machine_learning&searchFilter={encoded}"
    )
    assert mlflow_ui.runs_table_link(["9", "10"], counted) == (
        "#/compare-experiments/s?experiments=%5B%2210%22%2C%229%22%5D"
        f"&workflowType=machine_learning&searchFilter={encoded}"
    )
    assert mlflow_ui.runs_table_link([], counted) is None


def counted_href(page: str, kr_id: str, joiner: str = "?") -> str:
    """`page` with the query that filters MLflow's runs table to the KR's counted runs."""
    counted = f"tags.%60okr.kr.{kr_id}%60%20%3D%20%27counted%27"
    return f"{page}{joiner}workflowType=machine_learning&searchFilter={counted}"


def test_the_experiment_description_lists_every_kr(published_cycle, client):
    published, status, experiments, runs = published_cycle
    okr = published.experiment_id
    best = ml_link(experiments["reco-a"], runs["ctr-best"])
    reco_ids = quote(f'["{experiments["reco-a"]}","{experiments["reco-b"]}"]', safe="")
    both_reco = counted_href(f"#/compare-experiments/s?experiments={reco_ids}", "f1", joiner="&")
    ctr_run, latency_run = published.kr_runs["ctr"], published.kr_runs["latency"]

    # `sync` wrote the descriptions; refreshing again with the same state writes nothing.
    assert mlflow_ui.refresh_ui_notes(client, published, status) is False

    board = client.get_experiment(okr).tags["mlflow.note.content"]
    lines = board.splitlines()
    assert lines[0] == "# OKRs 2026\\-Q4: grade 0.37"
    assert lines[2].startswith("2026-10-01 to 2026-12-31, 49% of the cycle elapsed;")
    assert lines[4] == "3 ● on-track · 1 ○ not-started"
    assert (
        "## [Improve \\*recommendation\\* relevance &lt;script&gt;alert\\(1\\)&lt;/script&gt;]"
        f"({ml_link(okr, published.objective_runs['reco'])})"
    ) in lines
    assert "product · owner reco\\_team · score **0.50**" in lines
    rows = [line for line in lines if line.startswith("| ") and "Status" not in line]
    assert rows == [
        f"| ● on-track | [**ctr**]({ml_link(okr, ctr_run)}) Raise CTR \\[from 5% to 8%\\] | 50% | "
        f"0.065 → 0.08 | [1]({counted_href('#/experiments/' + experiments['reco-a'] + '/runs', 'ctr')}) | "
        f"[run {runs['ctr-best'][:8]}]({best}) |",
        f"| ● on-track | [**f1**]({ml_link(okr, published.kr_runs['f1'])}) | 50% | 0.82 → 0.84 | "
        f"[3]({both_reco}) | [run {runs['ctr-best'][:8]}]({best}) |",
        f"| ● on-track | [**latency**]({ml_link(okr, latency_run)}) | 50% | 125 ms → 50 ms | "
        f"[1]({counted_href('#/experiments/' + experiments['serving'] + '/runs', 'latency')}) | "
        f"[run {runs['latency'][:8]}]({ml_link(experiments['serving'], runs['latency'])}) |",
        f"| ○ not-started | [**alerting\\-live**]({ml_link(okr, published.kr_runs['alerting-live'])}) | 0% | "
        "— → 1 | — | — |",
    ]
    assert "<script>" not in board


def test_a_kr_run_description_resolves_numbers_and_links_its_runs(published_cycle, client):
    published, status, experiments, runs = published_cycle

    ctr = client.get_run(published.kr_runs["ctr"]).data.tags["mlflow.note.content"]
    objective = ml_link(published.experiment_id, published.objective_runs["reco"])
    best = ml_link(experiments["reco-a"], runs["ctr-best"])
    assert ctr == "\n".join(
        [
            "## Raise CTR \\[from 5% to 8%\\]",
            "",
            "● on-track · progress **50%** · objective: [Improve \\*recommendation\\* relevance "
            f"&lt;script&gt;alert\\(1\\)&lt;/script&gt;]({objective})",
            "",
            "| | |",
            "|---|---|",
            "| Kind | metric KR |",
            "| Metric | `online_ctr`, best of the counted runs |",
            "| Direction | maximize (higher is better) |",
            "| Baseline | 0.05 |",
            "| Target | 0.08 |",
            "| Current | 0.065 |",
            "| Guardrails | `p99_latency_ms` ≤ 50 |",
            "| Guardrail breaches | 1 |",
            f"| Best run | [run {runs['ctr-best'][:8]}]({best}) |",
            "| Runs | [1 counted, 0 pending, 1 excluded]"
            f"({counted_href('#/experiments/' + experiments['reco-a'] + '/runs', 'ctr')}) |",
            "",
            "Counted runs match `` tags.`okr.kr.ctr` = 'counted' `` in MLflow's search\\.",
            "",
        ]
    )
    f1 = client.get_run(published.kr_runs["f1"]).data.tags["mlflow.note.content"].splitlines()
    assert "| Baseline | 0.8 (best `f1` of the runs matching `tags.role = 'baseline'` in reco\\-a) |" in f1
    assert "| Target | 0.84 (\\+5% on the baseline) |" in f1
    manual = client.get_run(published.kr_runs["alerting-live"]).data.tags["mlflow.note.content"]
    assert manual.splitlines()[2:] == [
        "○ not-started · progress **0%** · objective: "
        f"[Keep serving fast]({ml_link(published.experiment_id, published.objective_runs['serving'])})",
        "",
        "| | |",
        "|---|---|",
        "| Kind | manual KR |",
        "| Target | 1 |",
        "| Current | — |",
    ]


def test_refresh_writes_only_the_notes_whose_text_changed(published_cycle, client, tracking_uri):
    published, status, experiments, runs = published_cycle
    counter = WriteCounter(tracking_uri)

    assert mlflow_ui.refresh_ui_notes(client, published, status) is False  # sync wrote them
    assert counter.writes() == []

    latency_note = client.get_run(published.kr_runs["latency"]).data.tags["mlflow.note.content"]
    client.set_tag(published.kr_runs["latency"], "mlflow.note.content", "edited by hand")
    counter = WriteCounter(tracking_uri)
    assert mlflow_ui.refresh_ui_notes(client, published, status) is True
    assert counter.writes() == [("tags", "UPDATE")]
    assert client.get_run(published.kr_runs["latency"]).data.tags["mlflow.note.content"] == latency_note

    better = make_run(client, experiments["reco-a"], {"online_ctr": 0.074, "p99_latency_ms": 30})
    status = api.sync(tracking_uri, cycle="2026-Q4", now=NOW, check=True).status  # recomputed, not written
    counter = WriteCounter(tracking_uri)
    assert mlflow_ui.refresh_ui_notes(client, published, status) is True
    # The board, ctr's note (the new best run) and nothing else.
    assert sorted(counter.writes()) == [("experiment_tags", "UPDATE"), ("tags", "UPDATE")]
    ctr = client.get_run(published.kr_runs["ctr"]).data.tags["mlflow.note.content"]
    assert f"| Best run | [run {better[:8]}]({ml_link(experiments['reco-a'], better)}) |" in ctr.splitlines()
    assert "| Current | 0.074 |" in ctr.splitlines()
    assert client.get_run(published.kr_runs["latency"]).data.tags["mlflow.note.content"] == latency_note


def test_apply_writes_the_initial_notes(write_spec, client):
    apply_spec(client, load_spec(write_spec(SPEC)))  # publish only, no sync
    published = state.load_published(client, "2026-Q4")
    board = client.get_experiment(published.experiment_id).tags["mlflow.note.content"]
    for kr_id in ("ctr", "f1", "latency", "alerting\\-live"):
        assert f"[**{kr_id}**](" in board
    assert "4 ○ not-started" in board.splitlines()
    note = client.get_run(published.kr_runs["latency"]).data.tags["mlflow.note.content"]
    assert note.splitlines()[:3] == [
        "## latency",
        "",
        "○ not-started · progress **0%** · objective: "
        f"[Keep serving fast]({ml_link(published.experiment_id, published.objective_runs['serving'])})",
    ]


def test_escape_keeps_user_text_literal_in_code_and_bounds():
    assert mlflow_ui.code("tags.`a` = 'x'") == "`` tags.`a` = 'x' ``"
    assert mlflow_ui.code("val_f1") == "`val_f1`"


CYCLE = Cycle(name="2026-Q4", start=dt.date(2026, 10, 1), end=dt.date(2026, 12, 31))
DAY_MS = 86_400_000


def logged_steps(client, run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "okr.value")]


def test_kr_history_steps_are_days_of_the_cycle(client):
    experiment = client.create_experiment("okr/steps")
    run_id = client.create_run(experiment).info.run_id
    start = CYCLE.start_ms
    for timestamp, value in (
        (start - 1, 1.0),
        (start, 2.0),
        (start + DAY_MS - 1, 3.0),
        (start + 45 * DAY_MS + 12 * 3_600_000, 4.0),
        (CYCLE.end_ms, 5.0),
    ):
        state.log_kr_state(client, run_id, {"okr.value": value}, {}, CYCLE, timestamp_ms=timestamp)
    assert logged_steps(client, run_id) == [(0, 1.0), (1, 2.0), (1, 3.0), (46, 4.0), (92, 5.0)]
    assert client.get_run(run_id).data.metrics["okr.value"] == 5.0


def test_a_history_logged_with_larger_steps_keeps_its_latest_value(client):
    experiment = client.create_experiment("okr/legacy")
    run_id = client.create_run(experiment).info.run_id
    legacy_step = 45 * 86_400  # seconds since the cycle started, as mlflow-okr 0.1 logged it
    client.log_batch(
        run_id, metrics=[Metric("okr.value", 1.0, CYCLE.start_ms + legacy_step * 1000, legacy_step)]
    )
    stored = client.get_run(run_id)

    state.log_kr_state(
        client, run_id, {"okr.value": 2.0}, {}, CYCLE, timestamp_ms=CYCLE.end_ms, stored=stored
    )

    assert logged_steps(client, run_id) == [(legacy_step, 1.0), (legacy_step, 2.0)]
    assert client.get_run(run_id).data.metrics["okr.value"] == 2.0


def test_sync_keeps_the_experiment_description_listing_every_kr(runner, write_spec, client, tracking_uri):
    reco_a = client.create_experiment("reco-a")
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    published = state.load_published(client, "2026-Q4")
    best = make_run(client, reco_a, {"online_ctr": 0.071, "p99_latency_ms": 20})

    result = invoke(runner, "sync", "--as-of", "2026-11-15")

    assert result.exit_code == 0, result.output
    board = client.get_experiment(published.experiment_id).tags["mlflow.note.content"].splitlines()
    kr_rows = [line for line in board if line.startswith("| ") and "](" in line]
    rows = {line.split(" | ")[1].split("]")[0].strip("[*"): line for line in kr_rows}
    assert sorted(rows) == ["alerting\\-live", "ctr", "f1", "latency"]
    assert rows["ctr"].startswith("| ● on-track | ") and "| 70% | 0.071 → 0.08 |" in rows["ctr"]
    assert f"[run {best[:8]}]({ml_link(reco_a, best)})" in rows["ctr"]
    for kr_id in ("f1", "latency", "alerting\\-live"):
        assert rows[kr_id].startswith("| ○ not-started | ")
    note = client.get_run(published.kr_runs["ctr"]).data.tags["mlflow.note.content"].splitlines()
    assert "| Current | 0.071 |" in note


def test_sync_logs_kr_history_on_days_of_the_cycle(runner, write_spec, client, tracking_uri):
    reco_a = client.create_experiment("reco-a")
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    make_run(client, reco_a, {"online_ctr": 0.071, "p99_latency_ms": 20})
    assert invoke(runner, "sync").exit_code == 0
    published = state.load_published(client, "2026-Q4")

    (point,) = client.get_metric_history(published.kr_runs["ctr"], "okr.value")
    day = 0 if point.timestamp < CYCLE.start_ms else (point.timestamp - CYCLE.start_ms) // DAY_MS + 1
    assert (point.step, point.value) == (day, 0.071)


def test_a_kr_over_more_experiments_than_a_url_can_hold_gets_no_runs_table_link():
    counted = mlflow_ui.counted_filter("ctr")
    link = mlflow_ui.runs_table_link([str(i) for i in range(50)], counted)
    assert link.startswith("#/compare-experiments/s?")
    assert mlflow_ui.runs_table_link([str(i) for i in range(51)], counted) is None
