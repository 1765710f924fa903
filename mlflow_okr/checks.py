"""OKR checks: the known traps of a spec, named, before they cost a quarter.

Each check reports a `CheckWarning` with a code from `check_codes` and a one-line reason. An
objective's `allow: [code]` silences that code for the objective and its KRs, a KR's `allow`
for that KR; nothing silences a code for the whole file.

The target-plausibility check reads the track record `suggest` drafts from: for a metric KR, the
`okr.value` history of KRs on the same metric in earlier cycles published to this backend,
calibrated by `suggest.calibrate_metric` for a cycle as long as this one, and the effects of
validated ledger hypotheses on that metric. A target that needs more than IMPLAUSIBLE_FACTOR
times the improvement that record makes plausible is reported. Without a record the KR is not
checked, and a note says so.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import state, vocabulary
from mlflow_okr.check_codes import MAX_KEY_RESULTS, CheckCode
from mlflow_okr.spec import BaselineRef, KeyResult, Objective, OkrSpec
from mlflow_okr.suggest import EXPECTED_ATTAINMENT, calibrate_metric

# suggest drafts a target the track record's pace reaches 70% of the way to; at that pace a
# target twice as far is 35% attained, a stretch no one plans on any more.
IMPLAUSIBLE_FACTOR = 2.0
DAY_MS = vocabulary.MS_PER_DAY


class CheckWarning(BaseModel):
    """One trap found: its code, where it is (file:line: key), what it is about and why."""

    code: CheckCode
    where: str
    objective: str
    kr: str | None = None
    reason: str

    def line(self) -> str:
        return f"{self.where}: {self.code}: {self.reason}"


class CheckReport(BaseModel):
    """The warnings of a spec's checks, and notes on checks that could not run."""

    warnings: list[CheckWarning] = []
    notes: list[str] = []
    track_record: bool = True  # False: targets were not checked, there was no store to read


def _allowed(code: str, objective: Objective, kr: KeyResult | None = None) -> bool:
    return code in (objective.allow or []) or (kr is not None and code in (kr.allow or []))


def objective_warnings(spec: OkrSpec) -> list[CheckWarning]:
    """The traps one can see in the spec alone: BAU, no business proxy, research without
    learning, too many KRs, no owner."""
    found = []
    for index, objective in enumerate(spec.objectives):
        krs = objective.key_results
        label = f"objective '{objective.id}'"
        reasons: list[tuple[CheckCode, str]] = []
        if all(kr.kind == "maintain" for kr in krs):
            reasons.append((
                "okr-bau",
                f"{label} has only maintain KRs; track these as KPIs or add a KR that changes something",
            ))
        if objective.category == "product" and not any(kr.measure in ("business", "product") for kr in krs):
            reasons.append((
                "okr-no-business-proxy",
                f"{label} is a product objective measured only by model metrics; add a KR with "
                "`measures: product` or `business` (or mark one that is)",
            ))
        if objective.category == "research" and not any(kr.kind == "ledger" for kr in krs):
            reasons.append((
                "okr-research-without-learning",
                f"{label} is research with no learning KR; add a `source: ledger` KR counting "
                "validated hypotheses",
            ))
        if len(krs) > MAX_KEY_RESULTS:
            reasons.append((
                "okr-too-many-krs",
                f"{label} has {len(krs)} KRs; keep at most {MAX_KEY_RESULTS} that people can follow",
            ))
        if not objective.owner:
            reasons.append(("okr-no-owner", f"{label} has no owner; name who answers for its KRs"))
        where = spec.where("objectives", index, "id")
        found += [
            CheckWarning(code=code, where=where, objective=objective.id, reason=reason)
            for code, reason in reasons
            if not _allowed(code, objective)
        ]
    return found


