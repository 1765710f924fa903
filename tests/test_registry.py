"""KRs that follow a registry alias (`model: {name, alias}`): the run behind the alias, nothing else."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import api, vocabulary
from mlflow_okr.board.data import board_state
from mlflow_okr.errors import SpecError
from mlflow_okr.report import build_report, render
from mlflow_okr.spec import parse_spec
from tests.conftest import IN_CYCLE_MS, invoke, make_run, requires_okr_store
from tests.live_fixtures import wait_for
from tests.specs import objective, okrs_yaml, one_kr

AS_OF = ("--as-of", "2026-11-15")
NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
SPEC = okrs_yaml(
    objective(
        "ship",
        "{id: champion-auc, metric: auc, model: {name: screener, alias: champion}, baseline: 0.8, "
        "target: 0.9, guardrails: [{metric: latency_ms, max: 50}]}",
        title="Ship a better screening model",
        owner="ml",
    )
)


@pytest.fixture
def registered(client, runner, write_spec):
    """Three runs (the best one never registered), versions 1 and 2 of `screener`, the spec applied."""
    experiment_id = client.create_experiment("train")
    runs = {
        name: make_run(client, experiment_id, {"auc": auc, "latency_ms": 20}, start_time=IN_CYCLE_MS + index)
        for index, (name, auc) in enumerate([("v1", 0.85), ("v2", 0.88), ("unshipped", 0.99)])
    }
    client.create_registered_model("screener")
    for name in ("v1", "v2"):
        client.create_model_version("screener", f"runs:/{runs[name]}/model", run_id=runs[name])
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    return runs


def kr_json(runner) -> dict:
    result = invoke(runner, "status", "--format", "json", *AS_OF)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["objectives"][0]["key_results"][0]


def test_an_alias_that_does_not_exist_yet_is_not_started_with_that_reason(registered, runner):
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["status"], kr["current"], kr["counted_runs"]) == ("not-started", None, 0)
    assert kr["notes"] == ["alias screener@champion does not exist yet"]
    assert kr["model"] == {"name": "screener", "alias": "champion", "version": None, "run_id": None,
                           "promotions": []}


def test_the_kr_follows_the_alias_and_ignores_other_runs(registered, runner, client):
    client.set_registered_model_alias("screener", "champion", "1")
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["current"], kr["counted_runs"], kr["best_run_id"]) == (0.85, 1, registered["v1"])
    assert kr["progress"] == (0.85 - 0.8) / (0.9 - 0.8)
    assert kr["model"]["version"] == "1"

    client.set_registered_model_alias("screener", "champion", "2")
    result = invoke(runner, "sync", "--check", *AS_OF)
    assert result.exit_code == 1
    assert f"KR champion-auc: best_run_id stored '{registered['v1']}', recomputed '{registered['v2']}'" in (
        result.output
    )
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["current"], kr["best_run_id"]) == (0.88, registered["v2"])
    promotions = kr["model"]["promotions"]
    expected = [("1", registered["v1"]), ("2", registered["v2"])]
    assert [(p["version"], p["run_id"]) for p in promotions] == expected
    assert promotions[0]["when"] <= promotions[1]["when"]
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0

    client.delete_registered_model_alias("screener", "champion")
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["status"], kr["counted_runs"]) == ("not-started", 0)
    assert [p["version"] for p in kr["model"]["promotions"]] == ["1", "2", None]


def test_a_guardrail_still_holds_for_the_run_behind_the_alias(registered, runner, client):
    client.log_metric(registered["v2"], "latency_ms", 80)
    client.set_registered_model_alias("screener", "champion", "2")
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["counted_runs"], kr["excluded_runs"], kr["current"]) == (0, 1, None)
    assert kr["notes"][0].startswith("screener@champion: excluded: guardrail latency_ms")


def test_a_metric_logged_with_the_model_id_is_the_value(client, runner, write_spec):
    experiment_id = client.create_experiment("train")
    run_id = make_run(client, experiment_id, {"auc": 0.81, "latency_ms": 20})
    logged = client.create_logged_model(experiment_id, name="screener", source_run_id=run_id)
    client.log_metric(run_id, "auc", 0.87, model_id=logged.model_id)
    # Logged later, without the model: the run's latest auc, but not the registered model's.
    client.log_metric(run_id, "auc", 0.95)
    client.create_registered_model("screener")
    client.create_model_version("screener", f"models:/{logged.model_id}", run_id=run_id,
                                model_id=logged.model_id)
    client.set_registered_model_alias("screener", "champion", "1")
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["current"], kr["best_run_id"]) == (0.87, run_id)


def test_report_board_and_mlflow_ui_show_the_promotions(registered, runner, client, tracking_uri):
    for version in ("1", "2"):
        client.set_registered_model_alias("screener", "champion", version)
        assert invoke(runner, "sync", *AS_OF).exit_code == 0
    status = api.status(now=NOW)
    kr = status.find("champion-auc")

    markdown = render(build_report(client, now=NOW), "md")
    assert "- `champion-auc` follows `screener@champion`, now version 2" in markdown
    assert f"  - promoted: version 1 (run {registered['v1'][:8]}) on " in markdown
    assert f"  - promoted: version 2 (run {registered['v2'][:8]}) on " in markdown
    html = render(build_report(client, now=NOW), "html")
    assert "<code>screener@champion</code> · now version 2" in html

    board = board_state(tracking_uri, None, now=NOW)
    board_kr = board["status"]["objectives"][0]["key_results"][0]
    assert [p["version"] for p in board_kr["model"]["promotions"]] == ["1", "2"]

    note = client.get_run(kr.run_id).data.tags["mlflow.note.content"]
    assert "| Model | `screener@champion` → version 2 |" in note
    assert f"| Promotions | version 1 \\(run {registered['v1'][:8]}\\) on " in note
    assert "Counted runs match" not in note  # the alias picks the run, not run tags
    saved = json.loads(client.get_run(kr.run_id).data.tags[vocabulary.TAG_PROMOTIONS])
    assert [entry["version"] for entry in saved] == ["1", "2"]


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        ("        metric: auc\n        model: {name: m, alias: a}\n        filter: \"tags.x = 'y'\"\n"
         "        baseline: 1\n        target: 2\n",
         11, "a `model:` KR takes no filter: the alias picks the run"),
        ("        metric: auc\n        model: {name: m}\n        baseline: 1\n        target: 2\n",
         10, "missing required key 'alias'"),
        ("        source: manual\n        model: {name: m, alias: a}\n        target: 2\n",
         10, "a `source: manual` KR takes no model"),
    ],
)
def test_invalid_model_krs_name_file_and_line(lines, line, message):
    with pytest.raises(SpecError) as error:
        parse_spec(one_kr(lines), "okrs.yaml")
    [problem] = error.value.problems
    assert problem.startswith(f"okrs.yaml:{line}: ")
    assert message in problem


@requires_okr_store
def test_an_alias_move_through_the_okr_registry_moves_the_kr_live(registered, runner, tracking_uri):
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr_run_id = api.status(now=NOW).find("champion-auc").run_id
    okr_uri = f"okr+{tracking_uri}"
    okr_client = MlflowClient(tracking_uri=okr_uri, registry_uri=okr_uri)
    for version, run in (("1", "v1"), ("2", "v2")):
        okr_client.set_registered_model_alias("screener", "champion", version)

        def moved(run: str = run) -> bool:
            return okr_client.get_run(kr_run_id).data.tags.get(vocabulary.TAG_BEST_RUN) == registered[run]

        assert wait_for(moved)
    okr_client.delete_registered_model_alias("screener", "champion")
    assert wait_for(lambda: okr_client.get_run(kr_run_id).data.tags.get(vocabulary.TAG_COUNTED) == "0")
    promotions = json.loads(okr_client.get_run(kr_run_id).data.tags[vocabulary.TAG_PROMOTIONS])
    assert [entry["version"] for entry in promotions] == ["1", "2", None]
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0
