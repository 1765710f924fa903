"""The ledger's Python API: every `mlflow-okr ledger` command is one of these functions."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_okr import state
from mlflow_okr.errors import InputError, NotPublishedError
from mlflow_okr.ledger import io, store
from mlflow_okr.ledger.evaluate import compare
from mlflow_okr.ledger.models import (
    ARMS,
    STATUSES,
    SUMMARY_COLUMNS,
    VERDICTS,
    Evaluation,
    Evidence,
    Hypothesis,
    parse_expectation,
)
from mlflow_okr.ledger.verify import VerifyResult, verify
from mlflow_okr.spec import SLUG_PATTERN, KeyResult

LINKS_PER_EVENT = 50  # keeps one link event well under MLflow's 8000-character tag limit
AUTO_LINKER = "mlflow-okr (okr.hypothesis tag)"
MAX_STATEMENT = 2000
RUN_IDS_PER_SEARCH = 100


def _when_ms(when: dt.datetime | None) -> int:
    if when is None:
        return state.now_ms()
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _slug(statement: str) -> str:
    words = re.findall(r"[a-z0-9]+", statement.lower())
    slug = ""
    for word in words:
        if len(slug) + len(word) + 1 > 40:
            break
        slug = f"{slug}-{word}" if slug else word
    return slug or "hypothesis"


def _free_slug(client: MlflowClient, statement: str) -> str:
    base = _slug(statement)
    candidate, number = base, 1
    while store.find_run(client, candidate) is not None:
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def add_hypothesis(
    statement: str,
    hypothesis_id: str | None = None,
    kr: str | None = None,
    objective: str | None = None,
    metric: str | None = None,
    expect: str | float | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
    who: str | None = None,
    when: dt.datetime | None = None,
) -> Hypothesis:
    """Record a new hypothesis (status `proposed`); its id is `hypothesis_id` or a slug of the statement."""
    statement = statement.strip()
    if not statement:
        raise InputError("the hypothesis statement is empty; say what you expect and why")
    if len(statement) > MAX_STATEMENT:
        raise InputError(f"the statement is {len(statement)} characters; keep it under {MAX_STATEMENT}")
    if hypothesis_id is not None and not re.match(SLUG_PATTERN, hypothesis_id):
        raise InputError(f"--id {hypothesis_id!r} is not a valid id: use lowercase letters, digits and '-'")
    expectation = parse_expectation(expect)
    for key in tags or {}:
        if not key or key.startswith(store.RESERVED_TAG_PREFIXES):
            raise InputError(f"--tag {key!r}: tag keys must be non-empty and not start with okr. or mlflow.")
    client = state.make_client(tracking_uri)
    objective = _checked_links(client, kr, objective)
    changes = {
        "statement": statement,
        "kr": kr,
        "objective": objective,
        "metric": metric,
        "expect": expectation.text if expectation else None,
        "owner": owner,
        "tags": dict(sorted((tags or {}).items())),
    }
    changes = {key: value for key, value in changes.items() if value}
    hypothesis_id = hypothesis_id or _free_slug(client, statement)
    return store.create(client, hypothesis_id, changes, who or state.current_user(), _when_ms(when))


def _checked_links(client: MlflowClient, kr: str | None, objective: str | None) -> str | None:
    """Check --kr and --objective against the published cycle (if any); the KR's objective by default."""
    if kr is None and objective is None:
        return None
    try:
        published = state.load_published(client)
    except NotPublishedError:
        return objective  # nothing to check against yet
    spec = published.spec
    if kr is not None:
        if spec.find_key_result(kr) is None:
            known = ", ".join(k.id for _, k in spec.key_results())
            raise InputError(f"unknown KR {kr!r} in cycle {spec.cycle.name} (known: {known})")
        objective = objective or published.objective_of(kr).id
    if objective is not None and objective not in {o.id for o in spec.objectives}:
        known = ", ".join(o.id for o in spec.objectives)
        raise InputError(f"unknown objective {objective!r} in cycle {spec.cycle.name} (known: {known})")
    return objective


