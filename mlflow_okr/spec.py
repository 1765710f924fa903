"""The OKR spec: pydantic models for okrs.yaml and the loader that reports file:line errors."""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mlflow_okr import traces, vocabulary
from mlflow_okr.check_codes import KR_CHECK_CODES, CheckCode, Measure
from mlflow_okr.engine import AT_RISK, ON_TRACK, Bound, RunRule, infer_direction, relative_change
from mlflow_okr.errors import SpecError
from mlflow_okr.traces import WINDOW_PATTERN, TraceAggregation, TraceView

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=64)]
# A finite number written as a number: YAML's `yes` or `.nan` is not a baseline.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
CYCLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# An aligns_to entry: [<cycle>:][<team>/]<objective id>.
OBJECTIVE_REF_PATTERN = r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*:)?(?:[a-z0-9][a-z0-9-]*/)?[a-z0-9][a-z0-9-]*$"

Direction = Literal["maximize", "minimize"]
Aggregate = Literal["best", "latest", "mean", "sum", "count", "min", "max"]
Transition = Literal["achieved", "at-risk", "off-track", "missed"]
TRANSITIONS: tuple[str, ...] = ("achieved", "at-risk", "off-track", "missed")


def _invalid(message: str, key: str | None = None) -> PydanticCustomError:
    """An error for a model validator; `key` is the field it is about, for the line number."""
    return PydanticCustomError("okr_invalid", message, {"key": key} if key else None)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cycle(StrictModel):
    """An OKR cycle: a name and an inclusive date range (UTC)."""

    name: str = Field(description="Cycle name, e.g. 2026-Q4; used in the experiment name okr/<name>.")
    start: dt.date
    end: dt.date

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, name: str) -> str:
        if not CYCLE_NAME.match(name):
            raise ValueError(
                f"cycle name {name!r} may only use letters, digits, '.', '_' and '-'"
            )
        return name

    @model_validator(mode="after")
    def _end_after_start(self) -> Cycle:
        if self.end < self.start:
            raise _invalid(f"cycle ends ({self.end}) before it starts ({self.start})", "end")
        return self

    @property
    def start_ms(self) -> int:
        return _utc_ms(self.start)

    @property
    def end_ms(self) -> int:
        """The last millisecond of the end date."""
        return _utc_ms(self.end + dt.timedelta(days=1)) - 1

    def contains(self, timestamp_ms: int | None) -> bool:
        return timestamp_ms is not None and self.start_ms <= timestamp_ms <= self.end_ms

    @property
    def dates(self) -> str:
        """`2026-10-01 .. 2026-12-31`, as messages write the cycle's dates."""
        return f"{self.start} .. {self.end}"

    def elapsed(self, now: dt.datetime) -> float:
        """The fraction of the cycle that has passed at `now`, in [0, 1]."""
        now_ms = as_utc(now).timestamp() * 1000
        span = self.end_ms + 1 - self.start_ms
        return min(1.0, max(0.0, (now_ms - self.start_ms) / span))

    def is_over(self, now: dt.datetime) -> bool:
        return as_utc(now).timestamp() * 1000 > self.end_ms


