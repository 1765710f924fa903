"""The core commands end to end: status formats, checkin, nothing applied, okr+ URIs, help text."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.cli import cli
from tests.conftest import invoke, make_run

SPEC = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: serving
    title: Keep serving fast
    category: operational
    key_results:
      - id: latency
        title: Reduce p99 latency from 200 ms to 50 ms
        metric: p99_latency_ms
        unit: ms
        baseline: 200
        target: 50
      - id: alerting-live
        source: manual
        target: 1
"""
AS_OF = ("--as-of", "2026-11-15")


@dataclass
class Applied:
    """A store with SPEC applied and one run that takes latency to 125 ms (progress 0.5), synced."""

    run_id: str
    tracking_uri: str
    client: MlflowClient


@pytest.fixture(scope="module")
def applied_store(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> tuple[Path, str]:
    """Built once per module; each test gets its own copy of the store."""
    path = tmp_path_factory.mktemp("applied") / "mlflow.db"
    shutil.copyfile(sqlite_template, path)
    uri = f"sqlite:///{path}"
    spec_path = path.parent / "okrs.yaml"
    spec_path.write_text(SPEC, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(uri)
        run_id = make_run(client, client.create_experiment("serving"), {"p99_latency_ms": 125.0})
        runner = CliRunner()
        assert invoke(runner, "apply", str(spec_path)).exit_code == 0
        assert invoke(runner, "sync", *AS_OF).exit_code == 0
    return path, run_id


@pytest.fixture
def applied(applied_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Applied:
    template, run_id = applied_store
    path = tmp_path / "applied.db"
    shutil.copyfile(template, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return Applied(run_id=run_id, tracking_uri=uri, client=MlflowClient(uri))


def test_status_table(applied, runner):
    result = invoke(runner, "status", *AS_OF)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "Cycle 2026-Q4 (2026-10-01 .. 2026-12-31), 49% elapsed. "
        "Score 0.25 (0.7 is the conventional success grade)"
    )
    header = ["objective", "/", "KR", "status", "baseline", "current", "target", "progress", "runs"]
    assert lines[2].split() == header
    rows = {line.split()[0]: line for line in lines[4:]}
    assert rows["serving"].split()[1:] == ["score", "0.25"]
    assert rows["latency"].split() == [
        "latency", "●", "on-track", "200", "ms", "125", "ms", "50", "ms", "█████░░░░░", "50%", "1"
    ]
    assert rows["alerting-live"].split() == [
        "alerting-live", "○", "not-started", "0", "—", "1", "░░░░░░░░░░", "0%", "0"
    ]


def test_status_json(applied, runner):
    result = invoke(runner, "status", "--format", "json", *AS_OF)
    assert result.exit_code == 0
    payload = json.loads(result.output)
    assert payload["score"] == 0.25
    latency = payload["objectives"][0]["key_results"][0]
    assert {key: latency[key] for key in ("id", "kind", "metric", "baseline", "target", "direction")} == {
        "id": "latency", "kind": "metric", "metric": "p99_latency_ms",
        "baseline": 200.0, "target": 50.0, "direction": "minimize",
    }
    assert (latency["current"], latency["progress"], latency["status"]) == (125.0, 0.5, "on-track")
    assert (latency["counted_runs"], latency["best_run_id"]) == (1, applied.run_id)


def test_status_csv(applied, runner):
    result = invoke(runner, "status", "--format", "csv", *AS_OF)
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [row["kr"] for row in rows] == ["latency", "alerting-live"]
    assert rows[0]["objective"] == "serving"
    assert (rows[0]["current"], rows[0]["progress"], rows[0]["status"]) == ("125.0", "0.5", "on-track")
    assert rows[0]["best_run_id"] == applied.run_id
    assert (rows[1]["kind"], rows[1]["current"], rows[1]["status"]) == ("manual", "", "not-started")
    assert rows[0]["objective_score"] == "0.25"


def test_status_rejects_an_unknown_format(applied, runner):
    result = invoke(runner, "status", "--format", "xml")
    assert result.exit_code == 2
    assert "'xml' is not one of 'table', 'json', 'csv'" in result.output


def test_sync_says_what_it_wrote(applied, runner):
    """A new run's tags and its KR's new state are writes, not repairs; a second sync writes nothing."""
    experiment_id = applied.client.get_experiment_by_name("serving").experiment_id
    make_run(applied.client, experiment_id, {"p99_latency_ms": 80.0})
    result = invoke(runner, "sync", *AS_OF)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "Synced cycle 2026-Q4: 2 runs scanned. "
        "Wrote 5 KR state field(s) to okr/2026-Q4 and 3 okr.* tag(s) to source runs."
    )
    assert "repaired" not in result.output
    result = invoke(runner, "sync", *AS_OF)
    assert result.output.splitlines()[0] == (
        "Synced cycle 2026-Q4: 2 runs scanned. "
        "Nothing to write: the stored KR state and run tags were up to date."
    )


def test_checkin_records_a_manual_kr(applied, runner, monkeypatch):
    client = applied.client
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    result = invoke(runner, "checkin", "alerting-live", "1", "--note", "pager rota live")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Checked in alerting-live = 1 by alice at ")
    published = state.load_published(client, "2026-Q4")
    record = json.loads(client.get_run(published.kr_runs["alerting-live"]).data.tags[vocabulary.TAG_CHECKIN])
    assert (record["kr"], record["value"], record["who"], record["note"], record["count"]) == (
        "alerting-live", 1.0, "alice", "pager rota live", 1,
    )
    payload = json.loads(invoke(runner, "status", "--format", "json", *AS_OF).output)
    alerting = payload["objectives"][0]["key_results"][1]
    assert (alerting["current"], alerting["progress"], alerting["status"]) == (1.0, 1.0, "achieved")
    assert payload["score"] == 0.75

    second = invoke(runner, "checkin", "alerting-live", "0.5")
    assert second.exit_code == 0
    record = json.loads(client.get_run(published.kr_runs["alerting-live"]).data.tags[vocabulary.TAG_CHECKIN])
    assert (record["value"], record["count"]) == (0.5, 2)
    history = client.get_metric_history(published.kr_runs["alerting-live"], vocabulary.METRIC_VALUE)
    assert [metric.value for metric in history][-2:] == [1.0, 0.5]
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0


def test_checkin_on_a_metric_kr_is_bad_input(applied, runner):
    result = invoke(runner, "checkin", "latency", "100")
    assert result.exit_code == 2
    assert "KR 'latency' is a metric KR; only `source: manual` KRs take check-ins" in result.output


def test_checkin_on_an_unknown_kr_lists_the_known_ones(applied, runner):
    result = invoke(runner, "checkin", "uptime", "1")
    assert result.exit_code == 2
    assert "unknown KR 'uptime' in cycle 2026-Q4 (known: alerting-live, latency)" in result.output


def test_checkin_value_must_be_a_number(applied, runner):
    result = invoke(runner, "checkin", "alerting-live", "yes")
    assert result.exit_code == 2
    assert "'yes' is not a valid float" in result.output


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--format", "json"), ("sync",), ("sync", "--check"), ("checkin", "x", "1")],
)
def test_commands_on_a_backend_with_nothing_applied(tracking_uri, runner, args):
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert "no OKR cycle is published in this MLflow backend" in result.output
    assert "run `mlflow-okr apply okrs.yaml`" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_cycle_is_bad_input(applied, runner):
    result = invoke(runner, "status", "--cycle", "2025-Q1")
    assert result.exit_code == 2
    assert "cycle '2025-Q1' is not published in this MLflow backend" in result.output


def test_okr_prefixed_tracking_uri_is_accepted(applied, runner, monkeypatch):
    tracking_uri = applied.tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    result = invoke(runner, "status", "--format", "json", "--tracking-uri", "okr+" + tracking_uri, *AS_OF)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["score"] == 0.25
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "okr+" + tracking_uri)
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0


