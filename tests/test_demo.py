"""The demo end to end on a real SQLite store, the examples, and the README's set-up commands."""

from __future__ import annotations

import datetime as dt
import json
import runpy
import shutil
import sys
from pathlib import Path

import click
import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from mlflow_okr import demo, load_spec, parse_spec
from mlflow_okr.cli import cli
from mlflow_okr.templates import starter_spec
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE_SPEC = ROOT / "examples" / "okrs.yaml"
SCREENING_RUNS = 5


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """Run `mlflow-okr demo --dir DIR` once for the module; return (directory, CLI result, client)."""
    directory = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(directory)], catch_exceptions=False)
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    return directory, result, client


def runs_by_name(client: MlflowClient, experiment_name: str) -> dict[str, object]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"missing experiment {experiment_name}"
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_demo_prints_status_and_ui_command(demo_run):
    directory, result, _ = demo_run
    assert result.exit_code == 0, result.output
    assert (directory / "mlflow.db").is_file() and (directory / "okrs.yaml").is_file()
    assert f"mlflow ui --backend-store-uri sqlite:///{directory.resolve()}/mlflow.db" in result.output
    for line in ("objective / KR", "trusted-screening", "fast-serving", "forecast-research", "alerting-live"):
        assert line in result.output


def test_demo_prints_effort_and_a_review(demo_run):
    _, result, client = demo_run
    lines = result.output.splitlines()
    effort = next(index for index, line in enumerate(lines) if line.startswith("Effort in "))
    # The recall KR's runs are its counted runs, all logged by this process's user a moment ago.
    recall = next(line for line in lines[effort:] if line.split()[:1] == ["recall"])
    counted = status_json(client)["objectives"][0]["key_results"][0]
    assert counted["id"] == "recall"
    assert recall.split()[1:4] == [str(counted["counted_runs"]), "1", "<0.1"]
    assert any(line.startswith("Unaligned (count for no KR): ") for line in lines)
    assert any(line.startswith("# Weekly review: ") for line in lines)
    # Every value the demo recorded is new this week: each metric KR shows its first value.
    assert any(line.startswith("| `recall` |") and "first value" in line for line in lines)


def test_demo_spec_has_every_category_and_kind():
    spec = parse_spec(demo.demo_spec("2026-Q4"), "demo okrs.yaml")
    assert {objective.category for objective in spec.objectives} == {"product", "operational", "research"}
    krs = {kr.id: kr for _, kr in spec.key_results()}
    assert {kr.kind for kr in krs.values()} == {"metric", "maintain", "manual", "ledger", "traces"}
    assert isinstance(krs["f1-vs-first-model"].target, str) and isinstance(krs["forecast-mae"].target, str)
    assert krs["p99-latency"].resolve(10)[1] == "minimize"
    assert krs["recall"].guardrails and krs["p99-latency"].filter


def test_demo_cycle_is_the_current_quarter(demo_run):
    directory, _, _ = demo_run
    assert load_spec(directory / "okrs.yaml").cycle.name == demo.current_quarter()
    assert demo.current_quarter(dt.date(2026, 2, 28)) == "2026-Q1"
    assert demo.current_quarter(dt.date(2026, 12, 31)) == "2026-Q4"