def _source_run(client: MlflowClient, run_id: str):
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise InputError(f"run {run_id!r} does not exist in this MLflow backend") from None
    experiment = client.get_experiment(run.info.experiment_id)
    if state.is_okr_experiment_name(experiment.name):
        raise InputError(
            f"run {run_id} belongs to {experiment.name!r}; link the training or evaluation runs, "
            "not mlflow-okr's own runs"
        )
    return run


def _link(
    client: MlflowClient, hypothesis: Hypothesis, evidence: list[Evidence], who: str, when: int, auto: bool
) -> Hypothesis:
    if not evidence:
        return hypothesis
    items = [{"run_id": e.run_id, "arm": e.arm, "experiment_id": e.experiment_id} for e in evidence]
    parts = [items[i:i + LINKS_PER_EVENT] for i in range(0, len(items), LINKS_PER_EVENT)]
    changes = [("link", {"runs": part, "auto": True} if auto else {"runs": part}) for part in parts]
    return store.append_events(client, hypothesis, changes, who, when)


def link_runs(
    hypothesis_id: str,
    run_ids: Iterable[str],
    arm: str = "treatment",
    tracking_uri: str | None = None,
    who: str | None = None,
    when: dt.datetime | None = None,
) -> Hypothesis:
    """Link evidence runs to a hypothesis as `control` or `treatment`; its status becomes `testing`."""
    if arm not in ARMS:
        raise InputError(f"unknown arm {arm!r}: use control or treatment")
    run_ids = list(dict.fromkeys(run_ids))  # once: a command that starts over reads them again
    if not run_ids:
        raise InputError("give at least one run id to link")
    return _link_runs(hypothesis_id, run_ids, arm, state.make_client(tracking_uri), who, when)


@store.retrying
def _link_runs(
    hypothesis_id: str,
    run_ids: list[str],
    arm: str,
    client: MlflowClient,
    who: str | None,
    when: dt.datetime | None,
) -> Hypothesis:
    hypothesis = store.load(client, hypothesis_id)
    if not hypothesis.is_open:
        raise InputError(
            f"hypothesis {hypothesis_id!r} is already resolved ({hypothesis.status}); its evidence is "
            "closed. Add a new hypothesis to test it again"
        )
    linked = {item.run_id: item.arm for item in hypothesis.evidence}
    new = []
    for run_id in run_ids:
        run = _source_run(client, run_id)
        if run_id in linked:
            if linked[run_id] != arm:
                raise InputError(f"run {run_id} is already linked to {hypothesis_id!r} as {linked[run_id]}")
            continue
        new.append(Evidence(run_id=run_id, arm=arm, experiment_id=run.info.experiment_id))
    return _link(client, hypothesis, new, who or state.current_user(), _when_ms(when), auto=False)


def _tagged_runs(client: MlflowClient, hypothesis_id: str | None) -> dict[str, list[Evidence]]:
    """Runs carrying `okr.hypothesis` (for one id, or any), grouped by hypothesis id."""
    experiment_ids = state.source_experiment_ids(client, [])
    if hypothesis_id is None:
        condition = "!= ''"
    else:
        condition = "= '" + hypothesis_id.replace("'", "''") + "'"
    found: dict[str, list[Evidence]] = {}
    for run in state.iter_runs(client, experiment_ids, f"tags.`{state.TAG_HYPOTHESIS}` {condition}"):
        arm = run.data.tags.get(state.TAG_ARM, "treatment").strip().lower() or "treatment"
        if arm not in ARMS:
            continue  # not a comparison arm mlflow-okr knows; `ledger link --arm` fixes it
        found.setdefault(run.data.tags[state.TAG_HYPOTHESIS], []).append(
            Evidence(run_id=run.info.run_id, arm=arm, experiment_id=run.info.experiment_id, auto=True)
        )
    return found


def _auto_link(
    client: MlflowClient, hypotheses: list[Hypothesis], one: str | None = None
) -> list[Hypothesis]:
    """Link runs tagged `okr.hypothesis=<id>` to open hypotheses that do not have them yet."""
    if not any(h.is_open for h in hypotheses):
        return hypotheses
    tagged = _tagged_runs(client, one)
    updated = []
    for hypothesis in hypotheses:
        linked = {item.run_id for item in hypothesis.evidence}
        new = [e for e in tagged.get(hypothesis.id, []) if e.run_id not in linked]
        if hypothesis.is_open and new:
            hypothesis = _link(client, hypothesis, new, AUTO_LINKER, state.now_ms(), auto=True)
        updated.append(hypothesis)
    return updated


