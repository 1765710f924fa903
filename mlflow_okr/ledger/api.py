"""The ledger's Python API: every `mlflow-okr ledger` command is one of these functions."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_okr import multiplicity, state, vocabulary
from mlflow_okr.errors import InputError, NotPublishedError
from mlflow_okr.ledger import evidence, io, looks, store
from mlflow_okr.ledger.evaluate import GuardrailData, compare
from mlflow_okr.ledger.guardrails import parse_guardrail
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
from mlflow_okr.ledger.plan import Plan, check_levels, runs_needed, sample_sd
from mlflow_okr.ledger.record import TrackRecord, track_record, with_q_values
from mlflow_okr.ledger.sequential import Look
from mlflow_okr.ledger.verify import VerifyResult, verify
from mlflow_okr.spec import SLUG_PATTERN, KeyResult

LINKS_PER_EVENT = 50  # keeps one link event well under MLflow's 8000-character tag limit
AUTO_LINKER = f"mlflow-okr ({vocabulary.TAG_HYPOTHESIS} tag)"
MAX_STATEMENT = 2000
MAX_UNPAIRED_LISTED = 50  # keeps an evaluate event well under MLflow's tag limit


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
    pair_by: str | None = None,
    guardrails: Iterable[str] = (),
) -> Hypothesis:
    """Record a new hypothesis (status `proposed`); its id is `hypothesis_id` or a slug of the statement.

    `pair_by` ("params.seed", "tags.split") pairs control and treatment runs with the same value for
    a paired comparison; each guardrail ("p99_ms<=+5%") is a counter-metric the treatment must not
    worsen by more than its margin.
    """
    statement = statement.strip()
    if not statement:
        raise InputError("the hypothesis statement is empty; say what you expect and why")
    if len(statement) > MAX_STATEMENT:
        raise InputError(f"the statement is {len(statement)} characters; keep it under {MAX_STATEMENT}")
    if hypothesis_id is not None and not re.match(SLUG_PATTERN, hypothesis_id):
        raise InputError(
            f"{hypothesis_id!r} is not a valid id: use lowercase letters, digits and '-'",
            parameter="hypothesis_id",
        )
    expectation = parse_expectation(expect)
    if pair_by is not None and (not evidence.PAIR_BY.match(pair_by.strip()) or not pair_by.strip()):
        raise InputError(
            f"bad pairing key {pair_by!r}: name a param or tag, e.g. params.seed or tags.split",
            parameter="pair_by",
        )
    guardrail_texts = [parse_guardrail(text).text for text in guardrails]
    for key in tags or {}:
        if not key or key.startswith(vocabulary.RESERVED_TAG_PREFIXES):
            raise InputError(
                f"tag {key!r}: tag keys must be non-empty and not start with "
                f"{' or '.join(vocabulary.RESERVED_TAG_PREFIXES)}",
                parameter="tags",
            )
    client = state.make_client(tracking_uri)
    objective = _checked_links(client, kr, objective)
    changes = {
        "statement": statement,
        "kr": kr,
        "objective": objective,
        "metric": metric,
        "expect": expectation.text if expectation else None,
        "owner": owner,
        "pair_by": pair_by.strip() if pair_by else None,
        "guardrails": guardrail_texts,
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
        sets = state.innermost_sets(client)
    except NotPublishedError:
        return objective  # nothing to check against yet
    if kr is not None:
        published = state.find_set_of_kr(sets, kr)
        objective = objective or published.objective_of(kr).id
    objectives = [o.id for s in sets for o in s.spec.objectives]
    if objective is not None and objective not in objectives:
        known = ", ".join(objectives)
        raise InputError(f"unknown objective {objective!r} in cycle {sets[0].cycle.name} (known: {known})")
    return objective


def _source_run(client: MlflowClient, run_id: str):
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise InputError(f"run {run_id!r} does not exist in this MLflow backend") from None
    experiment = client.get_experiment(run.info.experiment_id)
    if vocabulary.is_okr_experiment_name(experiment.name):
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
    for run in state.iter_runs(client, experiment_ids, f"tags.`{vocabulary.TAG_HYPOTHESIS}` {condition}"):
        arm = run.data.tags.get(vocabulary.TAG_ARM, "treatment").strip().lower() or "treatment"
        if arm not in ARMS:
            continue  # not a comparison arm mlflow-okr knows; `ledger link --arm` fixes it
        found.setdefault(run.data.tags[vocabulary.TAG_HYPOTHESIS], []).append(
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


def _cycle_scope(client: MlflowClient, cycle: str | None) -> tuple[str | None, Callable[[int], bool]]:
    """The published cycle (named, else the current or latest) and its test for a hypothesis's moment.

    Without a published cycle the whole ledger is one family.
    """
    try:
        published = state.innermost_sets(client, cycle)[0]
    except NotPublishedError:
        if cycle is not None:
            raise
        return None, lambda moment: True
    return published.cycle.name, published.cycle.contains


@store.retrying
def list_hypotheses(
    status: str | None = None,
    kr: str | None = None,
    metric: str | None = None,
    tracking_uri: str | None = None,
    cycle: str | None = None,
    team: str | None = None,
) -> list[Hypothesis]:
    """Hypotheses, oldest first, optionally only those with this status, KR or metric.

    Each hypothesis of the cycle (`cycle`, default the current published one) with an evaluation
    gets its Benjamini-Hochberg `q_value` across that cycle's evaluated hypotheses. With `cycle`
    given, only that cycle's hypotheses are listed. With `team`, only those linked to a KR or an
    objective of that team's sets ("" is the unnamed sets).
    """
    if status is not None and status not in STATUSES:
        raise InputError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    client = state.make_client(tracking_uri)
    _, contains = _cycle_scope(client, cycle)
    hypotheses = with_q_values(_auto_link(client, store.load_all(client)), contains)
    team_ids = _team_ids(client, cycle, team) if team is not None else None
    return [
        h
        for h in hypotheses
        if (status is None or h.status == status)
        and (kr is None or h.kr == kr)
        and (metric is None or h.metric == metric)
        and (cycle is None or contains(h.cycle_moment))
        and (team_ids is None or bool({h.kr, h.objective} & team_ids))
    ]


def _team_ids(client: MlflowClient, cycle: str | None, team: str) -> set[str | None]:
    """The KR and objective ids of `team`'s published sets (of `cycle`, or of every cycle)."""
    specs = [spec for spec, _ in state.published_specs(client, cycle, team)]
    if not specs:
        raise state.nothing_published(cycle, team)
    return {kr.id for spec in specs for _, kr in spec.key_results()} | {
        objective.id for spec in specs for objective in spec.objectives
    }