def test_okr_experiment_has_one_run_per_kr_and_objective(demo_run):
    directory, _, client = demo_run
    spec = load_spec(directory / "okrs.yaml")
    experiment = client.get_experiment_by_name(f"okr/{spec.cycle.name}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    kr_runs = sorted(run.data.tags["okr.kr.id"] for run in runs if run.data.tags.get("okr.role") == "kr")
    objective_runs = sorted(
        run.data.tags["okr.objective.id"] for run in runs if run.data.tags.get("okr.role") == "objective"
    )
    assert kr_runs == sorted(kr.id for _, kr in spec.key_results())
    assert objective_runs == ["fast-serving", "forecast-research", "trusted-screening"]
    assert len(runs) == len(kr_runs) + len(objective_runs)
    by_kr = {run.data.tags["okr.kr.id"]: run for run in runs if run.data.tags.get("okr.role") == "kr"}
    assert set(by_kr["recall"].data.metrics) >= {"okr.value", "okr.progress", "okr.score"}


def test_training_runs_carry_okr_tags(demo_run):
    directory, _, client = demo_run
    cycle = load_spec(directory / "okrs.yaml").cycle.name
    screening = runs_by_name(client, "demo-screening")
    assert len(screening) == SCREENING_RUNS
    for run in screening.values():
        tags = run.data.tags
        assert tags["okr.cycle"] == cycle
        assert tags["okr.kr.f1-vs-first-model"] == "counted"  # no guardrails on this KR
        assert "f1-vs-first-model" in tags["okr.krs"].split(",")
        assert "okr.kr.reader-accuracy" not in tags  # another experiment's KR
    chasing_recall = screening["logistic-regression-threshold-0.3"].data
    assert chasing_recall.metrics["val_precision"] < 0.95
    assert chasing_recall.tags["okr.kr.recall"].startswith("excluded: guardrail val_precision")
    assert "recall" not in chasing_recall.tags["okr.krs"].split(",")
    assert "okr.kr.p99-latency" not in chasing_recall.tags  # stage=experiment is outside the filter
    baseline = screening["logistic-regression"].data.tags
    assert baseline["okr.kr.p99-latency"] == "counted"
    digits = runs_by_name(client, "demo-digits")
    for run in digits.values():
        assert run.data.tags["okr.kr.reader-accuracy"] == "counted"
    counted = client.search_runs(
        [client.get_experiment_by_name("demo-forecast").experiment_id],
        filter_string="tags.`okr.kr.forecast-mae` = 'counted'",
    )
    assert len(counted) == 3
    # The latency KR is about the served classifiers: the diabetes regression models are not in it.
    for run in runs_by_name(client, "demo-forecast").values():
        assert "okr.kr.p99-latency" not in run.data.tags
        assert "p99-latency" not in run.data.tags["okr.krs"].split(",")
    study = runs_by_name(client, demo.STUDY_EXPERIMENT)
    assert sorted(study) == sorted(
        f"{model}-fold-{fold}" for model in ("linear-regression", "random-forest") for fold in range(5)
    )
    for run in study.values():
        assert "okr.kr.forecast-mae" not in run.data.tags  # the study's folds are evidence, not candidates


def test_demo_tests_a_hypothesis_with_control_and_treatment_runs(demo_run):
    directory, result, client = demo_run
    from mlflow_okr import ledger

    uri = client.tracking_uri
    hypothesis = ledger.get_hypothesis(demo.HYPOTHESIS_ID, uri)
    study = runs_by_name(client, demo.STUDY_EXPERIMENT)
    control = sorted(run.info.run_id for name, run in study.items() if name.startswith("linear-regression"))
    treatment = sorted(run.info.run_id for name, run in study.items() if name.startswith("random-forest"))
    assert sorted(hypothesis.arm_runs("control")) == control and len(control) == demo.STUDY_FOLDS
    assert sorted(hypothesis.arm_runs("treatment")) == treatment and len(treatment) == demo.STUDY_FOLDS
    assert (hypothesis.kr, hypothesis.metric) == ("forecast-mae", "val_mae")
    assert hypothesis.owner == "research-team"
    assert hypothesis.status == "inconclusive"
    assert hypothesis.learning == "The folds disagree: more data is needed before choosing a model family."
    mae = {run.info.run_id: run.data.metrics["val_mae"] for run in study.values()}
    effect = sum(mae[r] for r in treatment) / 5 - sum(mae[r] for r in control) / 5
    assert hypothesis.evaluation["effect"] == pytest.approx(effect, rel=1e-12)
    assert hypothesis.evaluation["suggested_verdict"] == "inconclusive"
    shown_id = demo.HYPOTHESIS_ID
    line = f"  {shown_id}: inconclusive, 5 folds per arm (mlflow-okr ledger show {shown_id})"
    assert line in result.output.splitlines()
    assert "20 training runs" in result.output

    report = invoke(CliRunner(), "report", "--format", "json", "--tracking-uri", uri)
    assert report.exit_code == 0, report.output
    (shown,) = json.loads(report.output)["ledger"]
    assert (shown["id"], shown["status"], shown["control_runs"], shown["treatment_runs"]) == (
        demo.HYPOTHESIS_ID, "inconclusive", 5, 5
    )
    assert shown["effect_size"] == pytest.approx(effect, rel=1e-12)


def status_json(client: MlflowClient) -> dict:
    result = invoke(CliRunner(), "status", "--format", "json", "--tracking-uri", client.tracking_uri)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_status_values_come_from_the_logged_runs(demo_run):
    _, _, client = demo_run
    status = status_json(client)
    krs = {kr["id"]: kr for objective in status["objectives"] for kr in objective["key_results"]}
    for kr in krs.values():
        assert 0.0 <= kr["progress"] <= 1.0
        if kr["kind"] in ("metric", "maintain"):
            assert kr["counted_runs"] > 0, kr
    assert 0.0 <= status["score"] <= 1.0 and 0.0 < status["cycle"]["elapsed"] <= 1.0

    forecast = runs_by_name(client, "demo-forecast")
    linear_mae = forecast["linear-regression"].data.metrics["val_mae"]
    best_mae = min(run.data.metrics["val_mae"] for run in forecast.values())
    mae = krs["forecast-mae"]
    assert mae["baseline"] == pytest.approx(linear_mae)
    assert mae["target"] == pytest.approx(linear_mae * 0.9)
    assert mae["direction"] == "minimize" and mae["counted_runs"] == 3
    latency = krs["p99-latency"]
    classifier_runs = 4 + 2  # stage=candidate in demo-screening and demo-digits
    assert latency["counted_runs"] == classifier_runs and latency["unit"] == "ms"
    best = client.get_run(latency["best_run_id"])
    assert client.get_experiment(best.info.experiment_id).name in ("demo-screening", "demo-digits")
    assert mae["current"] == pytest.approx(best_mae)
    expected_progress = (best_mae - linear_mae) / (linear_mae * 0.9 - linear_mae)
    assert mae["progress"] == pytest.approx(expected_progress, rel=1e-12)

    reader = krs["reader-accuracy"]
    digits = runs_by_name(client, "demo-digits").values()
    digits_accuracy = [run.data.metrics["val_accuracy"] for run in digits]
    assert reader["current"] == pytest.approx(min(digits_accuracy))
    assert reader["progress"] == 1.0 and reader["status"] == "achieved"

    alerting = krs["alerting-live"]
    assert (alerting["kind"], alerting["current"], alerting["progress"], alerting["status"]) == (
        "manual", 1.0, 1.0, "achieved"
    )
    objective_scores = {objective["id"]: objective["score"] for objective in status["objectives"]}
    assert status["score"] == sum(objective_scores.values()) / 3


def test_demo_leaves_no_drift(demo_run):
    _, _, client = demo_run
    result = invoke(CliRunner(), "sync", "--check", "--tracking-uri", client.tracking_uri)
    assert result.exit_code == 0, result.output
    assert "No drift" in result.output


def test_demo_refuses_to_overwrite_without_force(demo_run):
    directory, _, client = demo_run
    before = len(client.search_runs([client.get_experiment_by_name("demo-screening").experiment_id]))
    result = CliRunner().invoke(cli, ["demo", "--dir", str(directory)])
    assert result.exit_code == 2
    assert "already has mlflow.db and okrs.yaml" in result.output and "--force" in result.output
    after = len(client.search_runs([client.get_experiment_by_name("demo-screening").experiment_id]))
    assert before == after == SCREENING_RUNS


def test_demo_refuses_a_users_own_okrs_yaml(tmp_path: Path):
    (tmp_path / "okrs.yaml").write_text("version: 1\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "already has okrs.yaml" in result.output
    assert (tmp_path / "okrs.yaml").read_text(encoding="utf-8") == "version: 1\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_force_allows_replacing_an_earlier_demo(tmp_path: Path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    with pytest.raises(demo.InputError, match="let it replace them, or choose another directory"):
        demo.check_directory(tmp_path, force=False)
    demo.check_directory(tmp_path, force=True)  # no error: --force replaces
    demo.check_directory(tmp_path / "new", force=False)  # a directory that does not exist yet is fine


def test_demo_refuses_a_file_as_directory(tmp_path: Path):
    target = tmp_path / "not-a-dir"
    target.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(target)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_example_spec_validates_and_uses_every_kind(runner: CliRunner):
    result = invoke(runner, "validate", str(EXAMPLE_SPEC))
    assert result.exit_code == 0, result.output
    assert "3 objectives, 7 key results" in result.output
    spec = load_spec(EXAMPLE_SPEC)
    assert {kr.kind for _, kr in spec.key_results()} == {"metric", "maintain", "ledger", "manual"}


def test_example_training_script_logs_to_the_tracking_uri(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
):
    script = ROOT / "examples" / "train.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--experiment", "forecast-test", "--n-estimators", "20"])
    runpy.run_path(str(script), run_name="__main__")
    runs = client.search_runs([client.get_experiment_by_name("forecast-test").experiment_id])
    assert len(runs) == 1
    assert set(runs[0].data.metrics) >= {"mape", "p99_latency_ms"} and runs[0].data.metrics["mape"] > 0
    assert runs[0].data.params["n_estimators"] == "20"


