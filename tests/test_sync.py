"""sync: a realistic set of source runs, scored number by number; --check drift and repair; paging."""

from __future__ import annotations

import datetime as dt
import gc
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.entities import Run, RunData, RunInfo, RunTag
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.engine import ReasonKind, Verdict
from mlflow_okr.scope import apply_tag_changes, plan_run_tags, run_tags_settled
from mlflow_okr.spec import Cycle, parse_spec
from mlflow_okr.sync import PASS_YOUNG_THRESHOLD, _pass_collections, sync
from tests.conftest import IN_CYCLE_MS, NOW, invoke, make_run

DAY_MS = 24 * 3600 * 1000
BEFORE_CYCLE_MS = int(dt.datetime(2026, 9, 30, 23, 59, tzinfo=dt.timezone.utc).timestamp() * 1000)
LEGACY_MS = int(dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
ELAPSED = 45 / 92  # 2026-11-15 00:00 UTC is 45 of the 92 days of 2026-Q4

SPEC = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Improve recommendation relevance
    category: product
    key_results:
      - id: ctr
        metric: online_ctr
        experiments: ["reco-*"]
        baseline: 0.05
        target: 0.08
        guardrails:
          - {{metric: p99_latency_ms, max: 50}}
      - id: f1-vs-legacy
        metric: f1
        baseline: {{run_id: {legacy_run}}}
        target: "+5%"
      - id: recall-vs-legacy
        metric: recall
        baseline: {{filter: "tags.role = 'legacy'", experiments: [legacy]}}
        direction: maximize
        target: 0.9
  - id: ops
    title: Keep serving fast and customers happy
    category: operational
    key_results:
      - id: latency
        metric: p99_latency_ms
        experiments: ["{ops_id}"]
        baseline: 200
        target: 50
      - id: csat
        metric: csat
        experiments: [ops]
        maintain: {{min: 4.5}}
      - id: alerting-live
        source: manual
        target: 1
  - id: agg
    title: Every aggregate
    category: research
    key_results:
{aggregate_krs}
"""
AGGREGATES = ("best", "latest", "mean", "sum", "count", "min", "max")
AGGREGATE_KR = """\
      - id: agg-{aggregate}
        metric: score
        experiments: [agg]
        filter: "tags.stage = 'prod'"
        baseline: 0
        target: 20
        aggregate: {aggregate}
"""


@dataclass
class World:
    """The source runs of the scenario, by name, and a client on the store that holds them."""

    experiments: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    spec_path: str = ""
    client: MlflowClient | None = None
    tracking_uri: str = ""


def build_world(client: MlflowClient, directory: Path) -> World:
    """Experiments and runs covering every rule of DESIGN section 2, and the okrs.yaml for them."""
    world = World(client=client)
    for name in ("reco-a", "reco-b", "legacy", "ops", "agg"):
        world.experiments[name] = client.create_experiment(name)
    ex = world.experiments

    def run(name: str, experiment: str, metrics: dict, **kwargs) -> None:
        world.runs[name] = make_run(client, ex[experiment], metrics, name=name, **kwargs)

    run("legacy", "legacy", {"f1": 0.8}, tags={"role": "legacy"}, start_time=LEGACY_MS)
    # ctr (guardrail p99 <= 50) and the two legacy-relative KRs
    run("counted", "reco-a", {"online_ctr": 0.065, "p99_latency_ms": 40, "f1": 0.82, "recall": 0.85})
    run("breach", "reco-a", {"online_ctr": 0.09, "p99_latency_ms": 80})
    run("pending", "reco-b", {"online_ctr": 0.07}, status=None)
    run("unguarded", "reco-b", {"online_ctr": 0.075})
    run("failed", "reco-a", {"online_ctr": 0.1, "p99_latency_ms": 10}, status="FAILED")
    run("deleted", "reco-a", {"online_ctr": 0.2, "p99_latency_ms": 10})
    client.delete_run(world.runs["deleted"])
    run("too-early", "reco-a", {"online_ctr": 0.3, "p99_latency_ms": 10}, start_time=BEFORE_CYCLE_MS)
    # latency (minimize, experiment by id) and csat (maintain)
    run("ops-1", "ops", {"p99_latency_ms": 120, "csat": 4.8}, start_time=IN_CYCLE_MS)
    run("ops-2", "ops", {"p99_latency_ms": 90, "csat": 4.6}, start_time=IN_CYCLE_MS + DAY_MS)
    run("ops-killed", "ops", {"p99_latency_ms": 60, "csat": 3.0}, status="KILLED")
    # one KR per aggregate over the prod runs: 2, 6, 4 in start order
    for index, value in enumerate([2, 6, 4]):
        start = IN_CYCLE_MS + index * DAY_MS
        run(f"prod-{index}", "agg", {"score": value}, tags={"stage": "prod"}, start_time=start)
    run("dev", "agg", {"score": 9}, tags={"stage": "dev"})
    run("prod-killed", "agg", {"score": 50}, tags={"stage": "prod"}, status="KILLED")
    run("prod-late", "agg", {"score": 100}, tags={"stage": "prod"}, start_time=BEFORE_CYCLE_MS)

    spec = SPEC.format(
        legacy_run=world.runs["legacy"],
        ops_id=ex["ops"],
        aggregate_krs="".join(AGGREGATE_KR.format(aggregate=a) for a in AGGREGATES),
    )
    world.spec_path = str(directory / "okrs.yaml")
    Path(world.spec_path).write_text(spec, encoding="utf-8")
    return world


# KR id -> (baseline, target, direction, current, progress, status, counted_runs) at NOW
EXPECTED = {
    "ctr": (0.05, 0.08, "maximize", 0.065, 0.5, "on-track", 1),
    "f1-vs-legacy": (0.8, 0.84, "maximize", 0.82, 0.5, "on-track", 1),
    "recall-vs-legacy": (None, 0.9, "maximize", 0.85, 0.0, "not-started", 1),
    "latency": (200.0, 50.0, "minimize", 90.0, 0.7333, "on-track", 2),
    "csat": (None, None, None, 4.6, 1.0, "achieved", 2),
    "alerting-live": (0.0, 1.0, "maximize", None, 0.0, "not-started", 0),
    "agg-best": (0.0, 20.0, "maximize", 6.0, 0.3, "at-risk", 3),
    "agg-latest": (0.0, 20.0, "maximize", 4.0, 0.2, "at-risk", 3),
    "agg-mean": (0.0, 20.0, "maximize", 4.0, 0.2, "at-risk", 3),
    "agg-sum": (0.0, 20.0, "maximize", 12.0, 0.6, "on-track", 3),
    "agg-count": (0.0, 20.0, "maximize", 3.0, 0.15, "off-track", 3),
    "agg-min": (0.0, 20.0, "maximize", 2.0, 0.1, "off-track", 3),
    "agg-max": (0.0, 20.0, "maximize", 6.0, 0.3, "at-risk", 3),
}
FIELDS = ("baseline", "target", "direction", "current", "progress", "status", "counted_runs")


def status_json(runner) -> dict:
    result = invoke(runner, "status", "--format", "json", "--as-of", "2026-11-15")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def key_results(payload: dict) -> dict[str, dict]:
    return {kr["id"]: kr for objective in payload["objectives"] for kr in objective["key_results"]}


def assert_kr(kr: dict, expected: tuple) -> None:
    for name, value in zip(FIELDS, expected, strict=True):
        if isinstance(value, float):
            assert kr[name] == pytest.approx(value, abs=1e-4), (kr["id"], name, kr[name])
        else:
            assert kr[name] == value, (kr["id"], name, kr[name])


@pytest.fixture(scope="module")
def world_store(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> tuple[Path, World]:
    """The scenario built, applied and synced once; each test gets a copy of its store."""
    path = tmp_path_factory.mktemp("world") / "mlflow.db"
    shutil.copyfile(sqlite_template, path)
    uri = f"sqlite:///{path}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        world = build_world(MlflowClient(uri), path.parent)
        runner = CliRunner()
        result = invoke(runner, "apply", world.spec_path)
        assert result.exit_code == 0, result.output
        result = invoke(runner, "sync", "--as-of", "2026-11-15")
        assert result.exit_code == 0, result.output
    return path, world


@pytest.fixture
def world(world_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    template_path, template = world_store
    path = tmp_path / "world.db"
    shutil.copyfile(template_path, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return replace(template, client=MlflowClient(uri), tracking_uri=uri)


def test_status_json_number_by_number(world, runner):
    payload = status_json(runner)
    cycle = {"name": "2026-Q4", "start": "2026-10-01", "end": "2026-12-31", "elapsed": ELAPSED}
    assert payload["cycle"] == cycle
    krs = key_results(payload)
    assert set(krs) == set(EXPECTED)
    for kr_id, expected in EXPECTED.items():
        assert_kr(krs[kr_id], expected)
    runs = world.runs
    assert krs["ctr"]["best_run_id"] == runs["counted"]
    ctr = krs["ctr"]
    assert (ctr["pending_runs"], ctr["excluded_runs"], ctr["guardrail_breaches"]) == (1, 3, 1)
    assert krs["latency"]["best_run_id"] == runs["ops-2"]
    assert krs["csat"]["best_run_id"] == runs["ops-2"] and krs["csat"]["excluded_runs"] == 1
    assert krs["agg-latest"]["best_run_id"] == runs["prod-2"]
    assert krs["agg-min"]["best_run_id"] == runs["prod-0"]
    assert krs["agg-best"]["best_run_id"] == runs["prod-1"]
    assert krs["latency"]["kind"] == "metric" and krs["csat"]["kind"] == "maintain"
    assert krs["alerting-live"]["kind"] == "manual"
    scores = {objective["id"]: objective["score"] for objective in payload["objectives"]}
    assert scores == pytest.approx(
        {"reco": round(1.0 / 3, 4), "ops": round(1.7333 / 3, 4), "agg": round(1.85 / 7, 4)}, abs=1e-4
    )
    assert payload["score"] == pytest.approx(sum(scores.values()) / 3, abs=1e-4)


def test_source_runs_are_tagged(world):
    client = world.client
    def tags(name: str) -> dict[str, str]:
        return {k: v for k, v in client.get_run(world.runs[name]).data.tags.items() if k.startswith("okr.")}

    assert tags("counted") == {
        "okr.cycle": "2026-Q4",
        "okr.krs": "ctr,f1-vs-legacy,recall-vs-legacy",
        "okr.kr.ctr": "counted",
        "okr.kr.f1-vs-legacy": "counted",
        "okr.kr.recall-vs-legacy": "counted",
    }
    assert tags("breach") == {
        "okr.cycle": "2026-Q4",
        "okr.kr.ctr": "excluded: guardrail p99_latency_ms = 80 breaks <= 50",
    }
    assert tags("pending") == {"okr.cycle": "2026-Q4", "okr.kr.ctr": "pending"}
    assert tags("unguarded") == {
        "okr.cycle": "2026-Q4",
        "okr.kr.ctr": "excluded: guardrail p99_latency_ms never logged",
    }
    assert tags("failed")["okr.kr.ctr"] == "excluded: run FAILED"
    assert "okr.krs" not in tags("failed")
    assert tags("deleted") == {}
    assert tags("too-early") == {}
    assert tags("legacy") == {}
    assert tags("ops-1") == {
        "okr.cycle": "2026-Q4",
        "okr.krs": "csat,latency",
        "okr.kr.csat": "counted",
        "okr.kr.latency": "counted",
    }
    assert tags("ops-killed")["okr.kr.latency"] == "excluded: run KILLED"
    assert tags("prod-0")["okr.krs"] == ",".join(sorted(f"agg-{a}" for a in AGGREGATES))
    assert tags("dev") == {}
    assert tags("prod-late") == {}
    assert tags("prod-killed")["okr.kr.agg-sum"] == "excluded: run KILLED"
    # Searchable the way DESIGN promises.
    found = client.search_runs(
        list(world.experiments.values()), filter_string="tags.`okr.kr.ctr` = 'counted'"
    )
    assert [run.info.run_id for run in found] == [world.runs["counted"]]


def test_kr_runs_carry_value_and_progress_metrics(world):
    client = world.client
    published = state.load_published(client, "2026-Q4")
    ctr = client.get_run(published.kr_runs["ctr"]).data
    assert ctr.metrics[vocabulary.METRIC_VALUE] == pytest.approx(0.065)
    assert ctr.metrics[vocabulary.METRIC_PROGRESS] == pytest.approx(0.5)
    assert ctr.metrics[vocabulary.METRIC_SCORE] == pytest.approx(0.5)
    assert ctr.tags[vocabulary.TAG_STATUS] == "on-track"
    assert ctr.tags[vocabulary.TAG_BEST_RUN] == world.runs["counted"]
    assert ctr.tags[vocabulary.TAG_COUNTED] == "1"
    latency = client.get_run(published.kr_runs["latency"]).data
    assert latency.metrics[vocabulary.METRIC_VALUE] == 90.0
    assert latency.metrics[vocabulary.METRIC_PROGRESS] == pytest.approx(0.7333, abs=1e-4)
    assert latency.tags[vocabulary.TAG_DIRECTION] == "minimize"
    alerting = client.get_run(published.kr_runs["alerting-live"]).data
    assert vocabulary.METRIC_VALUE not in alerting.metrics
    assert alerting.metrics[vocabulary.METRIC_PROGRESS] == 0.0
    reco = client.get_run(published.objective_runs["reco"]).data
    assert reco.metrics[vocabulary.METRIC_SCORE] == pytest.approx(1 / 3, abs=1e-4)


def test_a_filter_baseline_that_appears_after_apply(world, runner):
    client = world.client
    assert key_results(status_json(runner))["recall-vs-legacy"]["status"] == "not-started"
    client.log_metric(world.runs["legacy"], "recall", 0.8)
    assert invoke(runner, "sync", "--check", "--as-of", "2026-11-15").exit_code == 1
    assert invoke(runner, "sync", "--as-of", "2026-11-15").exit_code == 0
    payload = status_json(runner)
    assert_kr(key_results(payload)["recall-vs-legacy"], (0.8, 0.9, "maximize", 0.85, 0.5, "on-track", 1))
    reco = payload["objectives"][0]
    progress = [kr["progress"] for kr in reco["key_results"]]
    assert progress[2] == (0.85 - 0.8) / (0.9 - 0.8)
    assert reco["score"] == sum(progress) / 3 == pytest.approx(0.5, abs=1e-12)


def test_a_run_baseline_is_not_started_until_the_run_has_the_metric(client, write_spec, runner):
    experiment = client.create_experiment("reco")
    make_run(client, experiment, {"f1": 0.9})
    legacy = make_run(client, client.create_experiment("legacy"), {}, start_time=LEGACY_MS)
    missing = "0123456789abcdef0123456789abcdef"
    spec = SPEC.split("  - id: ops")[0].replace("{{", "{").replace("}}", "}")
    assert invoke(runner, "apply", str(write_spec(spec.replace("{legacy_run}", missing)))).exit_code == 0
    krs = key_results(status_json(runner))
    assert krs["f1-vs-legacy"]["status"] == "not-started"
    assert krs["f1-vs-legacy"]["baseline"] is None and krs["f1-vs-legacy"]["counted_runs"] == 1
    assert krs["f1-vs-legacy"]["notes"] == ["baseline not resolved yet"]

    assert invoke(runner, "apply", str(write_spec(spec.replace("{legacy_run}", legacy)))).exit_code == 0
    assert key_results(status_json(runner))["f1-vs-legacy"]["status"] == "not-started"
    client.log_metric(legacy, "f1", 0.8)
    assert invoke(runner, "sync", "--as-of", "2026-11-15").exit_code == 0
    # 0.9 against 0.8 x 1.05 = 0.84: achieved.
    f1 = key_results(status_json(runner))["f1-vs-legacy"]
    assert_kr(f1, (0.8, 0.84, "maximize", 0.9, 1.0, "achieved", 1))
    assert f1["notes"] == []


def test_sync_check_finds_drift_and_sync_repairs_it(world, runner):
    client = world.client
    clean = invoke(runner, "sync", "--check", "--as-of", "2026-11-15")
    assert clean.exit_code == 0, clean.output
    assert clean.output.startswith("No drift: cycle 2026-Q4,")

    published = state.load_published(client, "2026-Q4")
    breach = world.runs["breach"]
    client.set_tag(breach, "okr.kr.ctr", "counted")
    cycle = published.cycle
    state.log_kr_state(client, published.kr_runs["latency"], {vocabulary.METRIC_VALUE: 55.0}, {}, cycle)

    drifted = invoke(runner, "sync", "--check", "--as-of", "2026-11-15")

    assert drifted.exit_code == 1
    assert "Drift in cycle 2026-Q4:" in drifted.output
    assert "KR latency: current stored 55.0, recomputed 90.0" in drifted.output
    assert (
        f"run {breach}: tag okr.kr.ctr stored 'counted', "
        "recomputed 'excluded: guardrail p99_latency_ms = 80 breaks <= 50'"
    ) in drifted.output
    assert "Run `mlflow-okr sync` to repair." in drifted.output
    assert client.get_run(breach).data.tags["okr.kr.ctr"] == "counted"  # --check wrote nothing

    repaired = invoke(runner, "sync", "--as-of", "2026-11-15")
    assert repaired.exit_code == 0
    assert "Wrote 1 KR state field(s) to okr/2026-Q4 and 1 okr.* tag(s) to source runs." in repaired.output
    assert client.get_run(breach).data.tags["okr.kr.ctr"].startswith("excluded: guardrail")
    assert invoke(runner, "sync", "--check", "--as-of", "2026-11-15").exit_code == 0


def test_sync_removes_tags_of_a_run_that_left_the_scope(world, runner):
    client = world.client
    run_id = world.runs["prod-0"]
    client.set_tag(run_id, "stage", "dev")
    result = invoke(runner, "sync", "--check", "--as-of", "2026-11-15")
    assert result.exit_code == 1
    assert f"run {run_id}: tag okr.kr.agg-best stored 'counted', recomputed None" in result.output
    invoke(runner, "sync", "--as-of", "2026-11-15")
    tags = client.get_run(run_id).data.tags
    assert not [key for key in tags if key.startswith("okr.kr") or key == "okr.krs"]
    assert key_results(status_json(runner))["agg-count"]["current"] == 2.0


def test_drift_in_a_new_run(world, runner):
    client = world.client
    new_run = make_run(client, world.experiments["reco-b"], {"online_ctr": 0.074, "p99_latency_ms": 30})
    result = invoke(runner, "sync", "--check", "--as-of", "2026-11-15")
    assert result.exit_code == 1
    assert "KR ctr: current stored 0.065, recomputed 0.074" in result.output
    assert f"run {new_run}: tag okr.kr.ctr stored None, recomputed 'counted'" in result.output
    invoke(runner, "sync", "--as-of", "2026-11-15")
    assert key_results(status_json(runner))["ctr"]["progress"] == pytest.approx(0.8)


class CountingClient(MlflowClient):
    """A real client that also counts its search_runs pages."""

    pages = 0

    def search_runs(self, *args, **kwargs):
        CountingClient.pages += 1
        return super().search_runs(*args, **kwargs)


def test_paginated_sync_gives_the_same_result(world, monkeypatch):
    client = CountingClient(world.tracking_uri)
    one_page = sync(client, "2026-Q4", check=True, now=NOW)
    pages_default = CountingClient.pages
    monkeypatch.setattr(state, "PAGE_SIZE", 2)
    CountingClient.pages = 0
    paged = sync(client, "2026-Q4", check=True, now=NOW)
    assert CountingClient.pages > pages_default + 5
    assert paged.runs_scanned == one_page.runs_scanned == 13
    assert not paged.drifted and not one_page.drifted
    assert paged.status == one_page.status


def test_paginated_sync_from_scratch_writes_the_same_state(client, tmp_path, runner, monkeypatch):
    monkeypatch.setattr(state, "PAGE_SIZE", 3)
    world = build_world(client, tmp_path)
    assert invoke(runner, "apply", world.spec_path).exit_code == 0
    assert invoke(runner, "sync", "--as-of", "2026-11-15").exit_code == 0
    krs = key_results(status_json(runner))
    for kr_id, expected in EXPECTED.items():
        assert_kr(krs[kr_id], expected)
    monkeypatch.setattr(state, "PAGE_SIZE", 1000)
    assert invoke(runner, "sync", "--check", "--as-of", "2026-11-15").exit_code == 0


def test_sync_output_and_progress_free_of_errors(world, runner):
    result = invoke(runner, "sync", "--as-of", "2026-11-15")
    assert result.exit_code == 0
    assert (
        "Synced cycle 2026-Q4: 13 runs scanned. Nothing to write: the stored KR state and run tags "
        "were up to date." in result.output
    )
    assert "Cycle 2026-Q4 (2026-10-01 .. 2026-12-31), 49% elapsed." in result.output


def test_sync_after_the_cycle_grades_met_and_missed(world, runner):
    result = invoke(runner, "status", "--format", "json", "--as-of", "2027-01-05")
    krs = key_results(json.loads(result.output))
    assert krs["latency"]["status"] == "met"
    assert krs["ctr"]["status"] == "missed"
    assert krs["csat"]["status"] == "achieved"
    assert krs["recall-vs-legacy"]["status"] == "missed"


def test_narrowing_a_krs_experiments_clears_tags_left_behind(client, write_spec, runner):
    kept = client.create_experiment("reco-a")
    dropped = client.create_experiment("reco-b")
    kept_run = make_run(client, kept, {"online_ctr": 0.06})
    dropped_run = make_run(client, dropped, {"online_ctr": 0.07})
    spec = (
        "version: 1\ncycle: 2026-Q4\nobjectives:\n  - id: reco\n    title: Reco\n    category: product\n"
        "    key_results:\n      - id: ctr\n        metric: online_ctr\n        experiments: ['reco-*']\n"
        "        baseline: 0.05\n        target: 0.08\n"
    )
    assert invoke(runner, "apply", str(write_spec(spec))).exit_code == 0
    assert client.get_run(dropped_run).data.tags["okr.kr.ctr"] == "counted"

    assert invoke(runner, "apply", str(write_spec(spec.replace("reco-*", "reco-a")))).exit_code == 0

    tags = client.get_run(dropped_run).data.tags
    assert "okr.kr.ctr" not in tags and "okr.krs" not in tags
    assert client.get_run(kept_run).data.tags["okr.kr.ctr"] == "counted"
    assert invoke(runner, "sync", "--check", *("--as-of", "2026-11-15")).exit_code == 0
    client.set_tag(dropped_run, "okr.kr.ctr", "counted")
    drifted = invoke(runner, "sync", "--check", "--as-of", "2026-11-15")
    assert drifted.exit_code == 1
    assert f"run {dropped_run}: tag okr.kr.ctr stored 'counted', recomputed None" in drifted.output


def test_a_filter_baseline_with_a_relative_target_takes_the_best_run_in_its_direction(
    client, write_spec, runner
):
    legacy = client.create_experiment("legacy")
    for value in (12.0, 15.0, 20.0):
        make_run(client, legacy, {"mape": value}, tags={"role": "legacy"}, start_time=LEGACY_MS)
    current = client.create_experiment("forecast")
    make_run(client, current, {"mape": 11.4})
    spec = (
        "version: 1\ncycle: 2026-Q4\nobjectives:\n  - id: forecast\n    title: Forecast\n"
        "    category: product\n    key_results:\n      - id: mape\n        metric: mape\n"
        "        experiments: [forecast]\n"
        "        baseline: {filter: \"tags.role = 'legacy'\", experiments: [legacy]}\n"
        "        target: '-10%'\n"
    )
    assert invoke(runner, "apply", str(write_spec(spec))).exit_code == 0
    mape = key_results(status_json(runner))["mape"]
    # The best legacy run of a minimize KR is the lowest MAPE: 12.0, so the target is 10.8.
    assert_kr(mape, (12.0, 10.8, "minimize", 11.4, 0.5, "on-track", 1))


def test_source_experiments_by_name_glob_and_id_across_pages(client):
    ids = {name: client.create_experiment(name) for name in ("reco-a", "reco-b", "ops", "okr/2026-Q4")}
    assert len(list(state.iter_experiments(client, page_size=2))) == 5  # with Default
    everything = set(state.source_experiment_ids(client, []))
    assert everything == {"0", ids["reco-a"], ids["reco-b"], ids["ops"]}  # okr/ experiments are not sources
    assert set(state.source_experiment_ids(client, ["reco-*", ids["ops"]])) == everything - {"0"}
    assert state.source_experiment_ids(client, ["nothing-*"]) == []


def test_overlapping_cycles_keep_each_others_kr_ids(client, write_spec, runner):
    experiment = client.create_experiment("reco")
    run_id = make_run(client, experiment, {"online_ctr": 0.07})
    kr = "      - {{id: {id}, metric: online_ctr, baseline: 0.05, target: 0.08}}\n"
    for cycle, kr_id in (("2026-Q4", "ctr-q4"), ("2026-H2", "ctr-h2")):
        spec = (
            f"version: 1\ncycle: {cycle}\nobjectives:\n  - id: reco\n    title: Reco\n"
            f"    category: product\n    key_results:\n{kr.format(id=kr_id)}"
        )
        assert invoke(runner, "apply", str(write_spec(spec, f"{cycle}.yaml"))).exit_code == 0
    for cycle in ("2026-Q4", "2026-H2", "2026-Q4"):
        assert invoke(runner, "sync", "--cycle", cycle, "--as-of", "2026-11-15").exit_code == 0
    tags = client.get_run(run_id).data.tags
    assert tags["okr.krs"] == "ctr-h2,ctr-q4"
    assert tags["okr.kr.ctr-q4"] == tags["okr.kr.ctr-h2"] == "counted"
    for cycle in ("2026-Q4", "2026-H2"):
        result = invoke(runner, "sync", "--check", "--cycle", cycle, "--as-of", "2026-11-15")
        assert result.exit_code == 0, result.output


SETTLED_SPEC = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Reco
    category: product
    key_results:
      - {id: ctr, metric: online_ctr, baseline: 0.05, target: 0.08, guardrails: [{metric: p99, max: 50}]}
      - {id: loss, metric: loss, baseline: 0.5, target: 0.2, aggregate: mean}
      - {id: shared, metric: score, baseline: 0, target: 20, aggregate: sum}
"""
SETTLED_VERDICTS = (
    Verdict("counted", "", 0.07),
    Verdict("counted", "", 0.25),
    Verdict("pending", "waiting for p99", 0.07, ReasonKind.WAITING),
    Verdict("excluded", "run FAILED", 0.07, ReasonKind.RUN_NOT_COUNTED),
    Verdict("excluded", "guardrail p99 = 60 breaks <= 50", 0.07, ReasonKind.GUARDRAIL_BREACH),
)
TAG_TEXTS = ("counted", "pending", "excluded: run FAILED", "0.25", "0.07", "", "2026-Q4", "2026-11")
NOVEMBER = Cycle(name="2026-11", start=dt.date(2026, 11, 1), end=dt.date(2026, 11, 30))


@settings(max_examples=400, deadline=None)
@given(
    verdicts=st.dictionaries(st.sampled_from(["ctr", "loss", "shared"]), st.sampled_from(SETTLED_VERDICTS)),
    tags=st.dictionaries(
        st.sampled_from([
            "okr.kr.ctr", "okr.kr.loss", "okr.kr.loss.value", "okr.kr.shared", "okr.kr.shared.value",
            "okr.kr.shared/2026-Q4", "okr.kr.shared/2026-Q4.value", "okr.cycle", "stage",
        ]),
        st.sampled_from(TAG_TEXTS),
    ),
    listed=st.none() | st.lists(st.sampled_from(["ctr", "loss", "shared", "shared/2026-Q4", "ctr-h2", ""])),
    steady=st.booleans(),
    start=st.sampled_from([NOVEMBER.start_ms - 86_400_000, NOVEMBER.start_ms]),  # Oct 31, Nov 1
)
def test_run_tags_settled_agrees_with_the_plan(verdicts, tags, listed, steady, start):
    """The steady-state shortcut says "nothing drifted" exactly when the full tag plan does."""
    spec = parse_spec(SETTLED_SPEC)
    if listed is not None:
        tags["okr.krs"] = ",".join(listed)
    nested = spec.sharing(frozenset(), (NOVEMBER,))  # a published 2026-11 inside 2026-Q4
    for named in (spec, spec.sharing(frozenset({"shared"})), nested):
        run = Run(RunInfo("r" * 32, "0", "u", "FINISHED", start, None, "active"), RunData(
            tags=[RunTag(key, value) for key, value in tags.items()]))
        if steady:  # the tags a write of the plan leaves: the steady state
            changes = plan_run_tags(named, run, verdicts).changes()
            if changes is not None:
                apply_tag_changes(run, changes)
            assert run_tags_settled(named, run, verdicts)
            if verdicts:  # the innermost published cycle containing the run's start
                inner = named is nested and NOVEMBER.contains(start)
                assert run.data.tags["okr.cycle"] == ("2026-11" if inner else "2026-Q4")
        assert run_tags_settled(named, run, verdicts) == (not plan_run_tags(named, run, verdicts).drifted)


FILTERS = [
    "tags.stage = 'candidate'",
    "tags.stage != 'candidate' AND params.model LIKE 'x%'",
    "metrics.acc > 0.5 AND attributes.run_name = 'a'",
    "attributes.status = 'FINISHED' AND tags.stage LIKE '%d%'",
    "params.model ILIKE 'X%'",
    "attributes.start_time > 5",
]


@settings(max_examples=100, deadline=None)
@given(
    filter_string=st.sampled_from(FILTERS),
    kept=st.sampled_from([1, 2, 1024]),
    runs=st.lists(
        st.tuples(
            st.sampled_from([None, "candidate", "prod", "Candidate"]),
            st.sampled_from([None, "x1", "X2", "y"]),
            st.one_of(st.none(), st.floats(0, 1)),
            st.sampled_from(["a", "b"]),
            st.sampled_from(["FINISHED", "RUNNING", "FAILED"]),
            st.integers(0, 10),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_a_filter_answers_each_run_as_mlflows_own_matching_does(filter_string, kept, runs) -> None:
    """The answers a filter keeps per value never differ from MLflow's, however few it keeps."""
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.utils.search_utils import SearchUtils

    from mlflow_okr import scope

    run_filter = scope.RunFilter(filter_string)
    original = scope.MAX_FILTER_ANSWERS
    scope.MAX_FILTER_ANSWERS = kept
    try:
        for index, (stage, model, acc, name, status, start) in enumerate(runs):
            info = RunInfo(
                run_id=f"run{index}", experiment_id="1", user_id="u", status=RunStatus.from_string(status),
                start_time=start, end_time=None, lifecycle_stage="active", run_name=name,
            )
            data = RunData(
                metrics=[Metric("acc", acc, 0, 0)] if acc is not None else [],
                params=[Param("model", model)] if model is not None else [],
                tags=[RunTag("stage", stage)] if stage is not None else [],
            )
            run = Run(info, data)
            expected = SearchUtils.filter([run], filter_string) == [run]
            assert run_filter.matches(run) is expected, (filter_string, run)
    finally:
        scope.MAX_FILTER_ANSWERS = original


def test_passes_collect_garbage_less_often_until_the_last_one_ends() -> None:
    before = gc.get_threshold()
    raised = (max(before[0], PASS_YOUNG_THRESHOLD), *before[1:])
    with _pass_collections.during_pass():
        assert gc.get_threshold() == raised
        with _pass_collections.during_pass():  # another pass at the same time, in another thread
            assert gc.get_threshold() == raised
        assert gc.get_threshold() == raised
    assert gc.get_threshold() == before