def _all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found += _all_commands(command, prefix + name + " ")
    return found


def test_every_command_has_help_text(runner):
    commands = _all_commands(cli)
    core = {"init", "validate", "schema", "apply", "sync", "status", "checkin"}
    assert core <= {name for name, _ in commands}
    for name, command in commands:
        assert command.help and command.help.strip(), f"{name} has no help text"
        result = invoke(runner, *name.split(), "--help")
        assert result.exit_code == 0, name
        first_line = command.help.strip().splitlines()[0]
        assert " ".join(first_line.split()) in " ".join(result.output.split()), name
    top = invoke(runner, "--help")
    for name in cli.commands:
        assert name in top.output


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "mlflow_okr", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Objectives and key results, tracked live in MLflow." in result.stdout
    assert "validate" in result.stdout and "checkin" in result.stdout


def test_an_unreadable_published_spec_is_bad_input_not_a_traceback(applied, runner):
    client = applied.client
    experiment = client.get_experiment_by_name("okr/2026-Q4")
    client.set_experiment_tag(experiment.experiment_id, "okr.spec.0", "{not json")
    result = invoke(runner, "status")
    assert result.exit_code == 2
    assert "the spec stored in experiment 'okr/2026-Q4' cannot be read" in result.output
    assert "publish it again with `mlflow-okr apply okrs.yaml`" in result.output


def test_a_hand_edited_checkin_tag_does_not_block_sync_or_checkin(applied, runner):
    client = applied.client
    kr_run = state.load_published(client, "2026-Q4").kr_runs["alerting-live"]
    client.set_tag(kr_run, vocabulary.TAG_CHECKIN, "done!")
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    result = invoke(runner, "checkin", "alerting-live", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(client.get_run(kr_run).data.tags[vocabulary.TAG_CHECKIN])["count"] == 1


def test_a_deleted_kr_run_is_drift_that_apply_repairs(applied, runner, tmp_path):
    client = applied.client
    client.delete_run(state.load_published(client, "2026-Q4").kr_runs["latency"])
    drifted = invoke(runner, "sync", "--check", *AS_OF)
    assert drifted.exit_code == 1
    assert "KR latency: run stored None, recomputed 'a KR run; run `mlflow-okr apply` to recreate it'" in (
        drifted.output
    )
    spec_path = tmp_path / "okrs.yaml"
    spec_path.write_text(SPEC, encoding="utf-8")
    result = invoke(runner, "apply", str(spec_path))
    assert ("create" in result.output) and "latency" in result.output
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0
