"""Trace KRs (`source: traces`): one value MLflow aggregates over the traces, spans or assessments
in a KR's scope.

The value is MLflow's own `query_trace_metrics` (its SQL aggregation, percentiles included, in
the tracking store or behind a server's REST API), never a number computed here over fetched
traces: a p99 over a million traces must stay one query. `sync`, `status` and the live store all
measure a trace KR with `measure`, and the engine scores the result (`engine.score_aggregate_kr`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mlflow_okr import compat

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mlflow_okr.registry import AliasTarget
    from mlflow_okr.spec import KeyResult, OkrSpec

TraceAggregation = Literal["count", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99"]
AGGREGATIONS: tuple[str, ...] = ("count", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99")
TraceView = Literal["traces", "spans"]
WINDOW_PATTERN = r"^[1-9][0-9]*[hdw]$"
_WINDOW_UNIT_MS = {"h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
# MLflow's metric names for "how many" in each view: a KR's counted_runs is this count.
_COUNT_METRICS = {"TRACES": "trace_count", "SPANS": "span_count", "ASSESSMENTS": "assessment_count"}
_ASSESSMENT_VALUE = "assessment_value"
# The trace metadata key MLflow stamps the active model's id under (TraceMetadataKey.MODEL_ID).
MODEL_ID_METADATA = "mlflow.modelId"
# A clause boundary: AND outside quotes (MLflow takes a trace metrics filter one clause at a time).
_QUOTED_OR_AND = re.compile(r"""('(?:[^']|'')*'|"[^"]*"|`[^`]*`)|\s+AND\s+""", re.IGNORECASE)


def _mlflow_type(aggregation: str) -> str:
    """MLflow's AggregationType name for one of ours: p99 -> PERCENTILE, avg -> AVG."""
    return "PERCENTILE" if aggregation.startswith("p") else aggregation.upper()


def supported_aggregations(view: str, metric_name: str) -> list[str]:
    """Our names of the aggregations MLflow supports for `metric_name` in `view` (TRACES, ...)."""
    types = compat.trace_metric_aggregations().get(view, {}).get(metric_name, frozenset())
    return [name for name in AGGREGATIONS if _mlflow_type(name) in types]


def split_filter(filter_string: str) -> list[str]:
    """The clauses of `a AND b` as MLflow's trace metrics filters take them, one per string."""
    clauses, current, position = [], "", 0
    for match in _QUOTED_OR_AND.finditer(filter_string):
        if match.group(1) is not None:
            continue
        current += filter_string[position : match.start()]
        clauses.append(current.strip())
        current, position = "", match.end()
    clauses.append((current + filter_string[position:]).strip())
    return [clause for clause in clauses if clause]


def window_ms(window: str) -> int:
    """`7d`, `24h`, `2w` in milliseconds."""
    return int(window[:-1]) * _WINDOW_UNIT_MS[window[-1]]


@dataclass(frozen=True)
class TraceQuery:
    """What one trace KR asks `query_trace_metrics`: view, metric, aggregation and filters."""

    view: Literal["TRACES", "SPANS", "ASSESSMENTS"]
    metric_name: str
    aggregation: str
    filters: tuple[str, ...]

    @property
    def count_metric(self) -> str:
        return _COUNT_METRICS[self.view]


def trace_query(
    trace_metric: str | None,
    assessment: str | None,
    view: str | None,
    aggregation: str,
    filter_string: str | None,
) -> TraceQuery:
    """The query of a trace KR's fields (checked or not: `check` reports what is wrong)."""
    filters = split_filter(filter_string) if filter_string else []
    if assessment is not None:
        metric_name = _COUNT_METRICS["ASSESSMENTS"] if aggregation == "count" else _ASSESSMENT_VALUE
        filters.append(f"assessment.name = '{assessment}'")
        return TraceQuery("ASSESSMENTS", metric_name, aggregation, tuple(filters))
    mlflow_view = "SPANS" if view == "spans" else "TRACES"
    return TraceQuery(mlflow_view, trace_metric or "", aggregation, tuple(filters))