def as_utc(moment: dt.datetime) -> dt.datetime:
    """`moment` with a time zone; a naive datetime is taken as UTC, like every date in okrs.yaml."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def _utc_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)


def cycle_name_parts(name: str) -> tuple[int, str, int] | None:
    """2026-Q4 and Q4-2026 -> (2026, "Q", 4); 2026-H2 -> (2026, "H", 2); 2026 -> (2026, "", 0).

    None for a name that is none of these (a cycle given as {name, start, end}).
    """
    match = re.fullmatch(r"(\d{4})-?([QqHh])([1-4])|([QqHh])([1-4])-?(\d{4})|(\d{4})", str(name).strip())
    if not match:
        return None
    if match.group(7):
        return int(match.group(7)), "", 0
    unit = (match.group(2) or match.group(4)).upper()
    return int(match.group(1) or match.group(6)), unit, int(match.group(3) or match.group(5))


def parse_cycle(name: str) -> Cycle:
    """Turn a cycle name such as 2026-Q4, Q4-2026, 2026-H2 or 2026 into a Cycle."""
    text = str(name).strip()
    parts = cycle_name_parts(text)
    if parts is None:
        raise ValueError(
            f"unknown cycle {text!r}: use YYYY-Qn (2026-Q4), YYYY-Hn (2026-H2), YYYY, "
            "or a mapping {name, start, end}"
        )
    year, unit, number = parts
    if not unit:
        return Cycle(name=text, start=dt.date(year, 1, 1), end=dt.date(year, 12, 31))
    if unit == "H" and number > 2:
        raise ValueError(f"unknown cycle {text!r}: a half year is H1 or H2")
    months = 3 if unit == "Q" else 6
    first_month = (number - 1) * months + 1
    last_month = first_month + months - 1
    last_day = calendar.monthrange(year, last_month)[1]
    return Cycle(
        name=text,
        start=dt.date(year, first_month, 1),
        end=dt.date(year, last_month, last_day),
    )


class StatusThresholds(StrictModel):
    """Progress, as a multiple of the elapsed fraction, that separates the statuses."""

    on_track: Number = Field(ON_TRACK, ge=0, le=1)
    at_risk: Number = Field(AT_RISK, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> StatusThresholds:
        if self.at_risk > self.on_track:
            raise _invalid(
                f"at_risk ({self.at_risk}) must not exceed on_track ({self.on_track})", "at_risk"
            )
        return self


class Bounds(StrictModel):
    """A lower and/or upper bound on a metric."""

    min: Number | None = None
    max: Number | None = None

    @model_validator(mode="after")
    def _has_a_bound(self) -> Bounds:
        if self.min is None and self.max is None:
            raise _invalid("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _invalid(f"min ({self.min}) is greater than max ({self.max})", "min")
        return self

    def bound(self, metric: str) -> Bound:
        return Bound(metric=metric, min=self.min, max=self.max)


class Guardrail(Bounds):
    """A counter-metric: a run counts for the KR only while it stays within bounds."""

    metric: str = Field(min_length=1)


class BaselineRef(StrictModel):
    """A baseline read from MLflow: one run's value, or the best of the runs a filter matches."""

    run_id: str | None = None
    filter: str | None = None
    experiments: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> BaselineRef:
        if (self.run_id is None) == (self.filter is None):
            raise _invalid("a baseline reference needs exactly one of run_id or filter")
        if self.run_id is not None and self.experiments:
            raise _invalid("experiments only goes with filter, not with run_id", "experiments")
        if self.filter is not None:
            _check_filter(self.filter, "filter")
        return self


