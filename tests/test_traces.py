"""Trace KRs (`source: traces`): MLflow's query_trace_metrics over real traces, in every output."""

from __future__ import annotations

import datetime as dt
import json
import statistics

import mlflow
import numpy
import pytest
from mlflow.entities import SpanType
from mlflow.tracking import MlflowClient

from mlflow_okr import api, traces, vocabulary
from mlflow_okr.board.data import board_state
from mlflow_okr.errors import SpecError
from mlflow_okr.report import build_report, render
from mlflow_okr.spec import parse_spec
from tests.conftest import invoke, requires_okr_store
from tests.live_fixtures import wait_for
from tests.specs import one_kr

AS_OF = ("--as-of", "2026-11-15")
NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
NOV_1_MS = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
NOV_12_MS = int(dt.datetime(2026, 11, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)
# 40 traces: the p99 interpolates between the two slowest (0.99 x 39 = 38.61).
LATENCIES_MS = [20 + (index * 37) % 90 for index in range(38)] + [400, 900]
COSTS = [0.25, 0.5, 0.125, 0.75]  # exact in binary, so a mean is exact in any order
CSAT = [5, 4, 3, 5, 4]

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: serve
    title: Serve users fast and cheaply
    category: product
    owner: serving
    key_results:
      - id: p99-latency
        source: traces
        trace_metric: latency
        aggregation: p99
        experiments: [svc]
        baseline: 1000
        target: 200
      - id: cost
        source: traces
        trace_metric: total_cost
        view: spans
        aggregation: avg
        experiments: [svc]
        baseline: 0.6
        target: "-50%"
      - id: csat
        source: traces
        assessment: csat
        aggregation: avg
        experiments: [svc]
        maintain: {min: 4}
"""


def log_trace(client, experiment_id: str, start_ms: int, latency_ms: int, cost: float | None = None,
              tags: dict[str, str] | None = None) -> str:
    """One trace that took exactly `latency_ms`, with an LLM span costing `cost` if given."""
    root = client.start_trace("predict", experiment_id=experiment_id, start_time_ns=start_ms * 1_000_000,
                              tags=tags)
    if cost is not None:
        span = client.start_span("llm", trace_id=root.trace_id, parent_id=root.span_id,
                                 span_type=SpanType.LLM, start_time_ns=start_ms * 1_000_000)
        cost_attribute = {"input_cost": cost / 2, "output_cost": cost / 2, "total_cost": cost}
        client.end_span(root.trace_id, span.span_id, attributes={"mlflow.llm.cost": cost_attribute},
                        end_time_ns=(start_ms + 1) * 1_000_000)
    client.end_trace(root.trace_id, end_time_ns=(start_ms + latency_ms) * 1_000_000)
    return root.trace_id


def hand_p99(values: list[float]) -> float:
    """numpy's linear interpolation, the definition MLflow's SQL percentile follows."""
    return float(numpy.quantile(numpy.array(values, dtype=float), 0.99))


@pytest.fixture
def traced(client, runner, write_spec):
    """40 traces in experiment svc (4 with an LLM span's cost, 5 with a csat feedback), applied and synced."""
    experiment_id = client.create_experiment("svc")
    trace_ids = [
        log_trace(client, experiment_id, NOV_1_MS + index * 1000, latency,
                  COSTS[index] if index < len(COSTS) else None)
        for index, latency in enumerate(LATENCIES_MS)
    ]
    mlflow.flush_trace_async_logging()  # traces are exported in the background
    for trace_id, score in zip(trace_ids, CSAT, strict=False):
        mlflow.log_feedback(trace_id=trace_id, name="csat", value=float(score))
    mlflow.log_feedback(trace_id=trace_ids[-1], name="helpful", value=0.0)  # another name: not counted
    result = invoke(runner, "apply", str(write_spec(SPEC)))
    assert result.exit_code == 0, result.output
    result = invoke(runner, "sync", *AS_OF)
    assert result.exit_code == 0, result.output
    return experiment_id


def test_trace_krs_equal_a_hand_computation_in_status_json(traced, runner):
    result = invoke(runner, "status", "--format", "json", *AS_OF)
    assert result.exit_code == 0, result.output
    krs = {kr["id"]: kr for kr in json.loads(result.output)["objectives"][0]["key_results"]}

    p99 = hand_p99(LATENCIES_MS)
    assert p99 == pytest.approx(900 - 0.39 * 500)  # y[38] + 0.61 x (y[39] - y[38])
    latency = krs["p99-latency"]
    assert (latency["kind"], latency["metric"], latency["direction"]) == ("traces", "p99 latency", "minimize")
    assert latency["current"] == p99
    assert latency["progress"] == (p99 - 1000) / (200 - 1000)
    assert latency["counted_runs"] == 40
    assert latency["status"] == "on-track"

    cost = krs["cost"]
    assert cost["metric"] == "avg span total_cost"
    assert cost["current"] == statistics.fmean(COSTS) == 0.40625
    assert cost["target"] == 0.3
    assert cost["progress"] == (0.40625 - 0.6) / (0.3 - 0.6)
    assert cost["counted_runs"] == 44  # every span in scope: 40 roots and 4 LLM spans

    csat = krs["csat"]
    assert (csat["metric"], csat["current"], csat["counted_runs"]) == ("avg csat", statistics.fmean(CSAT), 5)
    assert (csat["progress"], csat["status"]) == (1.0, "achieved")


def test_sync_stores_what_a_recompute_gives(traced, runner, client):
    result = invoke(runner, "sync", "--check", *AS_OF)
    assert result.exit_code == 0, result.output
    log_trace(client, traced, NOV_1_MS + 100_000, 5000)  # a slow trace moves the p99
    mlflow.flush_trace_async_logging()
    result = invoke(runner, "sync", "--check", *AS_OF)
    assert result.exit_code == 1, result.output
    assert f"KR p99-latency: current stored {hand_p99(LATENCIES_MS)!r}, recomputed" in result.output
    assert "KR cost: counted_runs stored '44', recomputed '45'" in result.output  # one more root span
    assert "KR csat" not in result.output
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0
    status = api.status(now=NOW)
    assert status.find("p99-latency").current == hand_p99(LATENCIES_MS + [5000])
    assert status.find("p99-latency").counted_runs == 41


def test_the_status_table_shows_the_bound_a_maintain_trace_kr_holds(traced, runner):
    result = invoke(runner, "status", *AS_OF)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[4:] if line.strip()}
    assert rows["csat"].split() == [
        "csat", "✔", "achieved", "—", "4.2", "stay", "≥", "4", "██████████", "100%", "5"
    ]
    assert rows["p99-latency"].split()[3:6] == ["1000", "705", "200"]


def test_report_board_and_mlflow_ui_show_the_same_numbers(traced, tracking_uri, client):
    status = api.status(now=NOW)
    p99 = hand_p99(LATENCIES_MS)

    built = build_report(client, now=NOW)
    report = json.loads(built.model_dump_json())
    report_krs = {kr["id"]: kr for kr in report["status"]["objectives"][0]["key_results"]}
    assert report_krs["p99-latency"]["current"] == p99
    assert report_krs["csat"]["current"] == 4.2
    details = report["details"]["p99-latency"]
    assert details["measures"] == (
        "p99 of latency over traces in svc, over the whole cycle (MLflow's query_trace_metrics)"
    )
    markdown = render(built, "md")
    assert "| **p99-latency** | ● on-track | 1000 | 200 | 705 |" in markdown
    assert "| **csat** | ✔ achieved | — | stay ≥ 4 | 4.2 |" in markdown
    assert "- `cost` measures avg of total_cost over spans in svc" in markdown

    board = board_state(tracking_uri, None, now=NOW)
    board_krs = {kr["id"]: kr for kr in board["status"]["objectives"][0]["key_results"]}
    assert board_krs["cost"]["current"] == 0.40625
    assert board["key_results"]["csat"]["maintain"] == {"min": 4.0, "max": None}
    assert board["key_results"]["csat"]["measures"].startswith("avg of the csat assessments on traces")

    kr_run = client.get_run(status.find("p99-latency").run_id)
    note = kr_run.data.tags["mlflow.note.content"]
    assert "| Kind | traces KR |" in note
    assert "| Current | 705 |" in note
    assert "| Counted | 40 traces |" in note
    assert "| Baseline | 1000 |" in note
    csat_note = client.get_run(status.find("csat").run_id).data.tags["mlflow.note.content"]
    assert "| Target | maintain `avg csat` ≥ 4 |" in csat_note
    assert kr_run.data.metrics[vocabulary.METRIC_VALUE] == p99


def test_a_window_counts_only_its_last_days(client, runner, write_spec):
    experiment_id = client.create_experiment("svc")
    log_trace(client, experiment_id, NOV_1_MS, 900)  # two weeks before the moment: outside 7d
    for offset, latency in enumerate([100, 300]):
        log_trace(client, experiment_id, NOV_12_MS + offset, latency)
    mlflow.flush_trace_async_logging()
    spec = SPEC.replace("        aggregation: p99\n", "        aggregation: max\n        window: 7d\n")
    assert invoke(runner, "apply", str(write_spec(spec))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    latency = api.status(now=NOW).find("p99-latency")
    assert (latency.current, latency.counted_runs) == (300.0, 2)
    # A week later the window holds no trace: the KR has nothing to count.
    later = ("--as-of", "2026-11-30")
    assert invoke(runner, "sync", "--check", *later).exit_code == 1
    assert invoke(runner, "sync", *later).exit_code == 0
    moved = api.status(now=dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)).find("p99-latency")
    assert (moved.current, moved.counted_runs, moved.status) == (None, 0, "not-started")


def test_a_trace_filter_narrows_the_traces(client, runner, write_spec):
    experiment_id = client.create_experiment("svc")
    log_trace(client, experiment_id, NOV_1_MS, 100, tags={"env": "prod"})
    log_trace(client, experiment_id, NOV_1_MS + 1, 700, tags={"env": "dev"})
    mlflow.flush_trace_async_logging()
    spec = SPEC.replace(
        "        aggregation: p99\n",
        "        aggregation: max\n        filter: \"trace.tag.env = 'prod' AND trace.status = 'OK'\"\n",
    )
    assert invoke(runner, "apply", str(write_spec(spec))).exit_code == 0
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    latency = api.status(now=NOW).find("p99-latency")
    assert (latency.current, latency.counted_runs) == (100.0, 1)


MODEL_SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: serve
    title: Serve users fast with the deployed model
    category: product
    key_results:
      - id: champion-latency
        source: traces
        trace_metric: latency
        aggregation: max
        experiments: [svc]
        model: {name: screener, alias: champion}
        baseline: 1000
        target: 200
      - id: champion-csat
        source: traces
        assessment: csat
        aggregation: avg
        experiments: [svc]
        model: {name: screener, alias: champion}
        maintain: {min: 4}
"""


@pytest.fixture
def versions(client, runner, write_spec):
    """Versions 1 and 2 of `screener` (each its own logged model) and 3 (none), with traces of the
    first two models and of no model in experiment svc; csat feedback on some; the spec applied."""
    train = client.create_experiment("train")
    svc = client.create_experiment("svc")
    client.create_registered_model("screener")
    model_ids = []
    for name in ("v1", "v2"):
        logged = client.create_logged_model(train, name=name)
        model_ids.append(logged.model_id)
        client.create_model_version("screener", f"models:/{logged.model_id}", model_id=logged.model_id)
    client.create_model_version("screener", "runs:/0123456789abcdef/model")  # no logged model
    served = {model_ids[0]: [(100, 5.0), (300, 4.0)], model_ids[1]: [(50, 3.0), (70, None), (90, None)]}
    start = NOV_1_MS
    for model_id, calls in served.items():
        with mlflow.set_active_model(model_id=model_id):  # MLflow stamps it on each trace
            for latency, csat in calls:
                start += 1000
                trace_id = log_trace(client, svc, start, latency)
                mlflow.flush_trace_async_logging()
                if csat is not None:
                    mlflow.log_feedback(trace_id=trace_id, name="csat", value=csat)
    mlflow.flush_trace_async_logging()
    unscoped = log_trace(client, svc, start + 1000, 5000)  # no active model: no KR counts it
    mlflow.flush_trace_async_logging()
    mlflow.log_feedback(trace_id=unscoped, name="csat", value=1.0)
    assert invoke(runner, "apply", str(write_spec(MODEL_SPEC))).exit_code == 0
    return model_ids


def model_krs(runner) -> dict[str, dict]:
    result = invoke(runner, "status", "--format", "json", *AS_OF)
    assert result.exit_code == 0, result.output
    return {kr["id"]: kr for kr in json.loads(result.output)["objectives"][0]["key_results"]}


def test_a_model_scoped_trace_kr_counts_the_traces_of_the_version_behind_the_alias(versions, runner, client):
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    krs = model_krs(runner)
    latency = krs["champion-latency"]
    assert (latency["status"], latency["current"], latency["counted_runs"]) == ("not-started", None, 0)
    assert latency["notes"] == ["alias screener@champion does not exist yet"]

    client.set_registered_model_alias("screener", "champion", "1")
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    krs = model_krs(runner)
    latency, csat = krs["champion-latency"], krs["champion-csat"]
    assert (latency["current"], latency["counted_runs"]) == (300.0, 2)
    assert latency["progress"] == (300 - 1000) / (200 - 1000)
    assert (csat["current"], csat["counted_runs"], csat["status"]) == (4.5, 2, "achieved")
    assert latency["model"]["version"] == "1"

    client.set_registered_model_alias("screener", "champion", "2")
    result = invoke(runner, "sync", "--check", *AS_OF)
    assert result.exit_code == 1
    assert "KR champion-latency: current stored 300.0, recomputed 90.0" in result.output
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    krs = model_krs(runner)
    latency, csat = krs["champion-latency"], krs["champion-csat"]
    assert (latency["current"], latency["counted_runs"]) == (90.0, 3)
    assert (csat["current"], csat["counted_runs"], csat["progress"]) == (3.0, 1, 0.0)
    assert [p["version"] for p in latency["model"]["promotions"]] == ["1", "2"]
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0
    report = build_report(client, now=NOW)
    assert report.details["champion-latency"].measures == (
        "max of latency over traces in svc, of the model version behind screener@champion, "
        "over the whole cycle (MLflow's query_trace_metrics)"
    )
    assert "- `champion-latency` follows `screener@champion`, now version 2" in render(report, "md")

    client.set_registered_model_alias("screener", "champion", "3")
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    latency = model_krs(runner)["champion-latency"]
    assert (latency["status"], latency["current"], latency["counted_runs"]) == ("not-started", None, 0)
    assert latency["notes"] == ["screener@champion (version 3) has no logged model for traces to name"]


def test_the_model_scope_is_mlflows_own_trace_metadata_key():
    from mlflow.tracing.constant import TraceMetadataKey

    assert traces.MODEL_ID_METADATA == TraceMetadataKey.MODEL_ID


@requires_okr_store
def test_an_alias_move_through_the_okr_registry_moves_a_model_scoped_trace_kr_live(
    versions, runner, tracking_uri
):
    assert invoke(runner, "sync", *AS_OF).exit_code == 0
    kr_run_id = api.status(now=NOW).find("champion-latency").run_id
    okr_uri = f"okr+{tracking_uri}"
    okr_client = MlflowClient(tracking_uri=okr_uri, registry_uri=okr_uri)
    for version, latency in (("1", 300.0), ("2", 90.0)):
        okr_client.set_registered_model_alias("screener", "champion", version)
        assert wait_for(
            lambda latency=latency: okr_client.get_run(kr_run_id).data.metrics.get(vocabulary.METRIC_VALUE)
            == latency
        )
    okr_client.delete_registered_model_alias("screener", "champion")
    assert wait_for(lambda: okr_client.get_run(kr_run_id).data.tags.get(vocabulary.TAG_COUNTED) == "0")
    assert invoke(runner, "sync", "--check", *AS_OF).exit_code == 0


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: sum\n"
            "        baseline: 2\n        target: 1\n",
            11,
            "aggregation sum is not one MLflow supports for latency on traces; "
            "it supports: avg, min, max, p50, p90, p95, p99",
        ),
        (
            "        source: traces\n        assessment: csat\n        aggregation: sum\n"
            "        maintain: {min: 4}\n",
            11,
            "aggregation sum is not one MLflow supports for assessment 'csat'; "
            "it supports: avg, min, max, p50, p90, p95, p99",
        ),
        (
            "        source: traces\n        trace_metric: latncy\n        aggregation: avg\n"
            "        baseline: 2\n        target: 1\n",
            10,
            "trace_metric 'latncy' is not one MLflow computes on traces; it computes: ",
        ),
        (
            "        source: traces\n        trace_metric: total_cost\n        aggregation: avg\n"
            "        baseline: 2\n        target: 1\n",
            10,
            "trace_metric 'total_cost' is not one MLflow computes on traces",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        assessment: csat\n"
            "        aggregation: avg\n        baseline: 2\n        target: 1\n",
            10,
            "a `source: traces` KR needs exactly one of `trace_metric` or `assessment`",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        filter: \"tags.env = 'prod'\"\n        baseline: 2\n        target: 1\n",
            12,
            "not a valid MLflow trace metrics filter",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        aggregate: mean\n        baseline: 2\n        target: 1\n",
            12,
            "a `source: traces` KR takes `aggregation`",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        baseline: {run_id: abc}\n        target: 1\n",
            12,
            "a `source: traces` KR takes a number as baseline",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        window: 7 days\n        baseline: 2\n        target: 1\n",
            12,
            "String should match pattern",
        ),
        (
            "        metric: acc\n        aggregation: p99\n        baseline: 1\n        target: 2\n",
            10,
            "aggregation only applies to `source: traces` KRs",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        model: {name: m, alias: a}\n"
            "        filter: \"trace.metadata.`mlflow.modelId` = 'm-1'\"\n"
            "        baseline: 2\n        target: 1\n",
            13,
            "a `model:` trace KR filters on mlflow.modelId itself (the version behind the alias); "
            "remove that clause from `filter`",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        model: {name: m}\n        baseline: 2\n        target: 1\n",
            12,
            "missing required key 'alias'",
        ),
        (
            "        source: traces\n        trace_metric: latency\n        aggregation: avg\n"
            "        dataset: {name: d}\n        baseline: 2\n        target: 1\n",
            12,
            "a `source: traces` KR takes no dataset",
        ),
    ],
)
def test_invalid_trace_krs_name_file_line_and_what_mlflow_supports(lines, line, message):
    with pytest.raises(SpecError) as error:
        parse_spec(one_kr(lines), "okrs.yaml")
    [problem] = error.value.problems
    assert problem.startswith(f"okrs.yaml:{line}: ")
    assert message in problem


def test_validate_exits_2_on_an_unsupported_aggregation(runner, write_spec):
    path = write_spec(
        one_kr("        source: traces\n        trace_metric: latency\n        aggregation: count\n"
            "        baseline: 2\n        target: 1\n")
    )
    result = invoke(runner, "validate", str(path))
    assert result.exit_code == 2
    where = f"{path}:11: objectives[0].key_results[0].aggregation: "
    assert where + "aggregation count is not one MLflow supports for latency on traces" in result.output


@requires_okr_store
def test_trace_writes_through_the_okr_store_move_the_kr_live(traced, tracking_uri, runner):
    """A trace logged through okr+sqlite shows in its KR within 5 s, as a recompute has it."""
    status = api.status(now=NOW)
    kr_run_id, csat_run_id = status.find("p99-latency").run_id, status.find("csat").run_id
    mlflow.set_tracking_uri(f"okr+{tracking_uri}")  # the tracing exporter writes where this points
    okr_client = MlflowClient(f"okr+{tracking_uri}")
    log_trace(okr_client, traced, NOV_1_MS + 200_000, 20_000)
    mlflow.flush_trace_async_logging()
    expected = hand_p99(LATENCIES_MS + [20_000])

    def moved() -> bool:
        return okr_client.get_run(kr_run_id).data.metrics.get(vocabulary.METRIC_VALUE) == expected

    assert wait_for(moved)
    trace_id = log_trace(okr_client, traced, NOV_1_MS + 300_000, 10)
    mlflow.flush_trace_async_logging()
    mlflow.log_feedback(trace_id=trace_id, name="csat", value=1.0)
    csat = statistics.fmean(CSAT + [1])
    assert wait_for(
        lambda: okr_client.get_run(csat_run_id).data.metrics.get(vocabulary.METRIC_VALUE) == csat
    )
    mlflow.set_tracking_uri(tracking_uri)
    assert wait_for(lambda: invoke(runner, "sync", "--check", *AS_OF).exit_code == 0)


def test_the_live_store_measures_a_trace_kr_over_the_experiments_it_matched_at_load(traced, client):
    from mlflow_okr.compute import KrComputation, computed_statuses
    from mlflow_okr.store.definitions import load_watched_krs
    from mlflow_okr.store.live import _trace_experiments

    watched = load_watched_krs(client)
    (published,) = watched.cycles.values()
    assert _trace_experiments(watched, (published.experiment_id, "p99-latency")) == [traced]
    assert _trace_experiments(watched, (published.experiment_id, "no-such-kr")) is None

    # The ids a computation carries are the experiments measured: no listing of every experiment
    kr = published.spec.find_key_result("p99-latency")
    empty = client.create_experiment("empty")
    for experiment_ids, current, counted in (([empty], None, 0), ([traced], hand_p99(LATENCIES_MS), 40)):
        computation = KrComputation(kr, experiment_ids=experiment_ids)
        status = computed_statuses(client, published, {kr.id: computation}, NOW)[kr.id]
        assert (status.current, status.counted_runs) == (current, counted)