def check(
    trace_metric: str | None,
    assessment: str | None,
    view: str | None,
    aggregation: str | None,
    filter_string: str | None,
) -> tuple[str, str] | None:
    """What is wrong with a trace KR's query fields, as (message, key); None when MLflow can run it."""
    if (trace_metric is None) == (assessment is None):
        return "a `source: traces` KR needs exactly one of `trace_metric` or `assessment`", "trace_metric"
    if assessment is not None and view is not None:
        return "`view` goes with `trace_metric`; an assessment is read from the assessments", "view"
    if assessment is not None and "'" in assessment:
        return f"assessment name {assessment!r} may not contain a quote", "assessment"
    if aggregation is None:
        return f"a `source: traces` KR needs `aggregation` ({', '.join(AGGREGATIONS)})", "aggregation"
    query = trace_query(trace_metric, assessment, view, aggregation, filter_string)
    metrics = compat.trace_metric_aggregations().get(query.view, {})
    where = f"on {query.view.lower()}"
    if query.metric_name not in metrics:
        known = ", ".join(name for name in sorted(metrics) if name != _COUNT_METRICS[query.view])
        return (
            f"trace_metric {trace_metric!r} is not one MLflow computes {where}; it computes: "
            f"{known}, {_COUNT_METRICS[query.view]}",
            "trace_metric",
        )
    supported = supported_aggregations(query.view, query.metric_name)
    if aggregation not in supported:
        subject = f"assessment {assessment!r}" if assessment else f"{query.metric_name} {where}"
        return (
            f"aggregation {aggregation} is not one MLflow supports for {subject}; "
            f"it supports: {', '.join(supported)}",
            "aggregation",
        )
    return check_filter(filter_string) if filter_string else None


def check_filter(filter_string: str) -> tuple[str, str] | None:
    """Whether MLflow's trace metrics grammar takes each clause of `filter_string`."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.search_utils import SearchTraceMetricsUtils

    for clause in split_filter(filter_string):
        try:
            SearchTraceMetricsUtils.parse_search_filter(clause)
        except MlflowException as exc:
            return f"not a valid MLflow trace metrics filter: {exc.message}", "filter"
    return None


def query_of(kr: KeyResult) -> TraceQuery:
    assert kr.aggregation is not None
    return trace_query(kr.trace_metric, kr.assessment, kr.view, kr.aggregation, kr.filter)


def label(kr: KeyResult) -> str:
    """What a trace KR measures, in a few words: `p99 latency`, `avg span total_cost`, `avg csat`."""
    name = kr.assessment or (f"span {kr.trace_metric}" if kr.view == "spans" else kr.trace_metric)
    return f"{kr.aggregation} {name}"


def describe(kr: KeyResult) -> str:
    """A sentence on how a trace KR is measured, for the KR run's description and the report."""
    query = query_of(kr)
    if query.view == "ASSESSMENTS":
        text = f"{kr.aggregation} of the {kr.assessment} assessments on traces"
    else:
        text = f"{kr.aggregation} of {kr.trace_metric} over {query.view.lower()}"
    text += " in " + (", ".join(kr.experiments) or "all experiments")
    if kr.model is not None:
        text += f", of the model version behind {kr.model.name}@{kr.model.alias}"
    if kr.filter:
        text += f" matching `{kr.filter}`"
    text += f", the last {kr.window}" if kr.window else ", over the whole cycle"
    return text + " (MLflow's query_trace_metrics)"


@dataclass(frozen=True)
class TraceMeasure:
    """A trace KR's value and how many traces, spans or assessments it covers, over a time span."""

    value: float | None
    count: int
    start_ms: int
    end_ms: int


def time_span(spec: OkrSpec, kr: KeyResult, now: dt.datetime) -> tuple[int, int]:
    """The [start, end] milliseconds a trace KR looks at: the cycle, or its last `window` of it.

    A whole-cycle KR does not depend on `now`, so a recompute at any time equals the stored state;
    a windowed one moves with time (up to the cycle's end), which the recount schedule follows.
    """
    cycle = spec.cycle
    if kr.window is None:
        return cycle.start_ms, cycle.end_ms
    end = min(int(now.timestamp() * 1000), cycle.end_ms)
    return max(cycle.start_ms, end - window_ms(kr.window)), end