def _check_filter(filter_string: str, key: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.search_utils import SearchUtils

    try:
        for clause in SearchUtils.parse_search_filter(filter_string):
            # The parser accepts any comparator; MLflow rejects a wrong one only when it searches.
            kind, comparator = clause["type"], clause["comparator"].upper()
            name = SearchUtils.translate_key_alias(clause["key"])
            SearchUtils.is_metric(kind, comparator)
            SearchUtils.is_param(kind, comparator)
            SearchUtils.is_tag(kind, comparator)
            SearchUtils.is_attribute(kind, name, comparator)
            SearchUtils.is_dataset(kind, comparator)
    except MlflowException as exc:
        raise _invalid(f"not a valid MLflow search filter: {exc.message}", key) from None


class ModelRef(StrictModel):
    """A registered model's alias: the KR counts only the run behind the version it names now."""

    name: str = Field(min_length=1, description="Registered model name.")
    alias: str = Field(min_length=1, description="Alias, e.g. champion.")


class DatasetRef(StrictModel):
    """An evaluation dataset: only metric values MLflow logged against it count."""

    name: str = Field(min_length=1, description="Dataset name, as logged with the metric.")
    digest: str | None = Field(None, min_length=1, description="Only this version (digest) of it.")


class KeyResult(StrictModel):
    """One key result: a metric KR, a maintain KR, a ledger KR or a manual KR."""

    id: Slug
    title: str | None = None
    source: Literal["metric", "ledger", "manual", "traces"] = "metric"
    metric: str | None = Field(None, min_length=1, description="MLflow metric key.")
    unit: str | None = None
    experiments: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Experiment names (globs allowed) or ids; empty means all experiments.",
    )
    filter: str | None = Field(None, description="MLflow search_runs filter string.")
    baseline: Number | BaselineRef | None = None
    target: Number | str | None = Field(
        None, description='A number, or relative to the baseline: "+5%", "-10%".'
    )
    direction: Direction | None = None
    aggregate: Aggregate = "best"
    weight: Number = Field(1.0, gt=0)
    guardrails: list[Guardrail] = Field(default_factory=list)
    maintain: Bounds | None = None
    linked_to: str | None = Field(
        None, description="Ledger KRs: count only hypotheses linked to this objective or KR id."
    )
    count_only: Literal["significant"] | None = Field(
        None,
        description="Ledger KRs: `significant` counts only validated hypotheses whose Benjamini-Hochberg "
        "q-value across the cycle's evaluated hypotheses is at most 0.05.",
    )
    measures: Measure | None = Field(
        None,
        description="What the KR measures: a `business` or `product` outcome, or a `model` metric. "
        "Default: `model` for metric KRs, `business` for manual KRs; ledger KRs measure learning.",
    )
    # None, not [], when absent: the published spec (and its hash) of a file without it is unchanged.
    allow: list[CheckCode] | None = Field(
        None, description="OKR check codes not to warn about for this KR (okr-implausible-target)."
    )

    @field_validator("target")
    @classmethod
    def _target_form(cls, target: float | str | None) -> float | str | None:
        if isinstance(target, str) and relative_change(target) is None:
            raise ValueError(
                f'target {target!r} is neither a number nor a relative change such as "+5%" or "-10%"'
            )
        return target

    model: ModelRef | None = Field(
        None,
        description="Metric and maintain KRs: count only the run (or logged model) behind the version "
        "that holds this registry alias now. Trace KRs: count only the traces of that version's logged "
        "model.",
    )
    dataset: DatasetRef | None = Field(
        None,
        description="Metric and maintain KRs: count only values logged against this evaluation dataset.",
    )
    trace_metric: str | None = Field(
        None,
        min_length=1,
        description="Trace KRs: a metric MLflow computes over traces or spans (latency, total_tokens, "
        "total_cost, ...).",
    )
    assessment: str | None = Field(
        None, min_length=1, description="Trace KRs: the name of a feedback or expectation on traces."
    )
    view: TraceView | None = Field(None, description="Trace KRs: `traces` (default) or `spans`.")
    aggregation: TraceAggregation | None = Field(
        None, description="Trace KRs: how MLflow aggregates the metric, as it supports for that metric."
    )
    window: str | None = Field(
        None,
        pattern=WINDOW_PATTERN,
        description="Trace KRs: only the last `24h`, `7d`, `2w` of the cycle count; default the whole cycle.",
    )

    @field_validator("filter")
    @classmethod
    def _filter_parses(cls, filter_string: str | None, info: ValidationInfo) -> str | None:
        # A trace KR's filter is MLflow's trace metrics grammar, checked with the KR.
        if filter_string is not None and info.data.get("source") != "traces":
            _check_filter(filter_string, "filter")
        return filter_string

    @model_validator(mode="after")
    def _one_kind(self) -> KeyResult:
        for code in self.allow or []:
            if code not in KR_CHECK_CODES:
                raise _invalid(
                    f"{code} is about an objective; allow it on the objective, not on a KR", "allow"
                )
        if self.source == "ledger" and self.measures is not None:
            raise _invalid(
                "a `source: ledger` KR measures learning (validated hypotheses); it takes no measures",
                "measures",
            )
        if self.source != "traces":
            for key in ("trace_metric", "assessment", "view", "aggregation", "window"):
                if getattr(self, key) is not None:
                    raise _invalid(f"{key} only applies to `source: traces` KRs", key)
        if self.source == "metric":
            self._check_metric_kr()
        elif self.source == "traces":
            self._check_trace_kr()
        else:
            self._check_counter_kr()
        return self

    def _check_trace_kr(self) -> None:
        for key in ("metric", "linked_to", "count_only", "dataset"):
            if getattr(self, key) is not None:
                raise _invalid(f"a `source: traces` KR takes no {key}", key)
        # `model:` adds MLflow's filter on the model id each trace carries; a second one would
        # contradict it or say the same.
        if self.model is not None and self.filter and traces.MODEL_ID_METADATA in self.filter:
            raise _invalid(
                f"a `model:` trace KR filters on {traces.MODEL_ID_METADATA} itself (the version behind "
                "the alias); remove that clause from `filter`",
                "filter",
            )
        if self.guardrails:
            raise _invalid("a `source: traces` KR takes no guardrails", "guardrails")
        # The published spec carries the default `aggregate: best`; any other value is a mix-up.
        if self.aggregate != "best":
            raise _invalid(
                f"a `source: traces` KR takes `aggregation` ({', '.join(traces.AGGREGATIONS)}), "
                "not `aggregate`",
                "aggregate",
            )
        problem = traces.check(self.trace_metric, self.assessment, self.view, self.aggregation, self.filter)
        if problem is not None:
            raise _invalid(*problem)
        if isinstance(self.baseline, BaselineRef):
            raise _invalid("a `source: traces` KR takes a number as baseline", "baseline")
        self._check_goal()

    def _check_metric_kr(self) -> None:
        if self.metric is None:
            raise _invalid("a metric KR needs `metric` (or `source: ledger|manual`)", "metric")
        if self.linked_to is not None:
            raise _invalid("linked_to only applies to `source: ledger` KRs", "linked_to")
        if self.count_only is not None:
            raise _invalid("count_only only applies to `source: ledger` KRs", "count_only")
        if self.model is not None:
            for key in ("filter", "experiments"):
                if getattr(self, key):
                    raise _invalid(f"a `model:` KR takes no {key}: the alias picks the run", key)
        self._check_goal()

    def _check_goal(self) -> None:
        """A metric, maintain or trace KR: `maintain` alone, or a baseline and a target that move."""
        if self.maintain is not None:
            for key in ("target", "baseline", "direction"):
                if getattr(self, key) is not None:
                    raise _invalid(f"a maintain KR takes no {key}", key)
            return
        if self.target is None:
            raise _invalid(f"a {self.source} KR needs `target` (or `maintain: {{min|max}}`)", "target")
        if self.baseline is None:
            forms = "a number" if self.source == "traces" else "a number, {run_id} or {filter}"
            raise _invalid(f"a {self.source} KR needs `baseline`: {forms}", "baseline")
        if isinstance(self.baseline, BaselineRef):
            if self.baseline.filter is not None and self.direction is None and not isinstance(
                self.target, str
            ):
                raise _invalid(
                    "a {filter} baseline takes the best matching run, so give `direction` "
                    "(maximize or minimize) to say which is best",
                    "direction",
                )
            # A {run_id} baseline with an absolute target: direction is inferred once it resolves.
            if (
                self.direction is not None
                and isinstance(self.target, str)
                and self.direction != relative_direction(self.target)
            ):
                raise _invalid(
                    f"direction {self.direction} contradicts target {self.target!r}", "direction"
                )
            return
        if isinstance(self.target, str) and self.baseline == 0:
            raise _invalid(
                f"relative target {self.target!r} needs a non-zero baseline; give an absolute target",
                "target",
            )
        target = resolve_target(self.target, self.baseline)
        if target == self.baseline:
            raise _invalid(
                f"target equals baseline ({self.baseline:g}); a KR must move its metric", "target"
            )
        inferred = infer_direction(self.baseline, target, None)
        if self.direction is not None and self.direction != inferred:
            raise _invalid(
                f"direction {self.direction} contradicts baseline {self.baseline:g} "
                f"-> target {target:g}, which means {inferred}",
                "direction",
            )

    def _check_counter_kr(self) -> None:
        for key in ("metric", "baseline", "filter", "maintain", "direction", "model", "dataset"):
            if getattr(self, key) is not None:
                raise _invalid(f"a `source: {self.source}` KR takes no {key}", key)
        if self.guardrails:
            raise _invalid(f"a `source: {self.source}` KR takes no guardrails", "guardrails")
        if self.source == "manual" and self.linked_to is not None:
            raise _invalid("linked_to only applies to `source: ledger` KRs", "linked_to")
        if self.source == "manual" and self.count_only is not None:
            raise _invalid("count_only only applies to `source: ledger` KRs", "count_only")
        if self.target is None:
            raise _invalid(f"a `source: {self.source}` KR needs a numeric `target`", "target")
        if isinstance(self.target, str) or self.target <= 0:
            raise _invalid(f"a `source: {self.source}` KR needs a positive numeric target", "target")

    @property
    def kind(self) -> Literal["metric", "maintain", "ledger", "manual", "traces"]:
        if self.source != "metric":
            return self.source
        return "maintain" if self.maintain is not None else "metric"

    def rule(self) -> RunRule:
        """The run-counting rule of a metric or maintain KR, for the engine."""
        assert self.metric is not None
        return RunRule(
            metric=self.metric,
            aggregate=self.aggregate,
            guardrails=tuple(guardrail.bound(guardrail.metric) for guardrail in self.guardrails),
            maintain=self.maintain.bound(self.metric) if self.maintain else None,
        )

    def resolve(self, baseline: float | None) -> tuple[float | None, Direction | None]:
        """The absolute target and the direction, once the baseline value is known."""
        if self.target is None:
            return None, self.direction
        if baseline is None:
            # An absolute target is known before the baseline resolves; a relative one is not.
            if isinstance(self.target, str):
                return None, self.direction or relative_direction(self.target)
            return float(self.target), self.direction
        target = resolve_target(self.target, baseline)
        # "+5%" of a negative baseline lies below it: the direction follows baseline -> target.
        return target, infer_direction(baseline, target, self.direction)

    @property
    def label(self) -> str:
        return self.title or self.id

    @property
    def measure(self) -> Literal["business", "product", "model", "learning"]:
        """What the KR measures: as written, else a metric read from runs is a model metric, a
        check-in a business outcome, a ledger count learning."""
        if self.source == "ledger":
            return "learning"
        # Traces are what users meet in production: a product outcome unless said otherwise.
        implied = {"manual": "business", "traces": "product"}.get(self.source, "model")
        return self.measures or implied


