"""`mlflow-okr suggest`: a draft okrs.yaml for the next cycle, from this cycle's track record.

Calibration: for a metric KR, the observed rate of improvement is the change of its `okr.value`
history from the baseline to the last value, divided by the days of the cycle observed. Projected
over the next cycle, that rate gives the improvement the team can expect; the target is set so that
this projection reaches 70% of the way from the new baseline (the current value) to the target:
target = current + projected / 0.7. Expected attainment is then about 0.7, the conventional mark of
a well-set OKR. Ledger KRs get the same treatment from the number of hypotheses validated.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import yaml
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import state, vocabulary
from mlflow_okr.engine import SUCCESS_GRADE
from mlflow_okr.errors import InputError
from mlflow_okr.ledger import store as ledger_store
from mlflow_okr.ledger.models import Hypothesis
from mlflow_okr.spec import (
    BaselineRef,
    Cycle,
    KeyResult,
    Objective,
    OkrSpec,
    cycle_name_parts,
    parse_cycle,
    parse_spec,
)

EXPECTED_ATTAINMENT = SUCCESS_GRADE
NEW_OBJECTIVE_ID = "validated-learnings"
DraftKr = tuple[dict[str, Any], list[str]]  # a KR's fields and the comments saying where they came from


class Draft(BaseModel):
    """A suggested okrs.yaml: its text (with a comment per KR), cycle and what it came from."""

    cycle: str
    team: str | None = None
    source_cycle: str
    key_results: int
    text: str


# ---------------------------------------------------------------------------------------------
# Cycles


def next_cycle_after(cycle: Cycle) -> str:
    """The name of the cycle after `cycle`: 2026-Q4 -> 2027-Q1, 2026-H2 -> 2027-H1, 2026 -> 2027."""
    name = cycle.name
    parts = cycle_name_parts(name)
    if parts is None:
        raise InputError(
            f"cannot tell which cycle follows {name!r}; name the next one, e.g. 2027-Q1",
            parameter="cycle",
        )
    year, unit, number = parts
    if not unit:
        return str(year + 1)
    number += 1
    if number > (4 if unit == "Q" else 2):
        year, number = year + 1, 1
    return f"{year}-{unit}{number}"


def _next_cycle(name: str | None, current: Cycle) -> tuple[Cycle, Any]:
    """The next cycle and how to write it in YAML (a name, or a {name, start, end} mapping)."""
    name = name or next_cycle_after(current)
    try:
        cycle = parse_cycle(name)
        return cycle, cycle.name
    except ValueError:
        # A custom name: a window as long as this cycle, starting the day after it ends.
        length = current.end - current.start
        start = current.end + dt.timedelta(days=1)
        cycle = Cycle(name=name, start=start, end=start + length)
        return cycle, {"name": name, "start": cycle.start.isoformat(), "end": cycle.end.isoformat()}


def _days(cycle: Cycle) -> float:
    return (cycle.end_ms + 1 - cycle.start_ms) / vocabulary.MS_PER_DAY


# ---------------------------------------------------------------------------------------------
# Numbers


def _round(value: float, digits: int = 4, away_from: float | None = None) -> float:
    """`value` to `digits` significant digits, more if needed to stay different from `away_from`."""
    for precision in range(digits, 16):
        rounded = float(f"{value:.{precision}g}")
        if away_from is None or rounded != away_from:
            return rounded
    return value


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _signed(value: float) -> str:
    return f"{value:+.4g}"


def _is_ratio(*values: float) -> bool:
    return all(0.0 <= value <= 1.0 for value in values)


def within_natural_bounds(
    target: float, current: float, start: float, sign: float
) -> tuple[float, str | None]:
    """Keep a target reachable: a [0, 1] ratio below 1 (or above 0), a non-negative metric above 0.

    A target past the bound is replaced by the point halfway from the current value to the bound.
    """
    if _is_ratio(current, start):
        bound, kind = (1.0 if sign > 0 else 0.0), "like a ratio in [0, 1]"
    elif sign < 0 and current > 0 and start >= 0:
        bound, kind = 0.0, "non-negative"
    else:
        return target, None
    if sign * (target - bound) <= 0:
        return target, None
    return current + (bound - current) / 2, f"capped halfway to {bound:g}: the metric looks {kind}"


class Calibrated(BaseModel):
    baseline: float
    target: float
    comments: list[str]


def calibrate_metric(
    history: list[tuple[int, float]],
    baseline: float | None,
    target: float | None,
    direction: str,
    cycle: Cycle,
    observed_until_ms: int,
    next_days: float,
) -> Calibrated | None:
    """Next cycle's baseline and target from a KR's `okr.value` history; None without history."""
    window = [(t, v) for t, v in history if cycle.start_ms <= t <= observed_until_ms]
    points = sorted((t, v) for t, v in window if math.isfinite(v))
    if not points:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    current = points[-1][1]
    start_ms, start_value = (cycle.start_ms, baseline) if baseline is not None else points[0]
    days = max((observed_until_ms - start_ms) / vocabulary.MS_PER_DAY, 1.0)
    improvement = sign * (current - start_value)
    new_baseline = _round(current, 6)
    observed = (
        f"{cycle.name}: {vocabulary.METRIC_VALUE} {_fmt(start_value)} -> {_fmt(current)} "
        f"over {days:.0f} days ({len(points)} points)"
    )
    if improvement <= 0:
        if target is not None and sign * (target - current) > 0:
            next_target = target
            why = f"no improvement observed, so the unmet target {_fmt(target)} is kept"
        else:
            gap = abs(target - start_value) if target is not None else abs(current) * 0.05 or 1.0
            next_target = current + sign * gap
            why = f"no improvement observed; the target keeps this cycle's gap of {_fmt(gap)}"
        next_target = _round(next_target, away_from=new_baseline)
        return Calibrated(baseline=new_baseline, target=next_target, comments=[observed, why])
    rate = improvement / days
    projected = rate * next_days
    next_target = current + sign * projected / EXPECTED_ATTAINMENT
    comments = [
        f"{observed}: {_signed(sign * rate)}/day",
        f"{next_days:.0f}-day cycle projects {_signed(sign * projected)}; target = {_fmt(current)} "
        f"{'+' if sign > 0 else '-'} {_fmt(projected)} / {EXPECTED_ATTAINMENT} so the projection is "
        f"{EXPECTED_ATTAINMENT:.0%} of the way",
    ]
    next_target, cap = within_natural_bounds(next_target, current, start_value, sign)
    comments += [cap] if cap else []
    next_target = _round(next_target, away_from=new_baseline)
    return Calibrated(baseline=new_baseline, target=next_target, comments=comments)


# ---------------------------------------------------------------------------------------------
# The draft


class _Drafter:
    def __init__(self, client: MlflowClient, published: state.PublishedCycle, next_cycle: Cycle, now_ms: int):
        self.client = client
        self.published = published
        self.cycle = published.cycle
        self.next_cycle = next_cycle
        self.observed_until_ms = min(now_ms, self.cycle.end_ms)
        self.observed_days = max((self.observed_until_ms - self.cycle.start_ms) / vocabulary.MS_PER_DAY, 1.0)
        self.validated = [
            h for h in ledger_store.load_all(client)
            if h.status == "validated" and self.cycle.contains(h.resolved_at)
        ]

    def metric_of(self, hypothesis: Hypothesis) -> str | None:
        """The metric a hypothesis is about: its own, the one it was evaluated on, or its KR's."""
        if hypothesis.metric:
            return hypothesis.metric
        if (hypothesis.evaluation or {}).get("metric"):
            return hypothesis.evaluation["metric"]
        kr = self.published.spec.find_key_result(hypothesis.kr) if hypothesis.kr else None
        return kr.metric if kr else None

    def _history(self, kr: KeyResult) -> list[tuple[int, float]]:
        run_id = self.published.kr_runs.get(kr.id)
        if run_id is None:
            return []
        return state.kr_values(self.client, run_id)

    def metric_kr(self, kr: KeyResult) -> tuple[dict[str, Any], list[str]]:
        fields = _carried_fields(kr)
        baseline, _ = state.resolve_baseline(self.client, kr)
        target, direction = kr.resolve(baseline)
        calibrated = None
        if direction is not None:
            calibrated = calibrate_metric(
                self._history(kr), baseline, target, direction, self.cycle,
                self.observed_until_ms, _days(self.next_cycle),
            )
        if calibrated is None:
            fields.update(baseline=_plain(kr.baseline), target=kr.target)
            if isinstance(kr.baseline, BaselineRef) and kr.direction:
                fields["direction"] = kr.direction
            comments = [
                f"{self.cycle.name}: no counted runs (no {vocabulary.METRIC_VALUE} history); "
                "carried over unchanged"
            ]
        else:
            verb = "Raise" if direction == "maximize" else "Reduce"
            fields.update(
                title=f"{verb} {kr.metric} from {_fmt(calibrated.baseline)} to {_fmt(calibrated.target)}",
                baseline=calibrated.baseline,
                target=calibrated.target,
            )
            comments = list(calibrated.comments)
            if kr.title:
                comments.append(f"previous title: {kr.title}")
        moved = [h for h in self.validated if self.metric_of(h) == kr.metric]
        if moved:
            comments.append(f"validated hypotheses on {kr.metric}: {_hypothesis_list(moved)}")
        return fields, comments

    def ledger_kr(self, kr: KeyResult) -> tuple[dict[str, Any], list[str]]:
        fields = _carried_fields(kr)
        count = state.ledger_validated_count(self.client, self.cycle, kr.linked_to, count_only=kr.count_only)
        assert isinstance(kr.target, (int, float))
        if count == 0:
            fields["target"] = kr.target
            return fields, [f"{self.cycle.name}: no hypothesis validated; target {kr.target:g} carried over"]
        projected = count / self.observed_days * _days(self.next_cycle)
        fields["target"] = max(1, math.ceil(projected / EXPECTED_ATTAINMENT))
        return fields, [
            f"{self.cycle.name}: {count} hypotheses validated in {self.observed_days:.0f} days; next cycle "
            f"projects {projected:.1f}; target = ceil({projected:.1f} / {EXPECTED_ATTAINMENT})"
        ]

    def other_kr(self, kr: KeyResult) -> tuple[dict[str, Any], list[str]]:
        fields = _carried_fields(kr)
        if kr.maintain is not None:
            fields["maintain"] = kr.maintain.model_dump(exclude_none=True)
            return fields, [f"maintain KR: bound carried over from {self.cycle.name}"]
        fields["target"] = kr.target
        if kr.source == "traces":
            fields["baseline"] = kr.baseline
            return fields, [f"trace KR: baseline and target carried over from {self.cycle.name}"]
        run_id = self.published.kr_runs.get(kr.id)
        value, count = state.manual_checkin(self.client.get_run(run_id)) if run_id else (None, 0)
        reached = f"last check-in {value:g}" if value is not None else "no check-in"
        return fields, [f"manual KR: {reached} in {self.cycle.name} ({count} check-ins); target carried over"]

    def learned_krs(self, taken_ids: set[str], taken_metrics: set[str]) -> dict[str, list[DraftKr]]:
        """New KRs, by objective id, for metrics that validated hypotheses moved and no KR tracks."""
        by_metric: dict[str, list[Hypothesis]] = {}
        for hypothesis in self.validated:
            evaluation = hypothesis.evaluation or {}
            metric = self.metric_of(hypothesis)
            if metric and metric not in taken_metrics and evaluation.get("effect"):
                by_metric.setdefault(metric, []).append(hypothesis)
        objective_ids = {o.id for o in self.published.spec.objectives}
        new: dict[str, list[DraftKr]] = {}
        for metric, hypotheses in sorted(by_metric.items()):
            latest = max(hypotheses, key=lambda h: h.resolved_at or 0)
            baseline = (latest.evaluation or {}).get("treatment", {}).get("mean")
            if baseline is None:
                continue
            effect = sum(float(h.evaluation["effect"]) for h in hypotheses if h.evaluation)
            sign = 1.0 if effect > 0 else -1.0
            target = baseline + effect / EXPECTED_ATTAINMENT
            target, cap = within_natural_bounds(target, baseline, baseline - effect, sign)
            kr_id = _free_id(metric, taken_ids)
            fields = {
                "id": kr_id,
                "title": f"{'Raise' if effect > 0 else 'Reduce'} {metric}, which validated hypotheses moved",
                "metric": metric,
                "experiments": self._experiments_of(hypotheses),
                "baseline": _round(baseline, 6),
                "target": _round(target, away_from=_round(baseline, 6)),
            }
            comments = [
                f"new KR: {_hypothesis_list(hypotheses)} validated in {self.cycle.name}, moving {metric} "
                f"by {_signed(effect)} in total",
                f"baseline = treatment mean of {latest.id} (assumes it ships); target = baseline "
                f"{'+' if effect > 0 else '-'} {_fmt(abs(effect))} / {EXPECTED_ATTAINMENT}",
                *([cap] if cap else []),
            ]
            home = next(
                (h.objective for h in hypotheses if h.objective in objective_ids),
                None,
            ) or next(
                (self.published.objective_of(h.kr).id for h in hypotheses
                 if h.kr and self.published.spec.find_key_result(h.kr)),
                NEW_OBJECTIVE_ID,
            )
            new.setdefault(home, []).append((fields, comments))
        return new

    def _experiments_of(self, hypotheses: list[Hypothesis]) -> list[str]:
        names = set()
        for hypothesis in hypotheses:
            for item in hypothesis.evidence:
                try:
                    names.add(self.client.get_experiment(item.experiment_id).name)
                except Exception:
                    continue  # a deleted experiment: leave the KR's scope open rather than fail
        return sorted(names)


