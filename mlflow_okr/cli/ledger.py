"""The `ledger` command group and `suggest`: options, calls into the library, printing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlflow_okr import vocabulary
from mlflow_okr.cli.common import (
    EXIT_CHECK_FAILED,
    CommandError,
    as_of_datetime,
    as_of_option,
    echo_json,
    format_option,
    handle_errors,
    team_option,
    tracking_uri_option,
)
from mlflow_okr.multiplicity import ALPHA

if TYPE_CHECKING:
    from mlflow_okr.ledger.models import Hypothesis


class LedgerChoice(click.Choice):
    """A choice among the ledger's arms, verdicts or statuses, read when a command needs them.

    Importing the ledger imports MLflow; `mlflow-okr --help` and the commands that never talk
    to MLflow should not wait for that just to declare their options.
    """

    def __init__(self, name: str):
        self._name = name
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        from mlflow_okr.ledger import models

        return getattr(models, self._name)

    @choices.setter
    def choices(self, value: tuple[str, ...]) -> None:
        pass  # click.Choice.__init__ stores its argument here; the choices come from the ledger


def _day(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--tag {value!r}: use KEY=VALUE")
        tags[key.strip()] = text
    return tags


@click.group("ledger")
def ledger_group() -> None:
    """Record hypotheses, their evidence runs, verdicts and learnings (experiment okr/ledger)."""


@ledger_group.command()
@click.argument("statement")
@click.option("--id", "hypothesis_id", default=None, help="Id (slug); default: made from the statement.")
@click.option("--kr", default=None, help="The KR this hypothesis should move.")
@click.option("--objective", default=None, help="The objective it serves.")
@click.option("--metric", default=None, help="MLflow metric key to compare (default: the KR's metric).")
@click.option("--expect", default=None, help='Expected effect: relative ("+2%") or absolute (0.02).')
@click.option("--owner", default=None, help="Who owns the hypothesis.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE tag on the hypothesis run (repeatable).")
@click.option("--pair-by", default=None,
              help="Pair control and treatment runs with the same param or tag (params.seed, tags.split).")
@click.option("--guardrail", "guardrails", multiple=True,
              help='Counter-metric the treatment must not worsen beyond a margin: "p99_ms<=+5%", '
                   '"accuracy>=-1%" (repeatable).')
@tracking_uri_option
@handle_errors
def add(statement, hypothesis_id, kr, objective, metric, expect, owner, tags, pair_by, guardrails,
        tracking_uri) -> None:
    """Record a new hypothesis STATEMENT (status proposed) and print its id."""
    from mlflow_okr import ledger

    hypothesis = ledger.add_hypothesis(
        statement, hypothesis_id=hypothesis_id, kr=kr, objective=objective, metric=metric,
        expect=expect, owner=owner, tags=_tags(tags), tracking_uri=tracking_uri, pair_by=pair_by,
        guardrails=guardrails,
    )
    click.echo(hypothesis.id)


@ledger_group.command()
@click.argument("hypothesis_id")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--arm", type=LedgerChoice("ARMS"), default="treatment", show_default=True,
              help="Which arm the runs are.")
@tracking_uri_option
@handle_errors
def link(hypothesis_id: str, run_ids: tuple[str, ...], arm: str, tracking_uri: str | None) -> None:
    """Link evidence RUN_IDS to hypothesis HYPOTHESIS_ID; its status becomes testing."""
    from mlflow_okr import ledger

    hypothesis = ledger.link_runs(hypothesis_id, run_ids, arm=arm, tracking_uri=tracking_uri)
    control, treatment = len(hypothesis.arm_runs("control")), len(hypothesis.arm_runs("treatment"))
    click.echo(
        f"Linked {len(run_ids)} run(s) to {hypothesis.id} as {arm}: now {control} control, "
        f"{treatment} treatment; status {hypothesis.status}."
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


@ledger_group.command()
@click.argument("hypothesis_id")
@format_option("table", "json")
@tracking_uri_option
@handle_errors
def evaluate(hypothesis_id: str, output_format: str, tracking_uri: str | None) -> None:
    """Compare the arms of HYPOTHESIS_ID on its metric and suggest a verdict."""
    from mlflow_okr import ledger

    result = ledger.evaluate_hypothesis(hypothesis_id, tracking_uri=tracking_uri)
    if output_format == "json":
        click.echo(result.model_dump_json(indent=2))
        return
    control = "KR baseline" if result.comparison == "one-sample" else "control"
    comparison = result.comparison
    if result.comparison == "paired":
        comparison = f"paired by {result.pair_by}: {result.pairs} pairs"
    click.echo(f"Hypothesis {result.hypothesis}: metric {result.metric or 'n/a'} ({comparison})")
    click.echo(f"  {control:<11} n={result.control.n:<4} mean={_number(result.control.mean)}")
    click.echo(f"  {'treatment':<11} n={result.treatment.n:<4} mean={_number(result.treatment.mean)}")
    if result.unpaired_runs:
        click.echo(f"  unpaired    {len(result.unpaired_runs)} run(s) without a partner: "
                   + ", ".join(result.unpaired_runs))
    if result.effect is not None:
        relative = f" ({result.relative_effect:+.2%})" if result.relative_effect is not None else ""
        click.echo(f"  effect      {result.effect:+.6g}{relative}")
    if result.ci_low is not None:
        click.echo(f"  {result.confidence:.0%} CI      [{result.ci_low:.6g}, {result.ci_high:.6g}]")
        click.echo(f"  p-value     {result.p_value:.4g}")
    if result.sequential_p_value is not None:
        if result.sequential_ci_low is None:
            sequence = "not bounded yet"
        else:
            sequence = f"[{result.sequential_ci_low:.6g}, {result.sequential_ci_high:.6g}]"
        used = "  (used: evaluated on new runs before)" if result.verdict_basis == "sequential" else ""
        click.echo(f"  anytime-valid {result.confidence:.0%} CS {sequence}, p-value "
                   f"{result.sequential_p_value:.4g}, look {result.looks}{used}")
    for check in result.guardrails:
        click.echo(f"  guardrail   {check.guardrail}: {check.verdict} ({check.reason})")
    click.echo(f"Suggested verdict: {result.suggested_verdict} ({result.reason})")


@ledger_group.command()
@click.argument("hypothesis_id")
@click.option("--power", type=float, default=0.8, show_default=True, help="Chance to detect the effect.")
@click.option("--alpha", type=float, default=ALPHA, show_default=True, help="Significance level.")
@click.option("--expect", default=None, help="Plan for this effect instead of the hypothesis's --expect.")
@format_option("table", "json")
@tracking_uri_option
@handle_errors
def plan(hypothesis_id: str, power: float, alpha: float, expect: str | None, output_format: str,
         tracking_uri: str | None) -> None:
    """Runs per arm HYPOTHESIS_ID needs to detect its expected effect (t-test power)."""
    from mlflow_okr import ledger

    result = ledger.plan_hypothesis(hypothesis_id, power=power, alpha=alpha, expect=expect,
                                    tracking_uri=tracking_uri)
    if output_format == "json":
        click.echo(result.model_dump_json(indent=2))
        return
    unit = "pairs" if result.comparison == "paired" else "runs per arm"
    click.echo(f"Hypothesis {result.hypothesis}: metric {result.metric} ({result.comparison})")
    click.echo(f"  effect      {result.effect:+.6g}")
    click.echo(f"  sd          {result.sd:.6g} (from {result.sd_source})")
    click.echo(f"  needed      {result.runs_per_arm} {unit} for power {result.power:g} "
               f"at alpha {result.alpha:g}")
    have = f"{result.have_control} control, {result.have_treatment} treatment"
    if result.have_pairs is not None:
        have += f", {result.have_pairs} pairs"
    click.echo(f"  have        {have}")
    click.echo(f"Note: {result.note}.")


@ledger_group.command()
@click.argument("hypothesis_id")
@click.argument("verdict", type=LedgerChoice("VERDICTS"))
@click.option("--note", required=True, help="What was learned (kept, whatever the verdict).")
@click.option("--at", "resolved_on", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="When it was resolved (UTC), to record a past decision; default: now.")
@tracking_uri_option
@handle_errors
def resolve(hypothesis_id: str, verdict: str, note: str, resolved_on, tracking_uri: str | None) -> None:
    """Close HYPOTHESIS_ID as validated, invalidated or inconclusive."""
    from mlflow_okr import ledger

    hypothesis = ledger.resolve_hypothesis(
        hypothesis_id, verdict, note, tracking_uri=tracking_uri, when=as_of_datetime(resolved_on)
    )
    click.echo(f"Resolved {hypothesis.id}: {hypothesis.status} ({_day(hypothesis.resolved_at)} UTC).")


def _print_hypotheses(hypotheses: list[Hypothesis], output_format: str) -> None:
    from mlflow_okr import ledger

    if output_format == "json":
        echo_json([h.summary() for h in hypotheses])
        return
    if output_format == "csv":
        click.echo(ledger.hypotheses_frame(hypotheses).to_csv(index=False), nl=False)
        return
    if not hypotheses:
        click.echo("No hypotheses.")
        return
    width = max(28, *(len(h.id) for h in hypotheses))
    click.echo(f"{'ID':<{width}} {'STATUS':<12} {'KR':<14} {'METRIC':<16} {'C/T':>7} {'Q':>6}  STATEMENT")
    for h in hypotheses:
        arms = f"{len(h.arm_runs('control'))}/{len(h.arm_runs('treatment'))}"
        statement = h.statement if len(h.statement) <= 60 else h.statement[:57] + "..."
        kr, metric = h.kr or "-", h.metric or "-"
        q_value = "-" if h.q_value is None else f"{h.q_value:.3f}"
        click.echo(
            f"{h.id:<{width}} {h.status:<12} {kr:<14} {metric:<16} {arms:>7} {q_value:>6}  {statement}"
        )


def _rate(rate) -> str:
    shown = "n/a" if rate.win_rate is None else f"{rate.win_rate:.0%}"
    return f"{rate.name or '(none)'} {rate.validated}/{rate.resolved} ({shown})"


def _print_track_record(record) -> None:
    click.echo(
        f"Track record {record.cycle or '(whole ledger)'}: {record.tried} tried, {record.validated} "
        f"validated, {record.invalidated} invalidated, {record.inconclusive} inconclusive, {record.open} open"
    )
    if record.by_objective:
        click.echo("  win rate by objective: " + "; ".join(_rate(r) for r in record.by_objective))
    if record.by_owner:
        click.echo("  win rate by owner:     " + "; ".join(_rate(r) for r in record.by_owner))
    for metric, effect in record.validated_effect.items():
        click.echo(f"  validated effect on {metric}: {effect:+.6g}")
    if record.validated_above_alpha:
        click.echo(f"  validated but q-value above {record.alpha:g} (may be false discoveries): "
                   + ", ".join(record.validated_above_alpha))


@ledger_group.command("list")
@click.option("--status", type=LedgerChoice("STATUSES"), default=None, help="Only this status.")
@click.option("--kr", default=None, help="Only hypotheses linked to this KR.")
@click.option("--metric", default=None, help="Only hypotheses on this metric.")
@click.option("--cycle", default=None,
              help="Only this published cycle's hypotheses (default: all; q-values across the current one).")
@team_option
@click.option("--summary", is_flag=True, help="Print the cycle's track record instead of the hypotheses.")
@format_option("table", "json", "csv")
@tracking_uri_option
@handle_errors
def list_command(status, kr, metric, cycle, team, summary: bool, output_format: str,
                 tracking_uri: str | None) -> None:
    """List hypotheses with status, evidence counts (control/treatment) and q-values."""
    from mlflow_okr import ledger

    if summary:
        if output_format == "csv":
            raise CommandError("--summary prints a table or JSON; use --format table or json")
        record = ledger.ledger_summary(cycle=cycle, tracking_uri=tracking_uri)
        if output_format == "json":
            click.echo(record.model_dump_json(indent=2))
        else:
            _print_track_record(record)
        return
    hypotheses = ledger.list_hypotheses(status=status, kr=kr, metric=metric, tracking_uri=tracking_uri,
                                        cycle=cycle, team=team)
    _print_hypotheses(hypotheses, output_format)
    if output_format == "table" and hypotheses and not (status or kr or metric):
        click.echo()
        _print_track_record(ledger.ledger_summary(cycle=cycle, tracking_uri=tracking_uri))


@ledger_group.command()
@click.argument("text")
@format_option("table", "json", "csv")
@tracking_uri_option
@handle_errors
def search(text: str, output_format: str, tracking_uri: str | None) -> None:
    """Find hypotheses whose statement, learning, ids, metric, owner or tags contain TEXT."""
    from mlflow_okr import ledger

    _print_hypotheses(ledger.search_hypotheses(text, tracking_uri=tracking_uri), output_format)


@ledger_group.command()
@click.argument("hypothesis_id")
@format_option("table", "json")
@tracking_uri_option
@handle_errors
def show(hypothesis_id: str, output_format: str, tracking_uri: str | None) -> None:
    """Show HYPOTHESIS_ID with its evidence runs and full event history."""
    from mlflow_okr import ledger

    h = ledger.get_hypothesis(hypothesis_id, tracking_uri=tracking_uri)
    if output_format == "json":
        click.echo(h.model_dump_json(indent=2))
        return
    click.echo(f"{h.id}: {h.statement}")
    click.echo(f"  status: {h.status}")
    for label, value in (("kr", h.kr), ("objective", h.objective), ("metric", h.metric),
                         ("expect", h.expect), ("pair by", h.pair_by),
                         ("guardrails", ", ".join(h.guardrails) or None), ("owner", h.owner),
                         ("learning", h.learning)):
        if value:
            click.echo(f"  {label}: {value}")
    for key, value in h.tags.items():
        click.echo(f"  tag {key}={value}")
    if h.evidence:
        click.echo("Evidence:")
        for item in h.evidence:
            origin = f" (tagged {vocabulary.TAG_HYPOTHESIS})" if item.auto else ""
            click.echo(f"  {item.arm:<9} {item.run_id}  experiment {item.experiment_id}{origin}")
    click.echo("History:")
    for event in h.events:
        detail = _event_detail(event.action, event.changes)
        click.echo(f"  #{event.seq} {_day(event.when)} {event.who}: {event.action}{detail}")


def _event_detail(action: str, changes: dict) -> str:
    if action == "link":
        arms = sorted({item["arm"] for item in changes.get("runs", [])})
        return f" {len(changes.get('runs', []))} run(s) as {'/'.join(arms)}"
    if action == "resolve":
        return f" {changes.get('status')}: {changes.get('note')}"
    if action == "evaluate":
        p_value = changes.get("p_value")
        shown = "n/a" if p_value is None else f"{p_value:.4g}"
        return f" suggested {changes.get('suggested_verdict')} (p={shown})"
    return ""


@ledger_group.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this .jsonl file (default: standard output).")
@tracking_uri_option
@handle_errors
def export(output: Path | None, tracking_uri: str | None) -> None:
    """Export every hypothesis's events as JSON Lines (for git, or another MLflow server)."""
    from mlflow_okr import ledger

    text = ledger.export_ledger(output, tracking_uri=tracking_uri)
    if output is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"Exported {len(text.splitlines())} events to {output}.")