def relative_direction(target: str) -> Direction:
    change = relative_change(target)
    assert change is not None
    return "maximize" if change > 0 else "minimize"


def resolve_target(target: float | str, baseline: float) -> float:
    """The absolute target: relative targets are a change of the baseline ("+5%" = 1.05 x)."""
    if isinstance(target, str):
        change = relative_change(target)
        assert change is not None
        return baseline * (1 + change)
    return float(target)


class Objective(StrictModel):
    """An objective: a qualitative goal measured by its key results."""

    id: Slug
    title: str = Field(min_length=1)
    category: Literal["product", "operational", "research"]
    owner: str | None = None
    aligns_to: list[Annotated[str, Field(pattern=OBJECTIVE_REF_PATTERN)]] = Field(
        default_factory=list,
        description="Objectives this one serves, in another set of the same cycle or of an enclosing "
        "cycle: `<objective id>`, `<team>/<objective id>` or `<cycle>:[<team>/]<objective id>`.",
    )
    alignment_weight: Number = Field(
        1.0, gt=0, description="This objective's weight in the score of each objective it aligns to."
    )
    allow: list[CheckCode] | None = Field(
        None, description="OKR check codes not to warn about for this objective and its KRs."
    )
    key_results: list[KeyResult] = Field(min_length=1)

    @model_validator(mode="after")
    def _aligned_once(self) -> Objective:
        if len(set(self.aligns_to)) != len(self.aligns_to):
            raise _invalid("aligns_to names an objective twice", "aligns_to")
        return self


