"""apply: publish okrs.yaml as okr/<cycle>; idempotent; updates, adds, retires and restores KRs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mlflow_okr import state, vocabulary
from mlflow_okr.spec import load_spec
from tests.conftest import invoke

SPEC = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Improve recommendation relevance
    category: product
    key_results:
      - id: ctr
        title: Raise CTR from 5% to 8%
        metric: online_ctr
        baseline: 0.05
        target: 0.08
      - id: csat
        metric: csat
        maintain: {min: 4.5}
  - id: serving
    title: Keep serving fast
    category: operational
    key_results:
      - id: latency
        metric: p99_latency_ms
        baseline: 200
        target: 50
      - id: alerting-live
        source: manual
        target: 1
"""

# ctr gets a new target, csat is dropped, recall is new.
CHANGED = SPEC.replace("target: 0.08", "target: 0.09").replace(
    "      - id: csat\n        metric: csat\n        maintain: {min: 4.5}\n",
    "      - id: recall\n        metric: recall\n        baseline: 0.6\n        target: 0.8\n",
)

WRITE_TABLES = ("runs", "tags", "metrics", "latest_metrics", "params", "experiments", "experiment_tags")


class WriteCounter:
    """Counts every row written to MLflow's tables, with SQLite triggers on the test's store."""

    def __init__(self, tracking_uri: str):
        self.path = tracking_uri.removeprefix("sqlite:///")
        with sqlite3.connect(self.path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS okr_test_writes (tbl TEXT, op TEXT)")
            db.execute("DELETE FROM okr_test_writes")
            for table in WRITE_TABLES:
                for op in ("INSERT", "UPDATE", "DELETE"):
                    db.execute(
                        f"CREATE TRIGGER IF NOT EXISTS okr_count_{table}_{op} AFTER {op} ON {table} "
                        f"BEGIN INSERT INTO okr_test_writes VALUES ('{table}', '{op}'); END"
                    )

    def writes(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.path) as db:
            return db.execute("SELECT tbl, op FROM okr_test_writes").fetchall()


def cycle_runs(client) -> dict[str, object]:
    """The runs of okr/2026-Q4 by objective or KR id."""
    experiment = client.get_experiment_by_name("okr/2026-Q4")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_id = {}
    for run in runs:
        tags = run.data.tags
        if tags[vocabulary.TAG_ROLE] == "kr":
            by_id[tags[vocabulary.TAG_KR_ID]] = run
        else:
            by_id["objective:" + tags[vocabulary.TAG_OBJECTIVE_ID]] = run
    return by_id


def snapshot(client) -> dict[str, tuple]:
    """Run id, tags and latest metrics of every run of okr/2026-Q4."""
    runs = cycle_runs(client)
    return {key: (run.info.run_id, run.data.tags, run.data.metrics) for key, run in runs.items()}


def plan_lines(output: str) -> list[tuple[str, str, str]]:
    """(action, kind, id) of each plan line that apply printed."""
    lines = []
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) >= 3 and parts[1] in ("cycle", "objective", "kr"):
            lines.append((parts[0], parts[1], parts[2]))
    return lines


