"""OKR checks: every trap fires on a spec that has it, not on the demo's or the example spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_okr import demo, state, vocabulary
from mlflow_okr.api import apply_spec
from mlflow_okr.checks import check_spec
from mlflow_okr.errors import SpecError
from mlflow_okr.spec import parse_cycle, parse_spec
from tests.conftest import NOW, invoke
from tests.specs import objective, okrs_yaml, reco

EXAMPLE_SPEC = Path(__file__).resolve().parents[1] / "examples" / "okrs.yaml"
DAY_MS = vocabulary.MS_PER_DAY

TRAPS = okrs_yaml(
    objective("uptime", "{id: availability, metric: availability, maintain: {min: 0.999}}",
              title="Keep the service up", category="operational", owner="platform"),
    reco("{id: auc, metric: auc, baseline: 0.7, target: 0.8}"),
    objective("forecasting", "{id: mape, metric: mape, baseline: 12, target: 10}",
              title="Learn whether deep models forecast better", category="research", owner="research"),
    objective("everything", *(f"{{id: k{n}, metric: m{n}, baseline: 0, target: 1}}" for n in range(1, 7)),
              title="Do everything at once", category="operational"),
)


def lines(spec_text: str, client=None) -> list[str]:
    report = check_spec(parse_spec(spec_text), client, NOW)
    return [warning.line() for warning in report.warnings]


def test_every_spec_only_trap_fires_with_its_code_and_line() -> None:
    assert lines(TRAPS) == [
        "okrs.yaml:4: objectives[0].id: okr-bau: objective 'uptime' has only maintain KRs; track these as "
        "KPIs or add a KR that changes something",
        "okrs.yaml:10: objectives[1].id: okr-no-business-proxy: objective 'reco' is a product objective "
        "measured only by model metrics; add a KR with `measures: product` or `business` "
        "(or mark one that is)",
        "okrs.yaml:16: objectives[2].id: okr-research-without-learning: objective 'forecasting' is research "
        "with no learning KR; add a `source: ledger` KR counting validated hypotheses",
        "okrs.yaml:22: objectives[3].id: okr-too-many-krs: objective 'everything' has 6 KRs; keep at most 5 "
        "that people can follow",
        "okrs.yaml:22: objectives[3].id: okr-no-owner: objective 'everything' has no owner; name who answers "
        "for its KRs",
    ]


def test_no_warning_on_the_demo_and_example_specs() -> None:
    for text in (demo.demo_spec("2026-Q4"), EXAMPLE_SPEC.read_text(encoding="utf-8")):
        report = check_spec(parse_spec(text), None, NOW)
        assert (report.warnings, report.notes, report.track_record) == ([], [], False)


def test_a_business_measure_a_manual_kr_or_a_ledger_kr_clears_the_trap() -> None:
    fixed = (
        TRAPS.replace("{id: auc, metric: auc,", "{id: auc, metric: auc, measures: product,")
        .replace("{id: mape, metric: mape, baseline: 12, target: 10}",
                 "{id: mape, metric: mape, baseline: 12, target: 10}\n"
                 "      - {id: learned, source: ledger, target: 2}")
        .replace("      - {id: availability, metric: availability, maintain: {min: 0.999}}",
                 "      - {id: availability, metric: availability, maintain: {min: 0.999}}\n"
                 "      - {id: on-call, source: manual, target: 1}")
    )
    assert [line.split(": ")[2] for line in lines(fixed)] == ["okr-too-many-krs", "okr-no-owner"]


def test_allow_silences_a_code_on_its_objective_only() -> None:
    allowed = TRAPS.replace(
        "    title: Do everything at once\n", "    title: Do everything at once\n    allow: [okr-no-owner]\n"
    )
    assert [line.split(": ")[2] for line in lines(allowed)] == [
        "okr-bau", "okr-no-business-proxy", "okr-research-without-learning", "okr-too-many-krs",
    ]


def test_allow_is_per_objective_or_kr_never_global() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(TRAPS.replace("version: 1\n", "version: 1\nallow: [okr-bau]\n", 1))
    assert "okrs.yaml:2: allow: unknown key 'allow'" in str(raised.value)
    with pytest.raises(SpecError) as raised:
        parse_spec(TRAPS.replace("{id: auc, metric", "{id: auc, allow: [okr-bau], metric"))
    assert "okr-bau is about an objective; allow it on the objective, not on a KR" in str(raised.value)
    with pytest.raises(SpecError) as raised:
        parse_spec(TRAPS.replace("{id: auc, metric", "{id: auc, allow: [okr-nope], metric"))
    assert "'okr-nope' is not allowed" in str(raised.value)


# ---------------------------------------------------------------------------------------------
# okr-implausible-target: the track record of an earlier cycle

PAST = okrs_yaml(
    reco("{id: ctr-q3, metric: online_ctr, measures: product, baseline: 0.05, target: 0.08}"), cycle="2026-Q3"
)
NEXT = okrs_yaml(reco(
    "{id: ctr, metric: online_ctr, measures: product, baseline: 0.07, target: TARGET}",
    "{id: recall, metric: recall, measures: product, baseline: 0.5, target: 0.9}",
))


def publish_past_cycle(client) -> None:
    """2026-Q3: online_ctr went 0.05 -> 0.07 over the quarter: +0.02 in 92 days.

    suggest's draft for a 92-day quarter from there: 0.07 + 0.02 / 0.7 = 0.09857 (4 digits), a
    change of 0.02857; twice that is the most a target may ask.
    """
    apply_spec(parse_spec(PAST), tracking_uri=client.tracking_uri)
    q3 = parse_cycle("2026-Q3")
    published = state.load_published(client, "2026-Q3")
    for day, value in ((30, 0.06), (91, 0.07)):
        state.log_kr_state(client, published.kr_runs["ctr-q3"], {vocabulary.METRIC_VALUE: value}, {}, q3,
                           timestamp_ms=q3.start_ms + day * DAY_MS)


def test_a_target_beyond_twice_the_track_record_is_implausible(client) -> None:
    publish_past_cycle(client)
    report = check_spec(parse_spec(NEXT.replace("TARGET", "0.15")), client, NOW)
    assert [warning.line() for warning in report.warnings] == [
        "okrs.yaml:9: objectives[0].key_results[0].target: okr-implausible-target: KR 'ctr' asks online_ctr "
        "to move 0.08 (0.07 -> 0.15); 2026-Q3's pace on online_ctr makes about 0.02857 plausible this cycle, "
        "and this is more than 2x that"
    ]
    assert report.notes == [
        "okr-implausible-target: not checked for KR recall: no track record of the metric in earlier "
        "cycles or the ledger"
    ]
    # 0.07 + 2 x 0.02857 = 0.1271: a target just inside is a stretch, not a trap.
    assert check_spec(parse_spec(NEXT.replace("TARGET", "0.127")), client, NOW).warnings == []


def test_allow_on_the_kr_silences_the_target_check(client) -> None:
    publish_past_cycle(client)
    allowed = NEXT.replace("TARGET", "0.15").replace(
        "{id: ctr, metric", "{id: ctr, allow: [okr-implausible-target], metric"
    )
    assert check_spec(parse_spec(allowed), client, NOW).warnings == []


def test_validate_warns_and_strict_fails(runner, write_spec) -> None:
    path = write_spec(TRAPS)
    result = invoke(runner, "validate", str(path))
    assert result.exit_code == 0
    assert f"warning: {path}:4: objectives[0].id: okr-bau: objective 'uptime'" in result.output
    assert result.output.count("warning: ") == 5
    strict = invoke(runner, "validate", str(path), "--strict")
    assert strict.exit_code == 1
    assert "5 OKR check warning(s) with --strict:" in strict.output
    assert f"{path}:22: objectives[3].id: okr-no-owner:" in strict.output


def test_validate_without_a_tracking_uri_notes_the_skipped_target_check(
    runner, write_spec, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = invoke(runner, "validate", str(write_spec(demo.demo_spec("2026-Q4"))), "--strict")
    assert result.exit_code == 0
    assert "warning:" not in result.output
    assert ("note: okr-implausible-target: not checked; pass --tracking-uri or set MLFLOW_TRACKING_URI "
            "to check targets against the track record") in result.output


def test_apply_strict_publishes_nothing_when_a_check_fails(client, runner, write_spec) -> None:
    path = write_spec(TRAPS)
    result = invoke(runner, "apply", str(path), "--strict")
    assert result.exit_code == 1
    assert client.get_experiment_by_name("okr/2026-Q4") is None
    result = invoke(runner, "apply", str(path))
    assert result.exit_code == 0 and result.output.count("warning: ") == 5
    assert client.get_experiment_by_name("okr/2026-Q4") is not None