class Notify(StrictModel):
    """Webhooks (Slack-compatible JSON) told about KR status transitions."""

    webhooks: list[Annotated[str, Field(pattern=r"^(https?://|\$\{[A-Za-z_][A-Za-z0-9_]*\})")]] = (
        Field(min_length=1, description="URLs, or ${ENV_VAR} to read one from the environment.")
    )
    transitions: list[Transition] = Field(default_factory=lambda: list(TRANSITIONS))


CycleField = Annotated[
    Cycle,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "2026-Q4, 2026-H2, Q4-2026 or 2026"},
                Cycle.model_json_schema(),
            ]
        }
    ),
]


class OkrSpec(StrictModel):
    """The whole okrs.yaml file."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="mlflow-okr okrs.yaml")
    # (file name, line map) of the file the spec was parsed from; errors found after parsing
    # (alignment, KR ids shared with other sets) name the line too.
    _source: tuple[str, Any] | None = PrivateAttr(default=None)
    # KR ids that a KR of another published cycle overlapping this one also uses (set when read
    # from MLflow): run tags name those KRs with their cycle, `okr.kr.<id>/<cycle>`.
    _shared_kr_ids: frozenset[str] = PrivateAttr(default=frozenset())
    # The published cycles inner to this one (set when read from MLflow; see `inner_cycles`).
    _inner_cycles: tuple[tuple[int, int, str], ...] = PrivateAttr(default=())

    version: Literal[1]
    team: Slug | None = Field(
        None,
        description="The team whose set this is; several teams' sets share a cycle. Without it the "
        "file is the cycle's unnamed set.",
    )
    cycle: CycleField
    status_thresholds: StatusThresholds = Field(default_factory=StatusThresholds)
    objectives: list[Objective] = Field(min_length=1)
    notify: Notify | None = None

    @field_validator("cycle", mode="before")
    @classmethod
    def _cycle_from_name(cls, value: Any) -> Any:
        if isinstance(value, (str, int)):
            return parse_cycle(str(value))
        return value

    @model_validator(mode="after")
    def _ids_unique(self) -> OkrSpec:
        objective_ids: set[str] = set()
        kr_ids: set[str] = set()
        for o_index, objective in enumerate(self.objectives):
            if objective.id in objective_ids:
                raise PydanticCustomError(
                    "okr_invalid",
                    "duplicate objective id '{id}'; objective ids are unique within the file",
                    {"id": objective.id, "path": ("objectives", o_index, "id")},
                )
            objective_ids.add(objective.id)
        for o_index, objective in enumerate(self.objectives):
            for k_index, kr in enumerate(objective.key_results):
                path = ("objectives", o_index, "key_results", k_index, "id")
                if kr.id in kr_ids:
                    raise PydanticCustomError(
                        "okr_invalid",
                        "duplicate key result id '{id}'; KR ids are unique across the file",
                        {"id": kr.id, "path": path},
                    )
                kr_ids.add(kr.id)
        for o_index, objective in enumerate(self.objectives):
            for k_index, kr in enumerate(objective.key_results):
                if kr.linked_to is not None and kr.linked_to not in objective_ids | kr_ids:
                    raise PydanticCustomError(
                        "okr_invalid",
                        "linked_to '{ref}' is neither an objective id nor a KR id in this file",
                        {
                            "ref": kr.linked_to,
                            "path": ("objectives", o_index, "key_results", k_index, "linked_to"),
                        },
                    )
        return self

    def key_results(self) -> list[tuple[Objective, KeyResult]]:
        return [(objective, kr) for objective in self.objectives for kr in objective.key_results]

    def find_key_result(self, kr_id: str) -> KeyResult | None:
        return next((kr for _, kr in self.key_results() if kr.id == kr_id), None)

    def __eq__(self, other: object) -> bool:
        # What was read (the fields), not where it came from or what MLflow holds beside it.
        if not isinstance(other, OkrSpec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(spec_json_text(self))

    def run_tag_id(self, kr_id: str) -> str:
        """How source-run tags name KR `kr_id`: `<id>`, or `<id>/<cycle>` when the id is shared.

        `tags."okr.kr.ctr" = 'counted'` finds the runs counted for KR ctr unless two overlapping
        published cycles (an annual and a quarterly set) both have a KR ctr; then each carries
        its cycle: `tags."okr.kr.ctr/2026-Q4" = 'counted'`.
        """
        return vocabulary.run_tag_id(kr_id, self.cycle.name, shared=kr_id in self._shared_kr_ids)

    @property
    def shared_kr_ids(self) -> frozenset[str]:
        """This spec's KR ids that another overlapping published cycle uses too (see `sharing`)."""
        return self._shared_kr_ids

    @property
    def inner_cycles(self) -> tuple[tuple[int, int, str], ...]:
        """(start ms, end ms, name) of the published cycles that overlap this one and are inner to
        it (`cycles.innermost_first`), innermost first (see `sharing`): a run this set counts
        carries, as okr.cycle, the first that contains its start, else this cycle's name
        (`scope.RunTagNames.run_cycle`)."""
        return self._inner_cycles

    @property
    def run_naming(self) -> tuple[frozenset[str], tuple[tuple[int, int, str], ...]]:
        """What this set's run tags depend on beyond its own fields: the KR ids it shares with
        overlapping cycles and the published cycles inner to it (both set by `sharing`)."""
        return self._shared_kr_ids, self._inner_cycles

    def sharing(self, kr_ids: frozenset[str], inner_cycles: tuple[Cycle, ...] = ()) -> OkrSpec:
        """This spec, knowing which of its KR ids other overlapping cycles use too, and which
        published cycles are inner to it (innermost first)."""
        copy = self.model_copy()
        copy._source = self._source
        copy._shared_kr_ids = kr_ids & {kr.id for _, kr in self.key_results()}
        copy._inner_cycles = tuple((cycle.start_ms, cycle.end_ms, cycle.name) for cycle in inner_cycles)
        return copy

    def where(self, *path: Any) -> str:
        """`file:line: key` of `path` in the file this spec was parsed from, for error messages."""
        source = self.__pydantic_private__.get("_source") if self.__pydantic_private__ else None
        if source is None:
            return _format_path(path)
        name, lines = source
        return _located(path, "", lines, name).removesuffix(": ")

    def locate_kr(self, kr_id: str) -> tuple[Any, ...]:
        """The path of KR `kr_id`'s id in the file."""
        for o_index, objective in enumerate(self.objectives):
            for k_index, kr in enumerate(objective.key_results):
                if kr.id == kr_id:
                    return ("objectives", o_index, "key_results", k_index, "id")
        return ()

    @functools.cached_property
    def summing_kr_ids(self) -> frozenset[str]:
        """The metric KRs whose value adds up their runs' values (sum, mean); asked once a run."""
        return frozenset(kr.id for _, kr in self.key_results() if kr.metric and kr.rule().sums)