def test_apply_publishes_objectives_and_krs(runner, write_spec, client):
    path = write_spec(SPEC)
    result = invoke(runner, "apply", str(path))
    assert result.exit_code == 0, result.output
    assert "to experiment okr/2026-Q4: 7 change(s)." in result.output
    assert plan_lines(result.output) == [
        ("create", "cycle", "2026-Q4"),
        ("create", "objective", "reco"),
        ("create", "kr", "ctr"),
        ("create", "kr", "csat"),
        ("create", "objective", "serving"),
        ("create", "kr", "latency"),
        ("create", "kr", "alerting-live"),
    ]
    runs = cycle_runs(client)
    assert set(runs) == {"objective:reco", "objective:serving", "ctr", "csat", "latency", "alerting-live"}
    spec = load_spec(path)
    parents = {"ctr": "reco", "csat": "reco", "latency": "serving", "alerting-live": "serving"}
    for kr_id, objective_id in parents.items():
        tags = runs[kr_id].data.tags
        assert tags[vocabulary.TAG_ROLE] == "kr"
        assert tags[vocabulary.TAG_KR_ID] == kr_id
        assert tags[vocabulary.TAG_OBJECTIVE_ID] == objective_id
        assert json.loads(tags[vocabulary.TAG_KR_DEFINITION]) == json.loads(
            state.kr_definition(spec.find_key_result(kr_id))
        )
        assert tags["mlflow.parentRunId"] == runs["objective:" + objective_id].info.run_id
        assert runs[kr_id].info.run_name == kr_id
    assert json.loads(runs["ctr"].data.tags[vocabulary.TAG_KR_DEFINITION])["target"] == 0.08
    assert runs["csat"].data.tags["okr.kr.kind"] == "maintain"
    assert runs["objective:serving"].data.tags["okr.objective.category"] == "operational"
    assert runs["objective:reco"].data.tags[vocabulary.TAG_ROLE] == "objective"
    experiment = client.get_experiment_by_name("okr/2026-Q4")
    assert experiment.tags[vocabulary.TAG_SPEC_HASH] == state.spec_hash(spec)
    assert experiment.tags["okr.cycle.start"] == "2026-10-01"
    published = state.load_published(client, "2026-Q4")
    assert published.spec == spec
    assert published.kr_runs == {kr_id: runs[kr_id].info.run_id for kr_id in parents}


def test_applying_the_same_file_twice_changes_nothing(runner, write_spec, client, tracking_uri):
    path = write_spec(SPEC)
    assert invoke(runner, "apply", str(path)).exit_code == 0
    before = snapshot(client)
    counter = WriteCounter(tracking_uri)

    again = invoke(runner, "apply", str(path))

    assert again.exit_code == 0, again.output
    assert "0 change(s)." in again.output
    assert plan_lines(again.output) == []
    assert counter.writes() == []
    assert snapshot(client) == before


def test_a_changed_file_updates_adds_and_retires(runner, write_spec, client):
    path = write_spec(SPEC)
    assert invoke(runner, "apply", str(path)).exit_code == 0
    first = cycle_runs(client)

    changed = write_spec(CHANGED, "changed.yaml")
    result = invoke(runner, "apply", str(changed))

    assert result.exit_code == 0, result.output
    assert sorted(plan_lines(result.output)) == sorted(
        [
            ("update", "kr", "ctr"),
            ("create", "kr", "recall"),
            ("retire", "kr", "csat"),
            ("update", "cycle", "2026-Q4"),
        ]
    )
    assert "retire    kr        csat  (no longer in the spec; kept, not deleted)" in result.output
    runs = cycle_runs(client)
    assert runs["ctr"].info.run_id == first["ctr"].info.run_id
    assert json.loads(runs["ctr"].data.tags[vocabulary.TAG_KR_DEFINITION])["target"] == 0.09
    assert runs["recall"].data.tags["mlflow.parentRunId"] == first["objective:reco"].info.run_id
    retired = client.get_run(first["csat"].info.run_id)
    assert retired.info.lifecycle_stage == "active"
    assert retired.data.tags[vocabulary.TAG_RETIRED] == "true"
    assert retired.data.tags[vocabulary.TAG_STATUS] == "retired"
    published = state.load_published(client, "2026-Q4")
    assert "csat" not in published.kr_runs
    assert published.retired_kr_runs == {"csat": first["csat"].info.run_id}
    assert published.spec.find_key_result("ctr").target == 0.09

    assert "0 change(s)." in invoke(runner, "apply", str(changed)).output


def test_re_adding_a_kr_restores_its_run(runner, write_spec, client):
    path = write_spec(SPEC)
    invoke(runner, "apply", str(path))
    csat_run = cycle_runs(client)["csat"].info.run_id
    invoke(runner, "apply", str(write_spec(CHANGED, "changed.yaml")))

    result = invoke(runner, "apply", str(path))

    assert result.exit_code == 0, result.output
    assert ("restore", "kr", "csat") in plan_lines(result.output)
    assert ("retire", "kr", "recall") in plan_lines(result.output)
    runs = cycle_runs(client)
    assert runs["csat"].info.run_id == csat_run
    assert runs["csat"].data.tags[vocabulary.TAG_RETIRED] == "false"
    assert runs["csat"].data.tags[vocabulary.TAG_STATUS] != "retired"
    assert state.load_published(client, "2026-Q4").kr_runs["csat"] == csat_run


