"""MLflow behaves exactly the same through `okr+sqlite` as through plain `sqlite`.

One scripted sequence of tracking operations runs against two separate stores, one plain and one
behind the okr+ plugin (both with the same OKR cycle published, so the hooks are busy). The
results are compared entity by entity. Ignored: ids and wall-clock times that are random by
nature, artifact locations (different directories), and the `okr.*` tags the plugin adds by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    Metric,
    Param,
    Run,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store

from mlflow_okr.api import apply_spec
from mlflow_okr.spec import parse_spec
from tests.conftest import IN_CYCLE_MS, requires_okr_store

pytestmark = requires_okr_store

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: quality
    title: Better model
    category: product
    key_results:
      - id: acc
        metric: acc
        experiments: ["exp-*"]
        filter: "tags.stage = 'prod'"
        baseline: 0.5
        target: 1.0
        guardrails:
          - {metric: latency, max: 50}
      - id: loss
        metric: loss
        baseline: 1.0
        target: 0.1
        aggregate: latest
"""
T = IN_CYCLE_MS


def canonical(value: Any) -> Any:
    """Floats as their repr, so NaN equals NaN; containers recursively."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


class Recorder:
    """Runs the sequence on one store, recording every result with stable names for random ids."""

    def __init__(self, uri: str):
        self.client = MlflowClient(uri)
        self.uri = uri
        self.names: dict[str, str] = {}
        self.record: list[tuple[str, Any]] = []

    def name(self, kind: str, random_id: str) -> str:
        count = sum(name.startswith(kind) for name in self.names.values())
        return self.names.setdefault(random_id, f"{kind}{count}")

    def note(self, label: str, value: Any) -> None:
        self.record.append((label, canonical(value)))

    def attempt(self, label: str, call) -> Any:
        """Record a call's result, or the type and error code of the exception it raised."""
        try:
            result = call()
        except MlflowException as error:
            self.note(label, ("error", type(error).__name__, error.error_code))
            return None
        return result

    def run_view(self, run: Run) -> dict[str, Any]:
        info, data = run.info, run.data
        return {
            "id": self.name("run", info.run_id),
            "experiment": info.experiment_id,
            "name": info.run_name,
            "status": info.status,
            "start": info.start_time,
            "end": info.end_time,
            "stage": info.lifecycle_stage,
            "user": info.user_id,
            "metrics": dict(sorted(data.metrics.items())),
            "params": dict(sorted(data.params.items())),
            "tags": {k: v for k, v in sorted(data.tags.items()) if not k.startswith("okr.")},
            "datasets": sorted(
                (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
                 tuple(sorted((t.key, t.value) for t in d.tags)))
                for d in run.inputs.dataset_inputs
            ),
        }

    def experiment_view(self, experiment) -> dict[str, Any]:
        return {
            "id": experiment.experiment_id,
            "name": experiment.name,
            "stage": experiment.lifecycle_stage,
            "tags": dict(sorted(experiment.tags.items())),
        }