# ---------------------------------------------------------------------------------------------
# Loading with line numbers


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e3 and 2E-4 as numbers the way YAML 1.2 does, not as strings."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _LineMap:
    """Maps a path of keys/indices in the YAML document to the line (1-based) it starts on."""

    def __init__(self, root: yaml.Node | None):
        self.lines: dict[tuple[Any, ...], int] = {}
        self.duplicates: list[tuple[tuple[Any, ...], int]] = []
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    self.duplicates.append((path + (key,), key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                self._walk(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, path + (index,))

    def line_of(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the mapping that `loc` (minus its last element) points into."""
    model: Any = OkrSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
        elif isinstance(part, str) and part in _MODELS:
            model = _MODELS[part]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as list[X], X | None or Annotated[X, ...]."""
    stack = [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            return current
        stack.extend(getattr(current, "__args__", ()) or ())
        if hasattr(current, "__origin__") and getattr(current, "__metadata__", None):
            stack.append(current.__origin__)
    return None


_MODELS = {
    model.__name__: model
    for model in (
        Cycle, StatusThresholds, Bounds, Guardrail, BaselineRef, ModelRef, DatasetRef, KeyResult, Objective
    )
}


def _format_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _is_union_tag(part: Any) -> bool:
    """Whether `part` of an error location names a union member (float, str, BaselineRef, ...)."""
    return isinstance(part, str) and (part in {"float", "str", "int"} or part in _MODELS or "[" in part)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union member tags (float, str, BaselineRef, ...) from an error location."""
    return tuple(part for part in loc if not _is_union_tag(part))


def _error_loc(error: Any) -> tuple[Any, ...]:
    """An error's cleaned location; an unknown key is the user's text, so it is never dropped."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return _clean_loc(loc[:-1]) + loc[-1:]
    return _clean_loc(loc)


def _is_type_mismatch(error: Any) -> bool:
    return error["type"].endswith(("_type", "_parsing"))


def _union_member_noun(tag: str) -> str:
    if tag in ("float", "int"):
        return "a number"
    if tag == "str" or tag.endswith(" str]"):
        return "a string"
    return "a mapping"


def _union_errors(errors: list[Any]) -> list[Any]:
    """One error per union field: the member that got furthest, or a single "expected A or B".

    Pydantic reports a failed union once per member; "Input should be a valid number" for a
    mapping baseline hides the real problem inside the mapping.
    """
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for error in errors:
        loc = tuple(error["loc"])
        tags = [index for index, part in enumerate(loc) if _is_union_tag(part)]
        if tags:
            groups.setdefault(loc[: tags[0]], []).append(error)
    kept = []
    for error in errors:
        loc = tuple(error["loc"])
        tags = [index for index, part in enumerate(loc) if _is_union_tag(part)]
        if not tags:
            kept.append(error)
            continue
        group = groups[loc[: tags[0]]]
        if not all(_is_type_mismatch(member) for member in group):
            if not _is_type_mismatch(error):
                kept.append(error)
        elif error is group[0]:
            nouns = dict.fromkeys(_union_member_noun(tuple(m["loc"])[tags[0]]) for m in group)
            kept.append(
                {**error, "type": "union_mismatch",
                 "msg": f"expected {' or '.join(nouns)}, got {error['input']!r}"}
            )
    return kept


def _problems(exc: ValidationError, lines: _LineMap, source: str) -> list[str]:
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen_paths: set[tuple[Any, ...]] = set()
    unknown_keys: dict[tuple[Any, ...], list[str]] = {}
    errors = _union_errors(exc.errors())
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = _error_loc(error)
            unknown_keys.setdefault(loc[:-1], []).append(str(loc[-1]))
    for error in errors:
        context = error.get("ctx") or {}
        loc = _error_loc(error)
        if "path" in context:
            loc = tuple(context["path"])
        elif context.get("key") and loc[-1:] != (context["key"],):
            loc = loc + (context["key"],)
        if loc in seen_paths:
            continue
        seen_paths.add(loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            key = str(loc[-1])
            allowed = _known_keys(loc)
            close = difflib.get_close_matches(key, allowed, n=1)
            message = f"unknown key {key!r}"
            message += f"; did you mean {close[0]!r}?" if close else ""
            if allowed:
                message += f" (allowed: {', '.join(allowed)})"
        elif error["type"] == "missing":
            key = str(loc[-1])
            # A misspelt key already reports "did you mean <key>"; "missing <key>" would repeat it.
            if any(difflib.get_close_matches(typo, [key], n=1) for typo in unknown_keys.get(loc[:-1], [])):
                continue
            message = f"missing required key {key!r}"
        elif error["type"] == "string_pattern_mismatch" and context.get("pattern") == OBJECTIVE_REF_PATTERN:
            message = (
                f"{error['input']!r} is not an objective reference: use <objective id>, "
                "<team>/<objective id> or <cycle>:<objective id>"
            )
        elif error["type"] == "string_pattern_mismatch" and "a-z0-9" in str(context.get("pattern")):
            message = f"{error['input']!r} is not a valid id: use lowercase letters, digits and '-'"
        elif error["type"] == "literal_error":
            message = f"{error['input']!r} is not allowed: expected {context.get('expected')}"
        elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
            allowed = _known_keys(loc + ("",))
            keys = f" with keys such as {', '.join(allowed[:4])}" if allowed else ""
            message = f"expected a mapping{keys}, got {error['input']!r}"
        problems.append((loc, message))
    return [_located(loc, message, lines, source) for loc, message in problems]


def _located(loc: tuple[Any, ...], message: str, lines: _LineMap, source: str) -> str:
    line = lines.line_of(loc)
    where = f"{source}:{line}" if line else source
    return f"{where}: {_format_path(loc)}: {message}"


def parse_spec(text: str, source: str = "okrs.yaml") -> OkrSpec:
    """Parse and validate okrs.yaml text; raise SpecError naming file, line and key."""
    try:
        root = yaml.compose(text, Loader=SpecLoader)
        data = yaml.load(text, Loader=SpecLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{where}: YAML syntax error: {problem}"]) from None
    lines = _LineMap(root)
    if data is None:
        raise SpecError([f"{source}: the file is empty; start from `mlflow-okr init`"])
    if not isinstance(data, dict):
        raise SpecError(
            [f"{source}:1: expected a mapping with version, cycle and objectives, "
             f"got {type(data).__name__}"]
        )
    if lines.duplicates:
        raise SpecError(
            [
                f"{source}:{line}: {_format_path(path)}: duplicate key {path[-1]!r}; "
                "a key may appear only once in a mapping"
                for path, line in lines.duplicates
            ]
        )
    try:
        spec = OkrSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc, lines, source)) from None
    spec._source = (source, lines)
    return spec


def load_spec(path: str | Path) -> OkrSpec:
    """Read and validate an okrs.yaml file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read the file: {exc}"]) from None
    return parse_spec(text, str(path))


def spec_json_text(spec: OkrSpec) -> str:
    """The spec as canonical JSON: what is published, hashed and compared."""
    import json

    return json.dumps(spec.model_dump(mode="json", exclude_none=True), sort_keys=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of okrs.yaml, for editors."""
    schema = OkrSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