def test_a_dropped_objective_is_retired_and_restored(runner, write_spec, client):
    path = write_spec(SPEC)
    invoke(runner, "apply", str(path))
    without_serving = SPEC.split("  - id: serving")[0]
    result = invoke(runner, "apply", str(write_spec(without_serving, "small.yaml")))
    retired = {
        ("retire", "objective", "serving"),
        ("retire", "kr", "latency"),
        ("retire", "kr", "alerting-live"),
    }
    assert retired <= set(plan_lines(result.output))
    assert cycle_runs(client)["objective:serving"].data.tags[vocabulary.TAG_RETIRED] == "true"

    result = invoke(runner, "apply", str(path))
    assert ("restore", "objective", "serving") in plan_lines(result.output)
    serving = cycle_runs(client)["objective:serving"].data.tags
    assert serving[vocabulary.TAG_RETIRED] == "false"
    assert serving.get(vocabulary.TAG_STATUS) != "retired"
    assert "0 change(s)." in invoke(runner, "apply", str(path)).output


def test_dry_run_prints_the_plan_and_writes_nothing(runner, write_spec, client, tracking_uri):
    path = write_spec(SPEC)
    counter = WriteCounter(tracking_uri)
    result = invoke(runner, "apply", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Would apply {path} to experiment okr/2026-Q4: 7 change(s).")
    assert ("create", "kr", "latency") in plan_lines(result.output)
    assert counter.writes() == []
    assert client.get_experiment_by_name("okr/2026-Q4") is None

    invoke(runner, "apply", str(path))
    before = {key: run.data.tags for key, run in cycle_runs(client).items()}
    counter = WriteCounter(tracking_uri)
    result = invoke(runner, "apply", str(write_spec(CHANGED, "changed.yaml")), "--dry-run")
    assert "Would apply" in result.output and "4 change(s)" in result.output
    assert ("retire", "kr", "csat") in plan_lines(result.output)
    assert counter.writes() == []
    assert {key: run.data.tags for key, run in cycle_runs(client).items()} == before


def test_apply_rejects_a_bad_file_with_exit_2(runner, write_spec, client):
    result = invoke(runner, "apply", str(write_spec(SPEC.replace("target: 0.08", "targt: 0.08"))))
    assert result.exit_code == 2
    assert "did you mean 'target'?" in result.output
    assert client.get_experiment_by_name("okr/2026-Q4") is None


def test_apply_on_a_deleted_cycle_experiment_says_how_to_recover(runner, write_spec, client):
    experiment_id = client.create_experiment("okr/2026-Q4")
    client.delete_experiment(experiment_id)
    result = invoke(runner, "apply", str(write_spec(SPEC)))
    assert result.exit_code == 2
    assert "experiment 'okr/2026-Q4' is deleted; restore it" in result.output


def test_the_python_api_returns_the_plan(write_spec, tracking_uri):
    import mlflow_okr

    plan = mlflow_okr.apply_spec(Path(write_spec(SPEC)), dry_run=True)
    assert plan.dry_run and plan.experiment == "okr/2026-Q4"
    assert [(s.action, s.kind, s.id) for s in plan.changes][:3] == [
        ("create", "cycle", "2026-Q4"),
        ("create", "objective", "reco"),
        ("create", "kr", "ctr"),
    ]


def test_moving_a_kr_to_another_objective_updates_its_parent(runner, write_spec, client):
    invoke(runner, "apply", str(write_spec(SPEC)))
    first = cycle_runs(client)
    csat = "      - id: csat\n        metric: csat\n        maintain: {min: 4.5}\n"
    moved = SPEC.replace(csat, "") + csat
    result = invoke(runner, "apply", str(write_spec(moved, "moved.yaml")))
    assert ("update", "kr", "csat") in plan_lines(result.output)
    runs = cycle_runs(client)
    assert runs["csat"].info.run_id == first["csat"].info.run_id
    assert runs["csat"].data.tags["mlflow.parentRunId"] == first["objective:serving"].info.run_id
    assert runs["csat"].data.tags[vocabulary.TAG_OBJECTIVE_ID] == "serving"
    assert state.load_published(client, "2026-Q4").objective_of("csat").id == "serving"