@ledger_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@tracking_uri_option
@handle_errors
def import_command(path: Path, tracking_uri: str | None) -> None:
    """Import a JSON Lines export; importing the same file again changes nothing."""
    from mlflow_okr import ledger

    result = ledger.import_ledger(path, tracking_uri=tracking_uri)
    click.echo(
        f"Imported {path}: {len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged ({result.events_written} events written)."
    )


@ledger_group.command()
@tracking_uri_option
@handle_errors
def verify(tracking_uri: str | None) -> None:
    """Check the hash chain and state of every hypothesis; exit 1 naming the first bad event."""
    from mlflow_okr import ledger

    result = ledger.verify_ledger(tracking_uri=tracking_uri)
    if result.ok:
        click.echo(f"Ledger verified: {result.hypotheses} hypotheses, {result.events} events, chains intact.")
        return
    lines = [f"Ledger verification failed: {result.problems[0]}"]
    lines += [f"  also: {problem}" for problem in result.problems[1:10]]
    if len(result.problems) > 10:
        lines.append(f"  ... {len(result.problems) - 10} more problem(s)")
    raise CommandError("\n".join(lines), EXIT_CHECK_FAILED)


@click.command()
@click.option("--cycle", "next_cycle", default=None,
              help="The cycle to draft, e.g. 2027-Q1 (default: the one after the published cycle).")