def _hypothesis_list(hypotheses: list[Hypothesis]) -> str:
    parts = []
    for h in hypotheses:
        effect = (h.evaluation or {}).get("effect")
        parts.append(f"{h.id} ({_signed(float(effect))})" if effect is not None else h.id)
    return ", ".join(parts)


def _free_id(metric: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", metric.lower()).strip("-")[:56] or "metric"
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        candidate = f"{base}-{number}"
    taken.add(candidate)
    return candidate


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True, exclude_defaults=True)
    return value


CARRIED = ("id", "title", "source", "metric", "trace_metric", "assessment", "view", "aggregation",
           "window", "unit", "experiments", "filter", "aggregate", "weight", "guardrails", "linked_to",
           "count_only")


def _carried_fields(kr: KeyResult) -> dict[str, Any]:
    """The KR's fields that do not depend on this cycle's numbers."""
    data = kr.model_dump(exclude_none=True, exclude_defaults=True, include=set(CARRIED))
    data["id"] = kr.id
    if "guardrails" in data:
        data["guardrails"] = [{"metric": g.pop("metric"), **g} for g in data["guardrails"]]
    return {key: data[key] for key in CARRIED if key in data}


# ---------------------------------------------------------------------------------------------
# YAML with comments


def _yaml_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # `target: 3`, not `target: 3.0`
    text = yaml.safe_dump(value, default_flow_style=True, width=100_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _emit_mapping(fields: dict[str, Any], indent: str, first_prefix: str) -> list[str]:
    lines = []
    for index, (key, value) in enumerate(fields.items()):
        prefix = first_prefix if index == 0 else indent
        lines.append(f"{prefix}{key}: {_yaml_value(value)}")
    return lines


def render(
    spec: OkrSpec,
    cycle_value: Any,
    source: str,
    objectives: list[tuple[Objective | dict, list[DraftKr]]],
) -> str:
    """The draft's text: okrs.yaml with one comment block per KR."""
    lines = [
        f"# Draft OKRs for {cycle_value if isinstance(cycle_value, str) else cycle_value['name']}, "
        f"suggested by `mlflow-okr suggest` from {source}.",
        f"# Targets are calibrated so that about {EXPECTED_ATTAINMENT:.0%} attainment is expected: the "
        "rate of improvement",
        "# observed this cycle, projected over the next, reaches 70% of the way to the target.",
        "# Review every number before `mlflow-okr apply`.",
        "version: 1",
        *([f"team: {spec.team}"] if spec.team else []),
        f"cycle: {_yaml_value(cycle_value)}",
        f"status_thresholds: {_yaml_value(spec.status_thresholds.model_dump())}",
    ]
    if spec.notify is not None:
        lines.append(f"notify: {_yaml_value(spec.notify.model_dump(exclude_defaults=True))}")
    lines.append("objectives:")
    for objective, krs in objectives:
        header = (
            objective.model_dump(exclude_none=True, include={"id", "title", "category", "owner", "aligns_to"})
            if isinstance(objective, Objective)
            else objective
        )
        ordered = {
            key: header[key] for key in ("id", "title", "category", "owner", "aligns_to") if header.get(key)
        }
        lines += _emit_mapping(ordered, "    ", "  - ")
        lines.append("    key_results:")
        for fields, comments in krs:
            lines += [f"      # {comment}" for comment in comments]
            lines += _emit_mapping(fields, "        ", "      - ")
    return "\n".join(lines) + "\n"


def suggest_next_cycles(
    next_cycle: str | None = None,
    from_cycle: str | None = None,
    tracking_uri: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> list[Draft]:
    """Draft next cycle's okrs.yaml of every set of the cycle (or `team`'s), one draft per set."""
    client = state.make_client(tracking_uri)
    now = now or dt.datetime.now(dt.timezone.utc)
    sets = state.innermost_sets(client, from_cycle, team, now.timestamp())
    return [_draft(client, published, next_cycle, now) for published in sets]


def suggest_next_cycle(
    next_cycle: str | None = None,
    from_cycle: str | None = None,
    tracking_uri: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> Draft:
    """Draft next cycle's okrs.yaml of one set from the published cycle's KR history and the ledger."""
    drafts = suggest_next_cycles(next_cycle, from_cycle, tracking_uri, now, team)
    if len(drafts) > 1:
        teams = ", ".join(draft.team or "(unnamed)" for draft in drafts)
        raise InputError(f"cycle {drafts[0].source_cycle} has several sets ({teams}); name the team")
    return drafts[0]


def _draft(
    client: MlflowClient, published: state.PublishedCycle, next_cycle: str | None, now: dt.datetime
) -> Draft:
    cycle, cycle_value = _next_cycle(next_cycle, published.cycle)
    drafter = _Drafter(client, published, cycle, int(now.timestamp() * 1000))
    spec = published.spec
    taken_ids = {kr.id for _, kr in spec.key_results()}
    taken_metrics = {kr.metric for _, kr in spec.key_results() if kr.metric}
    learned = drafter.learned_krs(taken_ids, taken_metrics)
    objectives: list[tuple[Objective | dict, list[DraftKr]]] = []
    for objective in spec.objectives:
        krs = []
        for kr in objective.key_results:
            if kr.kind == "metric":
                krs.append(drafter.metric_kr(kr))
            elif kr.kind == "ledger":
                krs.append(drafter.ledger_kr(kr))
            else:
                krs.append(drafter.other_kr(kr))
        krs += learned.pop(objective.id, [])
        objectives.append((objective, krs))
    if NEW_OBJECTIVE_ID in learned:
        header = {"id": _free_id(NEW_OBJECTIVE_ID, {o.id for o in spec.objectives}),
                  "title": "Build on what this cycle's experiments validated", "category": "research"}
        objectives.append((header, learned.pop(NEW_OBJECTIVE_ID)))
    text = render(spec, cycle_value, f"cycle {published.cycle.name}", objectives)
    draft_spec = parse_spec(text, f"suggested okrs.yaml for {cycle.name}")
    return Draft(
        cycle=cycle.name,
        team=published.team,
        source_cycle=published.cycle.name,
        key_results=len(draft_spec.key_results()),
        text=text,
    )