@store.retrying
def ledger_summary(cycle: str | None = None, tracking_uri: str | None = None) -> TrackRecord:
    """The track record of a cycle (default: the current published one; the whole ledger if none).

    Hypotheses tried, validated, invalidated, inconclusive and open; win rate per objective and
    owner; the summed effect of the validated hypotheses per metric; validated ones whose q-value
    is above alpha.
    """
    client = state.make_client(tracking_uri)
    name, contains = _cycle_scope(client, cycle)
    hypotheses = with_q_values(_auto_link(client, store.load_all(client)), contains)
    return track_record([h for h in hypotheses if contains(h.cycle_moment)], name)


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
        sets = state.innermost_sets(client)
    except NotPublishedError:
        return None
    found = (s.spec.find_key_result(hypothesis.kr) for s in sets)
    return next((kr for kr in found if kr is not None), None)


@store.retrying
def evaluate_hypothesis(
    hypothesis_id: str, tracking_uri: str | None = None, record: bool = True
) -> Evaluation:
    """Compare the arms on the hypothesis's metric; with `record`, note a changed result in its history.

    The first look is a fixed-sample test; every later look on new evidence is judged on the
    anytime-valid confidence sequence (see `ledger.sequential`), so evaluating after every run does
    not inflate false positives.
    """
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
    usable = evidence.usable_runs(client, hypothesis) if metric else []
    specs = [parse_guardrail(text) for text in hypothesis.guardrails]
    pairs, unpaired = None, []
    values = {"control": [], "treatment": []}
    if metric and hypothesis.pair_by:
        pairs, unpaired = evidence.pairs(usable, metric, hypothesis.pair_by)
        guardrails = [
            GuardrailData(spec, [], [], evidence.pairs(usable, spec.metric, hypothesis.pair_by)[0])
            for spec in specs
        ]
    else:
        values = evidence.arm_values(usable, metric) if metric else values
        guardrails = []
        for spec in specs:
            arms = evidence.arm_values(usable, spec.metric)
            guardrails.append(GuardrailData(spec, arms["control"], arms["treatment"]))

    def run(count: int, previous: Look | None) -> Evaluation:
        result = compare(
            hypothesis.id, metric, values["control"], values["treatment"], baseline=baseline,
            expectation=parse_expectation(hypothesis.expect), direction=direction, pairs=pairs,
            guardrails=guardrails, looks=count, previous=previous,
        )
        update = {"pair_by": hypothesis.pair_by, "unpaired_runs": unpaired[:MAX_UNPAIRED_LISTED]}
        if result.p_value is None:
            update["looks"] = count - 1  # a look without a test is no look
        return result.model_copy(update=update)

    last = hypothesis.evaluation or {}
    prior = looks.tested_looks(last)
    evaluation = run(prior + 1, None)
    if evaluation.p_value is not None:
        count = prior if prior and looks.same_evidence(last, evaluation) else prior + 1
        evaluation = run(count, looks.previous_look(last, evaluation))
    summary = evaluation.model_dump(mode="json")
    if record and hypothesis.is_open and summary != hypothesis.evaluation:
        moment = state.now_ms()
        store.append(client, hypothesis, "evaluate", summary, state.current_user(), moment)
        refresh_ledger_krs(client, [moment], significant_only=True)
    return evaluation