def model_filter(model_id: str) -> str:
    """The trace metrics filter clause for the traces of one logged model."""
    return f"trace.metadata.`{MODEL_ID_METADATA}` = '{model_id}'"


def model_scope(client: MlflowClient, kr: KeyResult) -> tuple[AliasTarget | None, list[str]]:
    """The model version a `model:` trace KR counts the traces of (None: the KR has no `model:`),
    with a note on why no trace can count when the alias names no logged model."""
    from mlflow_okr import registry

    if kr.model is None:
        return None, []
    target = registry.alias_target(client, kr.model.name, kr.model.alias)
    if target.version is None:
        return target, [f"alias {target.label} does not exist yet"]
    if _traced_model_id(target) is None:
        return target, [f"{target.label} (version {target.version}) has no logged model for traces to name"]
    return target, []


def _traced_model_id(target: AliasTarget) -> str | None:
    """The logged model id the traces of `target`'s version carry (None: it has none; MLflow's ids
    are `m-<hex>`, and one with a quote could not be a filter value)."""
    model_id = target.model_id
    return model_id if model_id and "'" not in model_id else None


def measure(
    client: MlflowClient,
    spec: OkrSpec,
    kr: KeyResult,
    now: dt.datetime,
    experiment_ids: list[str] | None = None,
    model: AliasTarget | None = None,
) -> TraceMeasure:
    """Measure a trace KR with MLflow's `query_trace_metrics` (`experiment_ids`: matched already;
    `model`: where a `model:` KR's alias points, read already)."""
    from mlflow_okr import state

    start_ms, end_ms = time_span(spec, kr, now)
    query = query_of(kr)
    if kr.model is not None:
        if model is None:
            model, _ = model_scope(client, kr)
        model_id = _traced_model_id(model) if model is not None else None
        if model_id is None:  # no alias, or it names no logged model: no trace counts
            return TraceMeasure(None, 0, start_ms, end_ms)
        query = dataclasses.replace(query, filters=(*query.filters, model_filter(model_id)))
    if experiment_ids is None:
        experiment_ids = state.source_experiment_ids(client, kr.experiments)
    if not experiment_ids:
        return TraceMeasure(None, 0, start_ms, end_ms)
    span = (experiment_ids, start_ms, end_ms)
    count = _aggregate(client, query, query.count_metric, "count", *span)
    value = count
    if query.metric_name != query.count_metric:
        value = _aggregate(client, query, query.metric_name, query.aggregation, *span)
    if value is None or not count:
        return TraceMeasure(None, 0, start_ms, end_ms)
    return TraceMeasure(float(value), int(count), start_ms, end_ms)


def _aggregate(
    client: MlflowClient,
    query: TraceQuery,
    metric_name: str,
    aggregation: str,
    experiment_ids: list[str],
    start_ms: int,
    end_ms: int,
) -> float | None:
    from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

    if aggregation.startswith("p"):
        wanted = MetricAggregation(AggregationType.PERCENTILE, float(aggregation[1:]))
    else:
        wanted = MetricAggregation(AggregationType(aggregation.upper()))
    points = compat.store_of(client).query_trace_metrics(
        experiment_ids=experiment_ids,
        view_type=MetricViewType(query.view),
        metric_name=metric_name,
        aggregations=[wanted],
        filters=list(query.filters) or None,
        start_time_ms=start_ms,
        end_time_ms=end_ms,
    )
    for point in points:
        if str(wanted) in point.values:
            return point.values[str(wanted)]
    return None


def counted_noun(kr: KeyResult) -> str:
    """What a trace KR's count counts: traces, spans or assessments."""
    return "assessments" if kr.assessment else ("spans" if kr.view == "spans" else "traces")