class MetricTrackRecord:
    """What earlier cycles in this backend and the ledger say about how fast a metric moves."""

    def __init__(self, client: MlflowClient, spec: OkrSpec, now: dt.datetime):
        self.client = client
        self.spec = spec
        self.now_ms = int(now.timestamp() * 1000)
        earlier = [
            item for item in state.published_specs(client)
            if item[0].cycle.start < spec.cycle.start and item[0].cycle.name != spec.cycle.name
        ]
        self.sets = [state.published_set(client, past, experiment) for past, experiment in earlier]
        self._validated: list[Any] | None = None

    def plausible_change(self, kr: KeyResult, direction: str) -> tuple[float, str] | None:
        """The change of `kr.metric` that `suggest` would draft as this cycle's target (the largest
        the record supports), and where it came from; None without a record."""
        found = [c for c in (self._from_history(kr, direction), self._from_ledger(kr.metric)) if c]
        return max(found, default=None)

    def _from_history(self, kr: KeyResult, direction: str) -> tuple[float, str] | None:
        next_days = (self.spec.cycle.end_ms + 1 - self.spec.cycle.start_ms) / DAY_MS
        # The latest earlier cycle with a KR on this metric: the pace the team has now.
        for published in sorted(self.sets, key=lambda s: s.cycle.start, reverse=True):
            for _, past in published.spec.key_results():
                run_id = published.kr_runs.get(past.id)
                if past.kind != "metric" or past.metric != kr.metric or run_id is None:
                    continue
                history = state.kr_values(self.client, run_id)
                baseline, _ = state.resolve_baseline(self.client, past)
                target, _ = past.resolve(baseline)
                calibrated = calibrate_metric(
                    history, baseline, target, direction, published.cycle,
                    min(self.now_ms, published.cycle.end_ms), next_days,
                )
                if calibrated is not None:
                    change = abs(calibrated.target - calibrated.baseline)
                    return change, f"{published.cycle.name}'s pace on {kr.metric}"
        return None

    def _from_ledger(self, metric: str | None) -> tuple[float, str] | None:
        if self._validated is None:
            from mlflow_okr.ledger import store as ledger_store

            self._validated = [h for h in ledger_store.load_all(self.client) if h.status == "validated"]
        effects = []
        for hypothesis in self._validated:
            evaluation = hypothesis.evaluation or {}
            on_metric = (hypothesis.metric or evaluation.get("metric")) == metric
            if on_metric and evaluation.get("effect") is not None:
                effects.append((abs(float(evaluation["effect"])), hypothesis.id))
        if not effects:
            return None
        ids = ", ".join(sorted(hypothesis_id for _, hypothesis_id in effects))
        # As suggest's new KRs: the validated effects are 70% of the way to the target.
        return sum(effect for effect, _ in effects) / EXPECTED_ATTAINMENT, f"validated hypotheses {ids}"


def target_warnings(spec: OkrSpec, client: MlflowClient, now: dt.datetime) -> CheckReport:
    """okr-implausible-target for each metric KR whose target the track record makes implausible."""
    record = MetricTrackRecord(client, spec, now)
    report = CheckReport()
    unrecorded: list[str] = []
    for o_index, objective in enumerate(spec.objectives):
        for k_index, kr in enumerate(objective.key_results):
            if kr.kind != "metric" or _allowed("okr-implausible-target", objective, kr):
                continue
            baseline = kr.baseline if not isinstance(kr.baseline, BaselineRef) else (
                state.resolve_baseline(client, kr)[0]
            )
            target, direction = kr.resolve(baseline)
            if baseline is None or target is None or direction is None:
                report.notes.append(
                    f"okr-implausible-target: KR '{kr.id}' not checked: its baseline is not resolved yet"
                )
                continue
            plausible = record.plausible_change(kr, direction)
            if plausible is None:
                unrecorded.append(kr.id)
                continue
            change, source = plausible
            needed = abs(target - baseline)
            if needed > IMPLAUSIBLE_FACTOR * change:
                report.warnings.append(CheckWarning(
                    code="okr-implausible-target",
                    where=spec.where("objectives", o_index, "key_results", k_index, "target"),
                    objective=objective.id,
                    kr=kr.id,
                    reason=(
                        f"KR '{kr.id}' asks {kr.metric} to move {needed:.4g} "
                        f"({baseline:.4g} -> {target:.4g}); "
                        f"{source} makes about {change:.4g} plausible this cycle, and this is more than "
                        f"{IMPLAUSIBLE_FACTOR:g}x that"
                    ),
                ))
    if unrecorded:
        report.notes.append(
            f"okr-implausible-target: not checked for KR {', '.join(unrecorded)}: no track record of "
            "the metric in earlier cycles or the ledger"
        )
    return report


def check_spec(
    spec: OkrSpec, client: MlflowClient | None = None, now: dt.datetime | None = None
) -> CheckReport:
    """Every OKR check of `spec`; the target check needs `client` (the backend's track record)."""
    report = CheckReport(warnings=objective_warnings(spec))
    if client is None:
        return report.model_copy(update={"track_record": False})
    targets = target_warnings(spec, client, now or dt.datetime.now(dt.timezone.utc))
    return CheckReport(warnings=report.warnings + targets.warnings, notes=targets.notes)