def sequence(rec: Recorder) -> None:
    """The operations, in order. Every result is noted in `rec.record`."""
    client = rec.client
    # Experiments: create, tag, rename, delete, restore, search.
    exp_a = client.create_experiment("exp-a", tags={"team": "reco"})
    exp_b = client.create_experiment("exp-b")
    scratch = client.create_experiment("scratch")
    client.set_experiment_tag(exp_b, "team", "search")
    client.rename_experiment(scratch, "exp-scratch")
    client.delete_experiment(scratch)
    rec.note("deleted experiment", rec.experiment_view(client.get_experiment(scratch)))
    client.restore_experiment(scratch)
    rec.attempt("duplicate experiment", lambda: client.create_experiment("exp-a"))
    rec.attempt("missing experiment", lambda: client.get_experiment("999999"))
    for view in (ViewType.ACTIVE_ONLY, ViewType.ALL):
        found = client.search_experiments(
            view_type=view, filter_string="name LIKE 'exp-%'", order_by=["name DESC"]
        )
        rec.note(f"search experiments {view}", [rec.experiment_view(e) for e in found])
    found = client.search_experiments(filter_string="tags.team = 'reco'")
    rec.note("search experiments by tag", [e.name for e in found])

    # Runs: create with tags and names, params, metrics with steps and history, batches, tags.
    runs = []
    for index in range(6):
        run = client.create_run(
            exp_a if index % 2 == 0 else exp_b,
            start_time=T + index * 1000,
            tags={"stage": "prod" if index < 4 else "dev", "index": str(index)},
            run_name=f"run-{index}",
        )
        runs.append(run.info.run_id)
        rec.name("run", run.info.run_id)
        client.log_param(run.info.run_id, "lr", str(0.1 * (index + 1)))
        for step in range(3):
            value = 0.5 + 0.05 * index + 0.01 * step
            client.log_metric(run.info.run_id, "acc", value, timestamp=T + step, step=step)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("latency", 10.0 * index, T + 10, 0), Metric("loss", 1 - 0.1 * index, T + 10, 0)],
            params=[Param("depth", str(index))],
            tags=[RunTag("batch", "yes"), RunTag("stage", "prod" if index != 2 else "dev")],
        )
    client.log_metric(runs[0], "acc", float("nan"), timestamp=T + 20, step=3)
    client.log_metric(runs[1], "acc", float("inf"), timestamp=T + 20, step=-5)
    client.log_metric(runs[1], "acc", 0.42, timestamp=T + 21, step=-5)
    client.set_tag(runs[3], "note", "x" * 8000)
    client.delete_tag(runs[5], "batch")
    rec.attempt("duplicate param", lambda: client.log_param(runs[0], "lr", "changed"))
    rec.attempt("bad metric key", lambda: client.log_metric(runs[0], "bad//key", 1.0, timestamp=T))
    rec.attempt("missing tag", lambda: client.delete_tag(runs[0], "no-such-tag"))
    rec.attempt("missing run", lambda: client.get_run("0" * 32))

    # Datasets through log_inputs.
    dataset = Dataset("train", "digest01", "local", '{"uri": "data.csv"}', schema='{"x": "int"}')
    client.log_inputs(runs[0], [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
    client.log_inputs(runs[1], [DatasetInput(dataset, [InputTag("mlflow.data.context", "eval")])])

    # Run ends, renames, deletes and restores.
    client.set_terminated(runs[0], "FINISHED", end_time=T + 60_000)
    client.set_terminated(runs[1], "FAILED", end_time=T + 61_000)
    client.set_terminated(runs[2], "KILLED", end_time=T + 62_000)
    client.update_run(runs[3], name="renamed")
    client.delete_run(runs[4])
    client.delete_run(runs[5])
    client.restore_run(runs[5])
    rec.attempt("terminate deleted run", lambda: client.log_metric(runs[4], "acc", 1.0, timestamp=T))

    for run_id in runs:
        rec.note("run", rec.run_view(client.get_run(run_id)))
        history = client.get_metric_history(run_id, "acc")
        rec.note("history", [(m.value, m.step, m.timestamp) for m in history])

    # Search runs: filters, order, every view, pagination.
    queries = [
        ("", ["metrics.acc DESC"]),
        ("metrics.acc > 0.6", ["attributes.start_time ASC"]),
        ("tags.stage = 'prod' AND params.depth != '1'", ["params.lr DESC"]),
        ("attributes.status = 'FINISHED'", []),
        ("attributes.run_name LIKE 'run-%'", ["attributes.run_name"]),
        ("datasets.name = 'train'", ["metrics.loss ASC"]),
        ("tags.batch = 'yes'", ["tags.index DESC"]),
    ]
    for filter_string, order in queries:
        for view in (ViewType.ACTIVE_ONLY, ViewType.DELETED_ONLY, ViewType.ALL):
            found = client.search_runs([exp_a, exp_b], filter_string, view, order_by=order)
            names = [rec.name("run", r.info.run_id) for r in found]
            rec.note(f"search {filter_string!r} {order} {view}", names)
    token, pages = None, []
    while True:
        page = client.search_runs([exp_a, exp_b], "", ViewType.ALL, max_results=2, order_by=["metrics.acc"],
                                  page_token=token)
        pages.append([rec.name("run", r.info.run_id) for r in page])
        token = page.token
        if not token:
            break
    rec.note("pages", pages)

    # Logged models.
    model = client.create_logged_model(exp_a, name="clf", source_run_id=runs[0], tags={"k": "v"},
                                       params={"alpha": "1"})
    client.log_model_params(model.model_id, {"beta": "2"})
    client.set_logged_model_tags(model.model_id, {"stage": "candidate"})
    client.log_batch(runs[0], metrics=[Metric("acc", 0.99, T + 30, 4, model_id=model.model_id)])
    client.finalize_logged_model(model.model_id, "READY")
    stored = client.get_logged_model(model.model_id)
    rec.note("logged model", (stored.name, str(stored.status), stored.params, stored.tags,
                              rec.name("run", stored.source_run_id),
                              sorted((m.key, m.value, m.step) for m in stored.metrics or [])))
    found = client.search_logged_models([exp_a], filter_string="name = 'clf'")
    rec.note("search logged models", [m.name for m in found])
    rec.note("run after model", rec.run_view(client.get_run(runs[0])))

    # Traces: the fluent tracing API exports through the global tracking URI's store.
    mlflow.set_tracking_uri(rec.uri)
    try:
        mlflow.set_experiment(experiment_id=exp_a)

        @mlflow.trace(name="predict")
        def predict(x: int) -> int:
            with mlflow.start_span("featurize") as span:
                span.set_attribute("rows", x)
            return x * 2

        predict(3)
        predict(5)
        mlflow.flush_trace_async_logging()  # traces are exported in the background
        traces = client.search_traces(locations=[exp_a], order_by=["timestamp_ms ASC"])
        # Two traces may start in the same millisecond: their order is then the database's.
        traces = sorted(traces, key=lambda t: (t.info.timestamp_ms, t.info.request_preview))
        rec.note("traces", [
            (str(t.info.state), t.info.request_preview, t.info.response_preview,
             sorted((span.name, span.attributes.get("rows")) for span in t.data.spans))
            for t in traces
        ])
        first = client.get_trace(traces[0].info.trace_id)
        rec.note("get trace", (str(first.info.state), [span.name for span in first.data.spans]))
        client.set_trace_tag(first.info.trace_id, "reviewed", "yes")
        tagged = client.search_traces(locations=[exp_a], filter_string="tags.reviewed = 'yes'")
        rec.note("search traces by tag", [t.info.request_preview for t in tagged])
    finally:
        mlflow.set_tracking_uri(None)

    # Experiment deletion hides its runs.
    client.delete_experiment(exp_b)
    rec.note("after deleting exp-b", [rec.name("run", r.info.run_id)
                                      for r in client.search_runs([exp_a, exp_b], "", ViewType.ALL)])
    rec.attempt("create run in deleted experiment", lambda: client.create_run(exp_b, start_time=T))


def run_both(tmp_path: Path) -> tuple[Recorder, Recorder]:
    recorders = []
    for scheme, name in (("sqlite", "plain.db"), ("okr+sqlite", "okr.db")):
        plain_uri = f"sqlite:///{tmp_path / name}"
        apply_spec(parse_spec(SPEC), tracking_uri=plain_uri)
        recorder = Recorder(f"{scheme}:///{tmp_path / name}")
        sequence(recorder)
        if scheme.startswith("okr+"):
            from mlflow_okr.store import flush

            flush(_get_store(recorder.uri))
        recorders.append(recorder)
    return recorders[0], recorders[1]


def test_okr_store_gives_mlflow_results_unchanged(tmp_path):
    plain, okr = run_both(tmp_path)
    assert [label for label, _ in okr.record] == [label for label, _ in plain.record]
    for (label, expected), (_, actual) in zip(plain.record, okr.record, strict=True):
        assert actual == expected, label
    assert len(plain.record) > 40
    errors = {label: v for label, v in plain.record if isinstance(v, list) and v[:1] == ["error"]}
    assert errors["duplicate experiment"][2] == "RESOURCE_ALREADY_EXISTS"
    assert errors["missing run"][2] == "RESOURCE_DOES_NOT_EXIST"
    recorded = dict(plain.record)
    assert [trace[1:3] for trace in recorded["traces"]] == [['{"x": 3}', "6"], ['{"x": 5}', "10"]]
    assert recorded["search traces by tag"] == ['{"x": 3}']

    # The comparison is meaningful only if the plugin was really at work on the okr+ side.
    exp_a = okr.client.get_experiment_by_name("exp-a").experiment_id
    tagged = okr.client.search_runs([exp_a], "tags.`okr.kr.acc` LIKE '%'", ViewType.ALL)
    assert tagged, "the okr+ store added no okr.kr.* tag: the hooks did not run"
    exp_a = plain.client.get_experiment_by_name("exp-a").experiment_id
    assert plain.client.search_runs([exp_a], "tags.`okr.kr.acc` LIKE '%'", ViewType.ALL) == []