def test_example_training_script_runs_from_any_directory(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(sqlite_template, elsewhere / "store.db")
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    script = ROOT / "examples" / "train.py"
    argv = ["--tracking-uri", "sqlite:///store.db", "--experiment", "anywhere", "--n-estimators", "5"]
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        mlflow.set_tracking_uri(None)
    store_uri = f"sqlite:///{elsewhere / 'store.db'}"
    assert capsys.readouterr().out.splitlines()[0] == f"Logging to {store_uri}"
    client = MlflowClient(store_uri)
    runs = client.search_runs([client.get_experiment_by_name("anywhere").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["n_estimators"] == "5"
    assert "tracking_uri" not in runs[0].data.params


def test_example_training_script_needs_an_explicit_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    script = ROOT / "examples" / "train.py"
    monkeypatch.setattr(sys, "argv", [str(script)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code == 2
    assert "error: no MLflow store: pass --tracking-uri" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The README's set-up works as written (the CLI reference and the site: tests/test_docs.py).


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def all_commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((" ".join((*path, name)), command))
        if isinstance(command, click.Group):
            found += all_commands(command, (*path, name))
    return found


def test_every_command_has_help_text():
    missing = [name for name, command in all_commands() if not (command.help or "").strip()]
    assert not missing, f"commands without help text: {missing}"


def test_readme_commands_work_as_written_after_the_setup():
    text = readme_text()
    setup = text.split("## A five-command tour")[0]
    assert "python3 -m venv .venv && source .venv/bin/activate && pip install -e ." in setup
    # The environment is active from there on: no command needs a .venv/bin/ path.
    for page in (README, *sorted((ROOT / "docs").glob("*.md"))):
        page_text = page.read_text(encoding="utf-8")
        assert ".venv/bin/" not in page_text.replace("source .venv/bin/activate", ""), page.name
        assert "--experiment-id 1" not in page_text  # experiment 1 is okr/<cycle> after `apply`: KR runs
    assert "demo-run/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_install_instructions_do_not_point_at_an_unpublished_package():
    getting_started = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    for text in (readme_text(), getting_started, starter_spec()):
        assert "pypi.org" not in text and "pip install mlflow-okr" not in text
    assert "python -m build" in getting_started


def test_readme_has_the_two_setup_commands_and_links_the_pages():
    text = readme_text()
    assert "mlflow-okr demo --dir demo-run" in text
    assert "bash scripts/test.sh" in text
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for page in ("getting-started", "live-updates", "ledger", "reports", "performance", "internals"):
        assert f"](docs/{page}.md)" in text, page


def test_the_demo_follows_champion_and_rates_served_screenings(demo_run):
    """@champion names the gradient-boosting version; 300 traced screenings carry a csat each."""
    directory, _, client = demo_run
    krs = {kr["id"]: kr for objective in status_json(client)["objectives"] for kr in objective["key_results"]}
    screening = runs_by_name(client, "demo-screening")
    champion = krs["champion-recall"]
    assert champion["model"]["version"] == "2"
    assert champion["best_run_id"] == screening["gradient-boosting"].info.run_id
    assert champion["current"] == screening["gradient-boosting"].data.metrics["val_recall"]
    assert [p["version"] for p in champion["model"]["promotions"]] == ["2"]
    csat = krs["clinician-csat"]
    serving = client.get_experiment_by_name("demo-serving").experiment_id
    scores = [
        assessment.value
        for trace in client.search_traces(locations=[serving], max_results=500)
        for assessment in trace.info.assessments
        if assessment.name == "csat"
    ]
    assert (csat["kind"], csat["counted_runs"], len(scores)) == ("traces", 300, 300)
    assert csat["current"] == pytest.approx(sum(scores) / len(scores), rel=1e-12)
    assert csat["status"] == "achieved"
    report = invoke(CliRunner(), "report", "--format", "md", "--tracking-uri", client.tracking_uri).output
    assert "- `champion-recall` follows `screener@champion`, now version 2" in report
    assert "- `clinician-csat` measures avg of the csat assessments on traces in demo-serving" in report