@store.retrying
def plan_hypothesis(
    hypothesis_id: str,
    power: float = 0.8,
    alpha: float = multiplicity.ALPHA,
    expect: str | float | None = None,
    tracking_uri: str | None = None,
) -> Plan:
    """The runs per arm (pairs, when paired) needed to detect the expected effect with `power`.

    The spread comes from the linked control runs, or from the linked KR's counted runs when there
    are fewer than two control runs; `expect` overrides the hypothesis's expected effect.
    """
    check_levels(power, alpha)
    client = state.make_client(tracking_uri)
    hypothesis = _auto_link(client, [store.load(client, hypothesis_id)], hypothesis_id)[0]
    kr = _linked_kr(client, hypothesis)
    metric = hypothesis.metric or (kr.metric if kr else None)
    if metric is None:
        raise InputError(
            f"hypothesis {hypothesis.id!r} has no metric: it needs a metric of its own or a metric KR"
        )
    expectation = parse_expectation(expect if expect is not None else hypothesis.expect)
    if expectation is None:
        raise InputError(
            f"hypothesis {hypothesis.id!r} has no expected effect; give one, e.g. +2%", parameter="expect"
        )
    usable = evidence.usable_runs(client, hypothesis)
    values = evidence.arm_values(usable, metric)
    control = values["control"]
    kr_values = evidence.counted_values(client, kr) if kr is not None and kr.metric == metric else []
    sd, source, reference = sample_sd(control), f"{len(control)} control runs", None
    if control:
        reference = math.fsum(control) / len(control)
    if not sd:
        sd, source = sample_sd(kr_values), f"{len(kr_values)} runs counted for KR {hypothesis.kr}"
        if reference is None and kr_values:
            reference = math.fsum(kr_values) / len(kr_values)
    if not sd:
        kr_part = f", and KR {hypothesis.kr} has {len(kr_values)}" if kr is not None else ""
        raise InputError(
            f"no spread of {metric} to plan from: hypothesis {hypothesis.id!r} has {len(control)} control "
            f"run(s) with it{kr_part}; link at least 2 varied control runs"
        )
    if reference is None and kr is not None and kr.metric == metric:
        reference = state.resolve_baseline(client, kr)[0]
    effect = expectation.absolute(reference)
    if effect is None:
        raise InputError(f"the expected effect {expectation.text} is relative to a zero or unknown mean; "
                         "give an absolute one in metric units", parameter="expect")
    have_pairs = None
    if hypothesis.pair_by:
        pairs, _ = evidence.pairs(usable, metric, hypothesis.pair_by)
        have_pairs = len(pairs)
        pair_sd = sample_sd([t - c for c, t in pairs])
        if pair_sd:
            sd, source = pair_sd, f"the differences of {len(pairs)} pairs"
        else:
            sd = sd * math.sqrt(2)
            source = f"{source} x sqrt(2): pairs taken as uncorrelated until 2 pairs vary"
    runs = runs_needed(effect, sd, power, alpha, paired=bool(hypothesis.pair_by))
    unit = "pairs" if hypothesis.pair_by else "runs per arm"
    return Plan(
        hypothesis=hypothesis.id, metric=metric, comparison="paired" if hypothesis.pair_by else "two-sample",
        runs_per_arm=runs, power=power, alpha=alpha, effect=effect, sd=sd, sd_source=source,
        have_control=len(control), have_treatment=len(values["treatment"]), have_pairs=have_pairs,
        note=(f"{runs} {unit} give a fixed-sample t-test power {power:g} at alpha {alpha:g}; evaluations "
              "after the first are judged on the anytime-valid confidence sequence, which needs more"),
    )


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
        raise InputError(
            "a note is required: write down what was learned, whatever the verdict", parameter="note"
        )
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


def refresh_ledger_krs(
    client: MlflowClient, moments_ms: Iterable[int], significant_only: bool = False
) -> list[str]:
    """Re-score the published cycles containing these moments if they have ledger KRs.

    With `significant_only`, only cycles with a `count_only: significant` ledger KR: a new
    evaluation changes no count but can change the cycle's q-values.
    """
    from mlflow_okr.sync import sync

    refreshed = []
    for moment in sorted(set(moments_ms)):
        try:
            sets = state.innermost_sets(client, now=moment / 1000)
        except NotPublishedError:
            return refreshed
        for published in sets:
            has_ledger_kr = any(
                kr.source == "ledger" and (not significant_only or kr.count_only == "significant")
                for _, kr in published.spec.key_results()
            )
            if published.label not in refreshed and published.cycle.contains(moment) and has_ledger_kr:
                sync(client, cycle=published.cycle.name, team=published.team or "")
                refreshed.append(published.label)
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
