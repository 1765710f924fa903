"""OKR state made legible in MLflow's own UI: the Markdown descriptions of `okr/<cycle>` and its KR runs.

The renderers are pure. `refresh_ui_notes` is the one writer: it reads the current descriptions
once and writes only those whose text changed, so calling it after every KR state write costs
reads, not history.

Links are MLflow-UI-relative (`#/experiments/<id>/runs/<run>`), so they work behind any host or
proxy prefix. They carry `workflowType=machine_learning`: MLflow 3.17's UI picks its GenAI or
"Model training" view from that URL parameter (else from the switch it remembers per browser),
while earlier 3.x releases read the experiment's `mlflow.experimentKind` tag, which `apply` sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from mlflow_okr import registry, state, traces, vocabulary
from mlflow_okr.render import STATUS_MARKS, number
from mlflow_okr.results import CycleStatus, KeyResultStatus
from mlflow_okr.spec import BaselineRef, Bounds, KeyResult, Objective

# The experiment tag MLflow's UI reads to choose between its GenAI and classic runs views, and the
# value for the classic one ("Model training"); see ExperimentKind in MLflow's JS bundle.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
RUNS_VIEW_KIND = "custom_model_development"
WORKFLOW_QUERY = "workflowType=machine_learning"
NOTE_TAG = MLFLOW_RUN_NOTE  # the run and experiment description the UI shows
# MLflow refuses longer experiment tag values (mlflow.utils.validation, MLflow 3.x).
MAX_EXPERIMENT_NOTE = 20000
MAX_LINKED_EXPERIMENTS = 50

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def escape(text: object) -> str:
    """User text as literal Markdown: specials backslashed, HTML neutralised, one line."""
    plain = " ".join(str(text).split())
    plain = plain.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", plain)


def code(text: str) -> str:
    """A metric key or filter as inline code (double backticks around one that holds a backtick)."""
    plain = " ".join(text.split())
    if "`" not in plain:
        return f"`{plain}`"
    return f"`` {plain} ``" if "``" not in plain else escape(plain)


def status_mark(status: str) -> str:
    """The status with the terminal table's symbol (fonts that MLflow's UI uses all have these)."""
    return STATUS_MARKS.get(status, status)


def percent(progress: float) -> str:
    return f"{progress:.0%}"


# ---------------------------------------------------------------------------------------------
# Links


def experiment_link(experiment_id: str) -> str:
    """An experiment's runs table in MLflow's UI (not its GenAI overview)."""
    return f"#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}"


def run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_QUERY}"


def runs_table_link(experiment_ids: Iterable[str], filter_string: str) -> str | None:
    """The runs table of `experiment_ids` filtered by `filter_string`.

    None without experiments, or with more than MAX_LINKED_EXPERIMENTS: a KR over every
    experiment of a large store would need a URL no browser or proxy takes.
    """
    ids = sorted(set(experiment_ids))
    query = f"{WORKFLOW_QUERY}&searchFilter={quote(filter_string, safe='')}"
    if not ids or len(ids) > MAX_LINKED_EXPERIMENTS:
        return None
    if len(ids) == 1:
        return f"#/experiments/{ids[0]}/runs?{query}"
    experiments = quote('["' + '","'.join(ids) + '"]', safe="")
    return f"#/compare-experiments/s?experiments={experiments}&{query}"


def counted_filter(kr_id: str) -> str:
    return f"tags.`{vocabulary.source_tag(kr_id)}` = 'counted'"


def _link(text: str, href: str | None) -> str:
    return f"[{text}]({href})" if href else text


# ---------------------------------------------------------------------------------------------
# Renderers


class UiContext:
    """What the renderers need beyond the status: where runs live in MLflow.

    `run_experiments` maps source run ids (best runs, baseline runs) to their experiment ids;
    `kr_scopes` maps KR ids to the source experiment ids they count runs from.
    """

    def __init__(
        self,
        run_experiments: Mapping[str, str] | None = None,
        kr_scopes: Mapping[str, Iterable[str]] | None = None,
    ):
        self.run_experiments = dict(run_experiments or {})
        self.kr_scopes = {kr_id: sorted(ids) for kr_id, ids in (kr_scopes or {}).items()}

    def counted_runs_href(self, kr_id: str) -> str | None:
        """The runs table filtered to the KR's counted runs, over the experiments it looks at."""
        return runs_table_link(self.kr_scopes.get(kr_id, ()), counted_filter(kr_id))

    def run_href(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        experiment_id = self.run_experiments.get(run_id)
        # MLflow's UI also routes a bare run id to its experiment's run page.
        return run_link(experiment_id, run_id) if experiment_id else f"#/runs/{run_id}?{WORKFLOW_QUERY}"


def value_vs_target(kr: KeyResultStatus) -> str:
    """`current → target` with units, in the words of the KR's kind."""
    if kr.kind == "maintain":
        return f"{number(kr.current, kr.unit)} (worst counted run)"
    if kr.kind == "ledger":
        return f"{number(kr.current)} of {number(kr.target)} hypotheses validated"
    return f"{number(kr.current, kr.unit)} → {number(kr.target, kr.unit)}"


def _best_run_text(kr: KeyResultStatus, context: UiContext) -> str:
    if not kr.best_run_id:
        return "—"
    return _link(f"run {kr.best_run_id[:8]}", context.run_href(kr.best_run_id))


def cycle_board_markdown(
    status: CycleStatus, published: state.PublishedCycle, context: UiContext | None = None
) -> str:
    """The `okr/<cycle>` experiment description: every objective and KR at one glance."""
    context = context or UiContext()
    cycle = status.cycle
    counts = status.status_counts()
    order = list(STATUS_MARKS)
    ranked = sorted(counts.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    summary = " · ".join(f"{count} {status_mark(name)}" for name, count in ranked)
    team = f" · team {escape(published.team)}" if published.team else ""
    aligns_to = {objective.id: objective.aligns_to for objective in published.spec.objectives}
    lines = [
        f"# OKRs {escape(cycle.name)}{team}: grade {status.score:.2f}",
        "",
        f"{cycle.start} to {cycle.end}, {percent(cycle.elapsed)} of the cycle elapsed; "
        "0\\.7 is the conventional success grade\\. Kept current by mlflow\\-okr\\.",
        "",
        summary,
    ]
    for objective in status.objectives:
        objective_run = published.objective_runs.get(objective.id)
        heading = escape(objective.title)
        if objective_run:
            heading = _link(heading, run_link(published.experiment_id, objective_run))
        owner = f" · owner {escape(objective.owner)}" if objective.owner else ""
        # Scores roll up when read (`mlflow-okr status`); here each set shows its own KRs.
        owner += "".join(f" · serves {code(parent)}" for parent in aligns_to.get(objective.id, []))
        lines += [
            "",
            f"## {heading}",
            "",
            f"{escape(objective.category)}{owner} · score **{objective.score:.2f}**",
            "",
            "| Status | Key result | Progress | Current → target | Runs | Best run |",
            "|---|---|---|---|---|---|",
        ]
        for kr in objective.key_results:
            kr_run = published.kr_runs.get(kr.id)
            kr_href = run_link(published.experiment_id, kr_run) if kr_run else None
            name = _link(f"**{escape(kr.id)}**", kr_href)
            title = f" {escape(kr.title)}" if kr.title else ""
            runs = "—"
            if kr.kind in ("metric", "maintain"):
                runs = _link(str(kr.counted_runs), context.counted_runs_href(kr.id))
            lines.append(
                f"| {status_mark(kr.status)} | {name}{title} | {percent(kr.progress)} | "
                f"{value_vs_target(kr)} | {runs} | {_best_run_text(kr, context)} |"
            )
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_EXPERIMENT_NOTE:
        # Too many KRs for one tag: keep the headline and point to the full list.
        text = "\n".join(lines[:5]) + f"\n\n{len(status.key_results())} KRs are too many for one MLflow "
        text += "description: see `mlflow-okr status` or `mlflow-okr board`.\n"
    return text


def _baseline_text(kr: KeyResult, status: KeyResultStatus, context: UiContext) -> str:
    resolved = number(status.baseline, status.unit)
    if not isinstance(kr.baseline, BaselineRef):
        return resolved
    if status.baseline is None:
        resolved = "not resolved yet"
    if kr.baseline.run_id:
        source = f"{code(kr.metric or '')} of " + _link(
            f"run {kr.baseline.run_id[:8]}", context.run_href(kr.baseline.run_id)
        )
    else:
        scope = ", ".join(escape(name) for name in kr.baseline.experiments) or "all experiments"
        matching = code(kr.baseline.filter or "")
        source = f"best {code(kr.metric or '')} of the runs matching {matching} in {scope}"
    return f"{resolved} ({source})"


def _target_text(kr: KeyResult, status: KeyResultStatus) -> str:
    if kr.maintain is not None:
        return f"maintain {_bound_text(_measured(kr), kr.maintain)}"
    resolved = number(status.target, status.unit)
    if isinstance(kr.target, str):
        if status.target is None:
            resolved = "not resolved yet"
        return f"{resolved} ({escape(kr.target)} on the baseline)"
    return resolved


def _measured(kr: KeyResult) -> str:
    """What a maintain bound holds for: the metric, or a trace KR's aggregate (`avg csat`)."""
    return traces.label(kr) if kr.source == "traces" else kr.metric or ""


def _bound_text(metric: str, bounds: Bounds) -> str:
    described = bounds.bound(metric).describe().replace(">=", "≥").replace("<=", "≤")
    return f"{code(metric)} {escape(described)}"


def _direction_text(direction: str | None) -> str:
    return {"maximize": "maximize (higher is better)", "minimize": "minimize (lower is better)"}.get(
        direction or "", "—"
    )


def kr_run_markdown(
    kr: KeyResult, status: KeyResultStatus, published: state.PublishedCycle, context: UiContext | None = None
) -> str:
    """A KR run's description: its resolved numbers, state, guardrails and links to its runs."""
    context = context or UiContext()
    objective = published.objective_of(kr.id)
    objective_run = published.objective_runs.get(objective.id)
    objective_href = run_link(published.experiment_id, objective_run) if objective_run else None
    lines = [
        f"## {escape(kr.label)}",
        "",
        f"{status_mark(status.status)} · progress **{percent(status.progress)}** · objective: "
        + _link(escape(objective.title), objective_href),
        "",
        "| | |",
        "|---|---|",
        f"| Kind | {kr.kind} KR |",
    ]
    if kr.metric:
        lines.append(f"| Metric | {code(kr.metric)}, {escape(kr.aggregate)} of the counted runs |")
    if kr.source == "traces":
        lines.append(f"| Measures | {escape(traces.describe(kr))} |")
    if kr.kind in ("metric", "maintain") or (kr.source == "traces" and kr.maintain is None):
        lines.append(f"| Direction | {_direction_text(status.direction)} |")
    if kr.kind == "metric" or (kr.source == "traces" and kr.maintain is None):
        lines.append(f"| Baseline | {_baseline_text(kr, status, context)} |")
    lines.append(f"| Target | {_target_text(kr, status)} |")
    current = number(status.current, status.unit)
    if kr.kind in ("maintain", "ledger"):
        current = value_vs_target(status)
    lines.append(f"| Current | {current} |")
    guardrails = "; ".join(_bound_text(guardrail.metric, guardrail) for guardrail in kr.guardrails)
    if kr.kind in ("metric", "maintain"):
        lines.append(f"| Guardrails | {guardrails or 'none'} |")
        if kr.guardrails:
            lines.append(f"| Guardrail breaches | {status.guardrail_breaches} |")
        lines.append(f"| Best run | {_best_run_text(status, context)} |")
        tally = f"{status.counted_runs} counted, {status.pending_runs} pending, "
        tally += f"{status.excluded_runs} excluded"
        lines.append(f"| Runs | {_link(tally, context.counted_runs_href(kr.id))} |")
    if kr.source == "traces":
        lines.append(f"| Counted | {status.counted_runs} {traces.counted_noun(kr)} |")
    if status.model is not None:
        model = status.model
        now_at = f"version {model.version}" if model.version else "no version yet"
        lines.append(f"| Model | {code(f'{model.name}@{model.alias}')} → {escape(now_at)} |")
        if model.promotions:
            history = "; ".join(registry.promotion_text(p) for p in model.promotions)
            lines.append(f"| Promotions | {escape(history)} |")
    if status.notes:
        lines.append(f"| Notes | {escape('; '.join(status.notes))} |")
    if kr.kind in ("metric", "maintain") and kr.model is None:  # a model KR's alias picks its run
        lines += ["", f"Counted runs match {code(counted_filter(kr.id))} in MLflow's search\\."]
    text = "\n".join(lines) + "\n"
    limit = vocabulary.MAX_TAG_VALUE_LENGTH
    return text if len(text) <= limit else text[: limit - 2] + "…\n"


def kr_definition_markdown(kr: KeyResult, objective: Objective) -> str:
    """A new KR run's description, before any state is computed: what the spec says."""
    heading = f"{status_mark('not-started')} · objective: {escape(objective.title)}"
    lines = [f"## {escape(kr.label)}", "", heading, ""]
    if kr.metric:
        lines.append(f"- Metric: {code(kr.metric)}")
    if kr.source == "traces":
        lines.append(f"- Measures: {escape(traces.describe(kr))}")
    if kr.maintain is not None:
        lines.append(f"- Maintain: {_bound_text(_measured(kr), kr.maintain)}")
    elif kr.target is not None:
        baseline = "read from MLflow runs" if isinstance(kr.baseline, BaselineRef) else escape(kr.baseline)
        lines.append(f"- Baseline: {baseline}; target: {escape(kr.target)}")
    for guardrail in kr.guardrails:
        lines.append(f"- Guardrail: {_bound_text(guardrail.metric, guardrail)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The writer


def _kr_scopes(client: MlflowClient, published: state.PublishedCycle) -> dict[str, list[str]]:
    """Each metric KR's source experiment ids, from one listing of the experiments."""
    patterns = {kr.id: kr.experiments for _, kr in published.spec.key_results() if kr.metric}
    if not patterns:
        return {}
    experiments = state.source_experiments(client)  # listed once for every KR
    return {kr_id: state.match_experiments(experiments, wanted) for kr_id, wanted in patterns.items()}


def _run_experiments(client: MlflowClient, run_ids: set[str], experiment_ids: set[str]) -> dict[str, str]:
    """The experiment of each source run, in one search over the KRs' experiments (at most a few)."""
    if not run_ids or not experiment_ids or len(experiment_ids) > MAX_LINKED_EXPERIMENTS:
        # Over many experiments, links use MLflow's run-id route instead of a wide search.
        return {}
    quoted = ", ".join(f"'{run_id}'" for run_id in sorted(run_ids) if re.fullmatch(r"[0-9a-zA-Z_-]+", run_id))
    if not quoted:  # only ids that cannot name a run (a hand-written baseline run_id)
        return {}
    found = {}
    for run in state.iter_runs(client, sorted(experiment_ids), f"attributes.run_id IN ({quoted})"):
        found[run.info.run_id] = run.info.experiment_id
    return found


def ui_context(client: MlflowClient, published: state.PublishedCycle, status: CycleStatus) -> UiContext:
    """Where the runs that the descriptions link to live."""
    scopes = _kr_scopes(client, published)
    run_ids = {kr.best_run_id for kr in status.key_results() if kr.best_run_id}
    for _, kr in published.spec.key_results():
        if isinstance(kr.baseline, BaselineRef) and kr.baseline.run_id:
            run_ids.add(kr.baseline.run_id)
    all_scoped = {experiment_id for ids in scopes.values() for experiment_id in ids}
    return UiContext(_run_experiments(client, run_ids, all_scoped), scopes)


def refresh_ui_notes(
    client: MlflowClient,
    published: state.PublishedCycle,
    status: CycleStatus,
    kr_runs: Mapping[str, Run] | None = None,
) -> bool:
    """Write the cycle's and its KR runs' descriptions where their text changed; True when it wrote.

    `kr_runs` (KR id -> run, as the caller just read them) saves the read of the KR runs' tags.
    """
    context = ui_context(client, published, status)
    experiment = client.get_experiment(published.experiment_id)
    wrote = False
    board = cycle_board_markdown(status, published, context)
    if experiment.tags.get(NOTE_TAG) != board:
        client.set_experiment_tag(published.experiment_id, NOTE_TAG, board)
        wrote = True
    if kr_runs is None:
        live = {run_id: kr_id for kr_id, run_id in published.kr_runs.items()}
        kr_runs = {
            live[run.info.run_id]: run
            for run in state.iter_runs(
                client, [published.experiment_id], f"tags.`{vocabulary.TAG_ROLE}` = '{vocabulary.ROLE_KR}'"
            )
            if run.info.run_id in live
        }
    for _, kr in published.spec.key_results():
        kr_status = status.find(kr.id)
        run = kr_runs.get(kr.id)
        if kr_status is None or run is None:
            continue
        note = kr_run_markdown(kr, kr_status, published, context)
        if run.data.tags.get(NOTE_TAG) != note:
            client.set_tag(run.info.run_id, NOTE_TAG, note)
            wrote = True
    return wrote