@store.retrying
def get_hypothesis(hypothesis_id: str, tracking_uri: str | None = None) -> Hypothesis:
    """One hypothesis with its evidence and full event history (tagged runs linked first)."""
    client = state.make_client(tracking_uri)
    return _auto_link(client, [store.load(client, hypothesis_id)], hypothesis_id)[0]


@store.retrying
def list_hypotheses(
    status: str | None = None,
    kr: str | None = None,
    metric: str | None = None,
    tracking_uri: str | None = None,
) -> list[Hypothesis]:
    """Hypotheses, oldest first, optionally only those with this status, KR or metric."""
    if status is not None and status not in STATUSES:
        raise InputError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    client = state.make_client(tracking_uri)
    hypotheses = _auto_link(client, store.load_all(client))
    return [
        h
        for h in hypotheses
        if (status is None or h.status == status)
        and (kr is None or h.kr == kr)
        and (metric is None or h.metric == metric)
    ]


def hypotheses_frame(hypotheses: list[Hypothesis]) -> pd.DataFrame:
    """One row per hypothesis, for notebooks and CSV."""
    return pd.DataFrame([h.summary() for h in hypotheses], columns=list(SUMMARY_COLUMNS))


def search_hypotheses(text: str, tracking_uri: str | None = None) -> list[Hypothesis]:
    """Hypotheses whose id, statement, learning, KR, objective, metric, owner or tags contain every word."""
    words = text.lower().split()
    if not words:
        raise InputError("give some text to search for")
    client = state.make_client(tracking_uri)
    found = []
    for hypothesis in store.load_all(client):
        haystack = " ".join(
            str(value)
            for value in (
                hypothesis.id, hypothesis.statement, hypothesis.learning, hypothesis.kr, hypothesis.objective,
                hypothesis.metric, hypothesis.owner, *hypothesis.tags.keys(), *hypothesis.tags.values(),
            )
            if value
        ).lower()
        if all(word in haystack for word in words):
            found.append(hypothesis)
    return found


def _linked_kr(client: MlflowClient, hypothesis: Hypothesis) -> KeyResult | None:
    if hypothesis.kr is None:
        return None
    try:
        published = state.load_published(client)
    except NotPublishedError:
        return None
    return published.spec.find_key_result(hypothesis.kr)


def _evidence_runs(client: MlflowClient, hypothesis: Hypothesis) -> dict[str, Run]:
    """The active evidence runs by id, fetched a page of ids at a time rather than one by one."""
    by_experiment: dict[str, list[str]] = {}
    for item in hypothesis.evidence:
        by_experiment.setdefault(item.experiment_id, []).append(item.run_id)
    runs: dict[str, Run] = {}
    for experiment_id, run_ids in by_experiment.items():
        for start in range(0, len(run_ids), RUN_IDS_PER_SEARCH):
            quoted = ", ".join(f"'{run_id}'" for run_id in run_ids[start:start + RUN_IDS_PER_SEARCH])
            # Active runs only: a deleted run, or one removed from the backend, is no evidence.
            for run in state.iter_runs(client, [experiment_id], f"attributes.run_id IN ({quoted})"):
                runs[run.info.run_id] = run
    return runs


def _arm_values(client: MlflowClient, hypothesis: Hypothesis, metric: str) -> dict[str, list[float]]:
    """Each arm's values of `metric`: latest value per run; deleted, failed and killed runs left out."""
    runs = _evidence_runs(client, hypothesis)
    values: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for item in hypothesis.evidence:
        run = runs.get(item.run_id)
        if run is None or run.info.status in ("FAILED", "KILLED"):
            continue
        value = run.data.metrics.get(metric)
        if value is not None and math.isfinite(value):
            values[item.arm].append(float(value))
    return values


