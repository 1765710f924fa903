"""Dataset-pinned KRs (`dataset: {name, digest?}`): only values logged against that dataset count."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mlflow_okr.board.data import board_state
from mlflow_okr.errors import SpecError
from mlflow_okr.report import build_report, render
from mlflow_okr.spec import parse_spec
from tests.conftest import IN_CYCLE_MS, invoke, make_run
from tests.specs import objective, okrs_yaml, one_kr

AS_OF = ("--as-of", "2026-11-15")
NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
SPEC = okrs_yaml(
    objective(
        "screen",
        "{id: clinic-auc, metric: auc, dataset: {name: clinic-holdout}, experiments: [train], "
        "baseline: 0.8, target: 0.9}",
        title="Screen better on the held-out clinic data",
        owner="ml",
    )
)


def log_model_metric(client, experiment_id: str, run_id: str, value: float, dataset: str, digest: str,
                     step: int = 0) -> None:
    """`auc` logged with a logged model of the run, against one dataset version."""
    model = client.create_logged_model(experiment_id, name="screener", source_run_id=run_id)
    client.log_metric(run_id, "auc", value, step=step, model_id=model.model_id,
                      dataset_name=dataset, dataset_digest=digest)


def kr_json(runner) -> dict:
    result = invoke(runner, "status", "--format", "json", *AS_OF)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["objectives"][0]["key_results"][0]


@pytest.fixture
def experiment_id(client) -> str:
    return client.create_experiment("train")


def test_only_values_for_the_dataset_count(client, runner, write_spec, experiment_id):
    pinned = make_run(client, experiment_id, status=None, start_time=IN_CYCLE_MS)
    log_model_metric(client, experiment_id, pinned, 0.86, "clinic-holdout", "d1")
    client.set_terminated(pinned)
    elsewhere = make_run(client, experiment_id, status=None, start_time=IN_CYCLE_MS + 1)
    log_model_metric(client, experiment_id, elsewhere, 0.99, "public-benchmark", "p1")  # wrong data
    client.set_terminated(elsewhere)
    make_run(client, experiment_id, {"auc": 0.97}, start_time=IN_CYCLE_MS + 2)  # no dataset at all
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["current"], kr["counted_runs"], kr["best_run_id"]) == (0.86, 1, pinned)
    assert kr["excluded_runs"] == 2
    tags = client.get_run(elsewhere).data.tags
    reason = "auc logged only for dataset public-benchmark, not clinic-holdout"
    assert tags["okr.kr.clinic-auc"] == f"excluded: {reason}"
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0


def test_the_latest_value_for_the_dataset_is_the_runs(client, runner, write_spec, experiment_id):
    run_id = make_run(client, experiment_id, status=None)
    log_model_metric(client, experiment_id, run_id, 0.83, "clinic-holdout", "d1", step=0)
    log_model_metric(client, experiment_id, run_id, 0.88, "clinic-holdout", "d1", step=1)
    log_model_metric(client, experiment_id, run_id, 0.95, "public-benchmark", "p1", step=2)  # run's latest
    client.set_terminated(run_id)
    assert client.get_run(run_id).data.metrics["auc"] == 0.95
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    assert kr_json(runner)["current"] == 0.88


def test_a_new_digest_says_evaluation_data_changed(client, runner, write_spec, experiment_id, tracking_uri):
    for index, (value, digest) in enumerate([(0.84, "aaaa1111"), (0.86, "bbbb2222")]):
        run_id = make_run(client, experiment_id, status=None, start_time=IN_CYCLE_MS + index)
        log_model_metric(client, experiment_id, run_id, value, "clinic-holdout", digest)
        client.set_terminated(run_id)
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    note = "evaluation data changed: dataset clinic-holdout has 2 digests (aaaa1111, bbbb2222)"
    assert kr["notes"] == [note]
    assert kr["current"] == 0.86
    assert f"- `clinic-auc`: {note}" in render(build_report(client, now=NOW), "md")
    board = board_state(tracking_uri, None, now=NOW)
    assert board["status"]["objectives"][0]["key_results"][0]["notes"] == [note]

    pinned = SPEC.replace("{name: clinic-holdout}", "{name: clinic-holdout, digest: aaaa1111}")
    assert invoke(runner, "apply", str(write_spec(pinned))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr = kr_json(runner)
    assert (kr["current"], kr["counted_runs"], kr["notes"]) == (0.84, 1, [])


def test_a_dataset_on_a_manual_kr_is_an_error_with_file_and_line():
    text = one_kr("        source: manual\n        dataset: {name: d}\n        target: 1\n")
    with pytest.raises(SpecError) as error:
        parse_spec(text, "okrs.yaml")
    assert error.value.problems == [
        "okrs.yaml:10: objectives[0].key_results[0].dataset: a `source: manual` KR takes no dataset"
    ]
