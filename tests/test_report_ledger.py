"""The report's ledger section: q-values, the flag on doubtful "validated" ones, the track record;
and a resolved verdict that no new run changes."""

from __future__ import annotations

import json

import pytest

from mlflow_okr import state, vocabulary
from mlflow_okr.board.data import hypotheses as board_hypotheses
from mlflow_okr.ledger import evaluate_hypothesis, get_hypothesis, link_runs, list_hypotheses
from mlflow_okr.report import build_report, render
from mlflow_okr.report.text import p_value as q_text
from tests.conftest import NOW, invoke, make_run
from tests.test_ledger_record import bh_by_hand, make_cycle_of_hypotheses


@pytest.fixture
def cycle_of_hypotheses(client, runner, write_spec):
    return make_cycle_of_hypotheses(client, runner, write_spec)


def test_report_shows_q_values_flags_doubtful_wins_and_the_track_record(cycle_of_hypotheses) -> None:
    hypotheses = cycle_of_hypotheses
    report = build_report(state.make_client(), cycle="2026-Q4", now=NOW)
    expected = bh_by_hand({h.id: h.verdict_p_value for h in hypotheses.values()})
    assert {h.id: h.q_value for h in report.ledger} == expected
    assert [h.id for h in report.ledger if h.doubtful] == ["marginal"]
    record = report.track_record
    assert (record.tried, record.validated, record.inconclusive, record.validated_above_alpha) == (
        4,
        3,
        1,
        ["marginal"],
    )
    markdown = render(report, "md")
    section = markdown[markdown.index("## Hypotheses resolved this cycle") :]
    effect = record.validated_effect["ctr"]
    # Markdown escapes "<" in text lines, as everywhere in the report.
    q_line = "; ".join(f"{h.id} {q_text(h.q_value)}" for h in report.ledger).replace("<", "&lt;")
    assert section.splitlines()[2:9] == [
        "- 4 hypotheses tried: 3 validated, 0 invalidated, 1 inconclusive, 0 open.",
        "- Win rate by objective: reco 3/3 (100%); (none) 0/1 (0%).",
        "- Win rate by owner: alice 2/2 (100%); bob 1/2 (50%).",
        f"- Validated effect: ctr {effect:+.4g}.",
        f"- Benjamini-Hochberg q-values across the cycle's evaluated hypotheses: {q_line}.",
        "- Validated but with a q-value above 0.05 (may be false discoveries): marginal.",
        "",
    ]
    html = render(report, "html")
    assert "<p>4 hypotheses tried: 3 validated, 0 invalidated, 1 inconclusive, 0 open.</p>" in html
    assert "<p>Validated but with a q-value above 0.05 (may be false discoveries): marginal.</p>" in html
    as_json = json.loads(render(report, "json"))
    assert as_json["track_record"]["validated_above_alpha"] == ["marginal"]
    assert {h["id"]: h["q_value"] for h in as_json["ledger"]} == expected
    assert [h["id"] for h in as_json["ledger"] if h["doubtful"]] == ["marginal"]
    # The board lists the same q-values.
    board = board_hypotheses(None, report.status, None)
    assert {h["id"]: h["q_value"] for h in board} == expected


def test_a_new_run_never_changes_a_resolved_verdict(cycle_of_hypotheses, client, runner) -> None:
    before = {h.id: (h.status, h.evaluation, h.q_value) for h in cycle_of_hypotheses.values()}
    experiment = client.create_experiment("late")
    late = make_run(client, experiment, {"ctr": 0.01}, tags={vocabulary.TAG_HYPOTHESIS: "marginal"})
    refused = invoke(runner, "ledger", "link", "marginal", late, "--arm", "control")
    assert (
        refused.exit_code == 2 and "is already resolved (validated); its evidence is closed" in refused.output
    )
    evaluation = evaluate_hypothesis("marginal")
    assert evaluation.model_dump(mode="json") == before["marginal"][1]
    assert late not in {item.run_id for item in get_hypothesis("marginal").evidence}
    assert {h.id: (h.status, h.evaluation, h.q_value) for h in list_hypotheses()} == before
    # Evidence for an open hypothesis still lands.
    link_runs_ok = invoke(runner, "ledger", "add", "Open one", "--id", "open-one", "--metric", "ctr")
    assert link_runs_ok.exit_code == 0
    link_runs("open-one", [late])
    assert get_hypothesis("open-one").status == "testing"