@click.option("--from-cycle", default=None, help="The published cycle to learn from (default: the current).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the draft okrs.yaml here (default: standard output).")
@team_option
@as_of_option
@tracking_uri_option
@handle_errors
def suggest(
    next_cycle, from_cycle, output: Path | None, team: str | None, as_of, tracking_uri: str | None
) -> None:
    """Draft next cycle's okrs.yaml from this cycle's track record (targets for ~70% attainment).

    A cycle with several teams' sets gets one draft per set; with -o FILE each is written to
    FILE's name with `-<team>` added (okrs.yaml -> okrs-team-a.yaml).
    """
    from mlflow_okr.suggest import suggest_next_cycles

    drafts = suggest_next_cycles(
        next_cycle=next_cycle, from_cycle=from_cycle, tracking_uri=tracking_uri, now=as_of_datetime(as_of),
        team=team,
    )
    several = len(drafts) > 1
    if output is None:
        for draft in drafts:
            if several:
                click.echo(f"# ---- {draft.team or 'unnamed set'}: save as its own okrs.yaml")
            click.echo(draft.text, nl=False)
        return
    paths = [
        output.with_name(f"{output.stem}-{draft.team or 'unnamed'}{output.suffix}") if several else output
        for draft in drafts
    ]
    for path in paths:
        if path.exists():
            raise CommandError(f"{path} already exists; choose another -o path or remove it")
    for path, draft in zip(paths, drafts, strict=True):
        path.write_text(draft.text, encoding="utf-8")
        click.echo(
            f"Wrote {path}: cycle {draft.cycle}, {draft.key_results} KRs drafted from {draft.source_cycle}. "
            f"Review it, then: mlflow-okr validate {path}"
        )


COMMANDS = [ledger_group, suggest]