@store.retrying
def evaluate_hypothesis(
    hypothesis_id: str, tracking_uri: str | None = None, record: bool = True
) -> Evaluation:
    """Compare the arms on the hypothesis's metric; with `record`, note a changed result in its history."""
    client = state.make_client(tracking_uri)
    hypothesis = _auto_link(client, [store.load(client, hypothesis_id)], hypothesis_id)[0]
    kr = _linked_kr(client, hypothesis)
    metric = hypothesis.metric or (kr.metric if kr else None)
    baseline, direction = None, None
    if kr is not None and kr.metric is not None and kr.metric == metric:
        baseline, _ = state.resolve_baseline(client, kr)
        direction = kr.resolve(baseline)[1]
        if kr.maintain is not None:
            baseline = None
    values = _arm_values(client, hypothesis, metric) if metric else {"control": [], "treatment": []}
    evaluation = compare(
        hypothesis.id,
        metric,
        values["control"],
        values["treatment"],
        baseline=baseline,
        expectation=parse_expectation(hypothesis.expect),
        direction=direction,
    )
    summary = evaluation.model_dump(mode="json")
    if record and hypothesis.is_open and summary != hypothesis.evaluation:
        store.append(client, hypothesis, "evaluate", summary, state.current_user(), state.now_ms())
    return evaluation


@store.retrying
def resolve_hypothesis(
    hypothesis_id: str,
    verdict: str,
    note: str,
    tracking_uri: str | None = None,
    who: str | None = None,
    when: dt.datetime | None = None,
) -> Hypothesis:
    """Close a hypothesis as validated, invalidated or inconclusive, with what was learned."""
    if verdict not in VERDICTS:
        raise InputError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    note = (note or "").strip()
    if not note:
        raise InputError("--note is required: write down what was learned, whatever the verdict")
    client = state.make_client(tracking_uri)
    hypothesis = store.load(client, hypothesis_id)
    if not hypothesis.is_open:
        resolved = dt.datetime.fromtimestamp((hypothesis.resolved_at or 0) / 1000, dt.timezone.utc)
        raise InputError(
            f"hypothesis {hypothesis_id!r} is already resolved: {hypothesis.status} on "
            f"{resolved:%Y-%m-%d} by {hypothesis.resolved_by}. A resolution is final; "
            "add a new hypothesis to revisit it"
        )
    resolved_at = _when_ms(when)
    changes = {"status": verdict, "note": note, "resolved_at": resolved_at}
    who = who or state.current_user()
    hypothesis = store.append(client, hypothesis, "resolve", changes, who, state.now_ms())
    refresh_ledger_krs(client, [resolved_at])
    return hypothesis


def refresh_ledger_krs(client: MlflowClient, moments_ms: Iterable[int]) -> list[str]:
    """Re-score the published cycles containing these moments if they have ledger KRs."""
    from mlflow_okr.sync import sync

    refreshed = []
    for moment in sorted(set(moments_ms)):
        try:
            published = state.load_published(client, now=moment / 1000)
        except NotPublishedError:
            return refreshed
        name = published.cycle.name
        has_ledger_kr = any(kr.source == "ledger" for _, kr in published.spec.key_results())
        if name not in refreshed and published.cycle.contains(moment) and has_ledger_kr:
            sync(client, cycle=name)
            refreshed.append(name)
    return refreshed


def export_ledger(path: str | Path | None = None, tracking_uri: str | None = None) -> str:
    """The ledger as JSON Lines (one event per line); also written to `path` when given."""
    client = state.make_client(tracking_uri)
    lines = io.export_lines(client)
    text = "".join(line + "\n" for line in lines)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def import_ledger(path: str | Path, tracking_uri: str | None = None) -> io.ImportResult:
    """Import a JSONL export: new hypotheses are created, newer events appended, the rest left alone."""
    client = state.make_client(tracking_uri)
    by_hypothesis = io.read_events(_read_lines(path), str(path))
    result = io.import_events(client, by_hypothesis, str(path))
    touched = set(result.created) | set(result.updated)
    resolved = [
        int(event.changes.get("resolved_at", event.when))
        for hypothesis_id in touched
        for event in by_hypothesis[hypothesis_id]
        if event.action == "resolve"
    ]
    refresh_ledger_krs(client, resolved)
    return result


def _read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the file: {exc}") from None


def verify_ledger(tracking_uri: str | None = None) -> VerifyResult:
    """Check every hypothesis's event chain and state tags; see `VerifyResult.problems`."""
    return verify(state.make_client(tracking_uri))
