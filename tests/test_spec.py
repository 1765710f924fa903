"""okrs.yaml: valid specs of every kind, and every bad input rejected with file:line, key and a hint."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mlflow_okr.spec import BaselineRef, load_spec, parse_cycle, parse_spec
from tests.conftest import invoke

HEADER = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Improve recommendation relevance
    category: product
    key_results:
"""
CTR = """\
      - id: ctr
        metric: online_ctr
        baseline: 0.05
        target: 0.08
"""

FULL_SPEC = """\
version: 1
cycle: 2026-Q4
status_thresholds: {on_track: 0.8, at_risk: 0.5}
objectives:
  - id: reco-relevance
    title: Improve recommendation relevance to drive user engagement
    category: product
    owner: reco-team
    key_results:
      - id: ctr
        title: Increase CTR on "Recommended for You" from 5% to 8%
        metric: online_ctr
        experiments: ["reco-*", "42"]
        filter: "tags.stage = 'ab-test'"
        baseline: 0.05
        target: 0.08
        aggregate: latest
        weight: 2
        guardrails:
          - {metric: p99_latency_ms, max: 50}
          - {metric: precision, min: 0.9}
      - id: f1-vs-legacy
        metric: f1
        baseline: {run_id: 5f2c0a}
        target: "+5%"
      - id: recall-vs-legacy
        metric: recall
        baseline: {filter: "tags.role = 'legacy'", experiments: ["legacy"]}
        target: 0.9
        direction: maximize
  - id: serving
    title: Keep serving fast
    category: operational
    key_results:
      - id: mape
        metric: mape
        baseline: 12.0
        target: "-10%"
        aggregate: mean
      - id: latency
        metric: p99_latency_ms
        baseline: 200
        target: 50
        direction: minimize
        aggregate: min
      - id: csat
        metric: csat
        maintain: {min: 4.5}
  - id: research
    title: Learn what moves relevance
    category: research
    key_results:
      - id: validated-hypotheses
        source: ledger
        target: 3
        linked_to: reco-relevance
      - id: alerting-live
        source: manual
        target: 1
"""
KR = "objectives[0].key_results[0]"  # where the one KR of spec_with_kr() sits


def spec_with_kr(kr: str) -> str:
    return HEADER + kr


def validate_fails(runner, write_spec, text: str):
    """Validate `text` through the CLI; it must fail with exit 2 and no traceback."""
    path = write_spec(text)
    result = invoke(runner, "validate", str(path))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return path, result.output


# ---------------------------------------------------------------------------------------------
# Valid specs


def test_full_spec_has_every_kind(write_spec):
    spec = load_spec(write_spec(FULL_SPEC))
    kinds = {kr.id: kr.kind for _, kr in spec.key_results()}
    assert kinds == {
        "ctr": "metric",
        "f1-vs-legacy": "metric",
        "recall-vs-legacy": "metric",
        "mape": "metric",
        "latency": "metric",
        "csat": "maintain",
        "validated-hypotheses": "ledger",
        "alerting-live": "manual",
    }
    assert spec.status_thresholds.on_track == 0.8 and spec.status_thresholds.at_risk == 0.5
    ctr = spec.find_key_result("ctr")
    assert ctr.weight == 2 and ctr.aggregate == "latest"
    assert ctr.experiments == ["reco-*", "42"]
    assert [(g.metric, g.min, g.max) for g in ctr.guardrails] == [
        ("p99_latency_ms", None, 50),
        ("precision", 0.9, None),
    ]
    assert ctr.resolve(0.05) == (0.08, "maximize")
    assert spec.find_key_result("mape").resolve(12.0) == (pytest.approx(10.8), "minimize")
    assert spec.find_key_result("latency").resolve(200) == (50.0, "minimize")


def test_relative_targets_resolve_against_the_baseline(write_spec):
    spec = load_spec(write_spec(FULL_SPEC))
    f1 = spec.find_key_result("f1-vs-legacy")
    assert isinstance(f1.baseline, BaselineRef) and f1.baseline.run_id == "5f2c0a"
    target, direction = f1.resolve(0.8)
    assert target == pytest.approx(0.84) and direction == "maximize"
    # Before the run baseline resolves, the direction still follows the sign of the change.
    assert f1.resolve(None) == (None, "maximize")


def test_filter_baseline_keeps_its_experiments(write_spec):
    spec = load_spec(write_spec(FULL_SPEC))
    recall = spec.find_key_result("recall-vs-legacy")
    assert recall.baseline == BaselineRef(filter="tags.role = 'legacy'", experiments=["legacy"])
    assert recall.direction == "maximize"


def test_maintain_rule_and_counter_krs(write_spec):
    spec = load_spec(write_spec(FULL_SPEC))
    rule = spec.find_key_result("csat").rule()
    assert rule.maintain is not None and rule.maintain.min == 4.5 and rule.maintain.max is None
    assert spec.find_key_result("validated-hypotheses").linked_to == "reco-relevance"
    assert spec.find_key_result("alerting-live").target == 1


def test_default_thresholds_and_aggregate(write_spec):
    spec = load_spec(write_spec(spec_with_kr(CTR)))
    assert (spec.status_thresholds.on_track, spec.status_thresholds.at_risk) == (0.7, 0.4)
    kr = spec.find_key_result("ctr")
    assert kr.aggregate == "best" and kr.weight == 1.0 and kr.experiments == []


@pytest.mark.parametrize(
    "name, start, end",
    [
        ("2026-Q4", dt.date(2026, 10, 1), dt.date(2026, 12, 31)),
        ("2026-Q1", dt.date(2026, 1, 1), dt.date(2026, 3, 31)),
        ("2028-Q1", dt.date(2028, 1, 1), dt.date(2028, 3, 31)),
        ("2026-H2", dt.date(2026, 7, 1), dt.date(2026, 12, 31)),
        ("2026-H1", dt.date(2026, 1, 1), dt.date(2026, 6, 30)),
        ("Q4-2026", dt.date(2026, 10, 1), dt.date(2026, 12, 31)),
        ("2026", dt.date(2026, 1, 1), dt.date(2026, 12, 31)),
    ],
)
def test_cycle_names(write_spec, name, start, end):
    spec = load_spec(write_spec(spec_with_kr(CTR).replace("cycle: 2026-Q4", f"cycle: {name}")))
    assert (spec.cycle.name, spec.cycle.start, spec.cycle.end) == (name, start, end)


def test_explicit_cycle(write_spec):
    text = spec_with_kr(CTR).replace(
        "cycle: 2026-Q4", "cycle: {name: H2-2026, start: 2026-07-01, end: 2026-12-31}"
    )
    cycle = load_spec(write_spec(text)).cycle
    assert (cycle.name, cycle.start, cycle.end) == ("H2-2026", dt.date(2026, 7, 1), dt.date(2026, 12, 31))


def test_cycle_window_is_inclusive_utc():
    cycle = parse_cycle("2026-Q4")
    first = int(dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    last = int(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000) - 1
    assert cycle.contains(first) and cycle.contains(last)
    assert not cycle.contains(first - 1) and not cycle.contains(last + 1)
    assert not cycle.contains(None)
    assert cycle.elapsed(dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)) == 0.0
    assert cycle.elapsed(dt.datetime(2027, 2, 1, tzinfo=dt.timezone.utc)) == 1.0
    assert cycle.elapsed(dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)) == pytest.approx(45 / 92)
    assert not cycle.is_over(dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.timezone.utc))
    assert cycle.is_over(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc))


def test_validate_cli_reports_a_summary(runner, write_spec):
    path = write_spec(FULL_SPEC)
    result = invoke(runner, "validate", str(path))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert "Cycle 2026-Q4 (2026-10-01 .. 2026-12-31), 3 objectives, 8 key results." in result.output


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, file:line, key, and what to do


def test_yaml_syntax_error(runner, write_spec):
    path, output = validate_fails(
        runner, write_spec, "version: 1\ncycle: [2026\nobjectives: x\n"
    )
    assert f"{path}:3: YAML syntax error" in output


def test_yaml_bad_indentation(runner, write_spec):
    path, output = validate_fails(runner, write_spec, "version: 1\n  cycle: 2026-Q4\n")
    assert f"{path}:2: YAML syntax error: mapping values are not allowed here" in output


def test_unknown_key_suggests_the_closest(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR.replace("target:", "targt:")))
    assert f"{path}:11: {KR}.targt: unknown key 'targt'" in output
    assert "did you mean 'target'?" in output
    # The misspelt key already explains the missing one; one message, not two.
    assert "missing required key" not in output


def test_unknown_top_level_key(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR).replace("cycle:", "cycel:"))
    assert f"{path}:2: cycel: unknown key 'cycel'; did you mean 'cycle'?" in output
    assert "allowed: version, team, cycle, status_thresholds, objectives" in output


def test_unknown_guardrail_key(runner, write_spec):
    text = spec_with_kr(CTR + "        guardrails:\n          - {metric: latency, mx: 5}\n")
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:13: {KR}.guardrails[0].mx: unknown key 'mx'" in output
    assert "did you mean 'max'?" in output


def test_duplicate_objective_id(runner, write_spec):
    text = spec_with_kr(CTR) + (
        "  - id: reco\n    title: Again\n    category: research\n"
        "    key_results:\n      - {id: notes, source: manual, target: 1}\n"
    )
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:12: objectives[1].id: duplicate objective id 'reco'" in output


def test_duplicate_kr_id_across_objectives(runner, write_spec):
    text = spec_with_kr(CTR) + (
        "  - id: other\n    title: Other\n    category: research\n"
        "    key_results:\n      - {id: ctr, source: manual, target: 1}\n"
    )
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:16: objectives[1].key_results[0].id: duplicate key result id 'ctr'" in output
    assert "unique across the file" in output


@pytest.mark.parametrize(
    "replace, line, location, bad",
    [
        (("id: reco", "id: Reco_1"), 4, "objectives[0].id", "'Reco_1'"),
        (("id: ctr", "id: CTR!"), 8, "objectives[0].key_results[0].id", "'CTR!'"),
        (("id: ctr", "id: -ctr"), 8, "objectives[0].key_results[0].id", "'-ctr'"),
    ],
)
def test_bad_slug(runner, write_spec, replace, line, location, bad):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR).replace(*replace))
    assert f"{path}:{line}: {location}: {bad} is not a valid id" in output
    assert "use lowercase letters, digits and '-'" in output


@pytest.mark.parametrize("cycle", ["2026-Q5", "banana", "2026-H3", "Q0-2026"])
def test_unknown_cycle(runner, write_spec, cycle):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR).replace("2026-Q4", cycle))
    assert f"{path}:2: cycle: unknown cycle '{cycle}'" in output


def test_unknown_cycle_lists_the_forms(runner, write_spec):
    _, output = validate_fails(runner, write_spec, spec_with_kr(CTR).replace("2026-Q4", "autumn"))
    assert "use YYYY-Qn (2026-Q4), YYYY-Hn (2026-H2), YYYY, or a mapping {name, start, end}" in output


def test_cycle_end_before_start(runner, write_spec):
    text = spec_with_kr(CTR).replace(
        "cycle: 2026-Q4", "cycle: {name: backwards, start: 2026-12-31, end: 2026-10-01}"
    )
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:2: cycle.end: cycle ends (2026-10-01) before it starts (2026-12-31)" in output


def test_target_equal_to_baseline(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR.replace("0.08", "0.05")))
    assert f"{path}:11: {KR}.target: target equals baseline (0.05)" in output
    assert "a KR must move its metric" in output


def test_relative_target_on_zero_baseline(runner, write_spec):
    kr = CTR.replace("baseline: 0.05", "baseline: 0").replace("target: 0.08", 'target: "+5%"')
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr))
    assert f"{path}:11: {KR}.target: relative target '+5%' needs a non-zero baseline" in output
    assert "give an absolute target" in output


def test_malformed_relative_target(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR.replace("0.08", "'5%'")))
    assert f"{path}:11: {KR}.target: target '5%' is neither a number" in output
    assert '"+5%"' in output


def test_direction_contradicts_baseline_and_target(runner, write_spec):
    kr = CTR + "        direction: minimize\n"
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr))
    assert (
        f"{path}:12: {KR}.direction: direction minimize contradicts "
        "baseline 0.05 -> target 0.08, which means maximize"
    ) in output


def test_direction_contradicts_relative_target(runner, write_spec):
    kr = CTR.replace("baseline: 0.05", "baseline: {run_id: abc}").replace("0.08", "'+5%'")
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr + "        direction: minimize\n"))
    assert f"{path}:12: {KR}.direction: direction minimize contradicts target '+5%'" in output


def test_guardrail_without_bounds(runner, write_spec):
    text = spec_with_kr(CTR + "        guardrails:\n          - {metric: p99_latency_ms}\n")
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:13: {KR}.guardrails[0]: give min, max or both" in output


def test_guardrail_min_above_max(runner, write_spec):
    text = spec_with_kr(CTR + "        guardrails:\n          - {metric: latency, min: 5, max: 1}\n")
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:13: {KR}.guardrails[0].min: min (5.0) is greater than max (1.0)" in output


@pytest.mark.parametrize(
    "filter_string, problem",
    [
        ("foo bar baz", "Invalid clause(s) in filter string"),
        ("tags.stage == 'ab'", "Invalid comparator '=='"),
        ("metrics.acc > 'high'", "Expected numeric value type for metric"),
        ("attributes.colour = 'red'", "Invalid attribute key 'colour'"),
    ],
)
def test_filter_that_does_not_parse(runner, write_spec, filter_string, problem):
    kr = CTR + f'        filter: "{filter_string}"\n'
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr))
    assert f"{path}:12: {KR}.filter: not a valid MLflow search filter:" in output
    assert problem in output


def test_baseline_filter_that_does_not_parse(runner, write_spec):
    kr = CTR.replace("baseline: 0.05", 'baseline: {filter: "tags.role ~ legacy"}') + (
        "        direction: maximize\n"
    )
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr))
    assert f"{path}:10: {KR}.baseline.filter: not a valid MLflow search filter" in output
    # The union's "should be a number" for the other member would only hide the real problem.
    assert "valid number" not in output


def test_baseline_reference_needs_one_source(runner, write_spec):
    kr = CTR.replace("baseline: 0.05", "baseline: {run_id: abc, filter: \"tags.a = 'b'\"}")
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr))
    assert f"{path}:10: {KR}.baseline: a baseline reference needs exactly one" in output


def test_baseline_of_the_wrong_type(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR.replace("0.05", "high")))
    assert f"{path}:10: {KR}.baseline: expected a number or a mapping, got 'high'" in output


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(runner, write_spec, text):
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}: the file is empty; start from `mlflow-okr init`" in output


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just words\n", "str"), ("42\n", "int")])
def test_file_that_is_not_a_mapping(runner, write_spec, text, kind):
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:1: expected a mapping with version, cycle and objectives, got {kind}" in output


def test_duplicate_yaml_key(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR + "        target: 0.09\n"))
    assert f"{path}:12: {KR}.target: duplicate key 'target'" in output


def test_missing_file(runner, tmp_path):
    path = tmp_path / "nowhere.yaml"
    result = invoke(runner, "validate", str(path))
    assert result.exit_code == 2
    assert f"{path}: no such file" in result.output
    assert "Traceback" not in result.output


def test_missing_required_key(runner, write_spec):
    text = spec_with_kr(CTR).replace("    category: product\n", "")
    path, output = validate_fails(runner, write_spec, text)
    assert f"{path}:4: objectives[0].category: missing required key 'category'" in output


def test_a_kr_that_is_not_a_mapping(runner, write_spec):
    path, output = validate_fails(runner, write_spec, spec_with_kr("      - ctr\n"))
    assert f"{path}:8: {KR}: expected a mapping with keys such as id" in output


@pytest.mark.parametrize(
    "kr, line, message",
    [
        (CTR + "        aggregate: median\n", 12, "'median' is not allowed"),
        (CTR + "        weight: 0\n", 12, "weight: Input should be greater than 0"),
        (CTR.replace("metric: online_ctr", "source: ledger"), 10, "a `source: ledger` KR takes no baseline"),
        ("      - id: csat\n        metric: csat\n        maintain: {min: 4}\n        target: 5\n", 11,
         "a maintain KR takes no target"),
        ("      - id: m\n        metric: m\n        baseline: 1\n", 8, "a metric KR needs `target`"),
        ("      - {id: live, source: manual, target: -1}\n", 8, "needs a positive numeric target"),
    ],
)
def test_other_kr_mistakes(runner, write_spec, kr, line, message):
    path, output = validate_fails(runner, write_spec, spec_with_kr(kr))
    assert f"{path}:{line}: " in output and message in output


def test_every_problem_is_reported_at_once(runner, write_spec):
    text = spec_with_kr(CTR + "        aggregate: median\n")
    text = text.replace("category: product", "category: fun")
    _, output = validate_fails(runner, write_spec, text)
    assert "objectives[0].category: 'fun' is not allowed" in output
    assert "objectives[0].key_results[0].aggregate: 'median' is not allowed" in output


def test_parse_spec_names_the_source():
    from mlflow_okr.errors import SpecError

    with pytest.raises(SpecError) as info:
        parse_spec("version: 1\n", "team/okrs.yaml")
    assert info.value.problems[0].startswith("team/okrs.yaml:")


# ---------------------------------------------------------------------------------------------
# schema and init


def test_schema_is_json_schema(runner):
    result = invoke(runner, "schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "cycle", "objectives", "status_thresholds"} <= set(schema["properties"])
    assert set(schema["required"]) == {"version", "cycle", "objectives"}
    assert schema["additionalProperties"] is False
    cycle_forms = schema["properties"]["cycle"]["anyOf"]
    assert {"type": "string", "description": "2026-Q4, 2026-H2, Q4-2026 or 2026"} in cycle_forms


def test_init_writes_a_valid_file_and_refuses_to_overwrite(runner, tmp_path: Path):
    path = tmp_path / "okrs.yaml"
    result = invoke(runner, "init", str(path), "--cycle", "2026-Q4")
    assert result.exit_code == 0, result.output
    spec = load_spec(path)
    assert spec.cycle.name == "2026-Q4"
    assert {kr.kind for _, kr in spec.key_results()} >= {"metric", "manual"}
    assert invoke(runner, "validate", str(path)).exit_code == 0

    path.write_text("# mine\n", encoding="utf-8")
    refused = invoke(runner, "init", str(path))
    assert refused.exit_code == 2
    assert "already exists; pass --force to overwrite it" in refused.output
    assert path.read_text(encoding="utf-8") == "# mine\n"

    forced = invoke(runner, "init", str(path), "--force", "--cycle", "2027-H1")
    assert forced.exit_code == 0
    assert load_spec(path).cycle.name == "2027-H1"


def test_init_with_a_bad_cycle_writes_nothing(runner, tmp_path: Path):
    path = tmp_path / "okrs.yaml"
    result = invoke(runner, "init", str(path), "--cycle", "someday")
    assert result.exit_code == 2
    assert "unknown cycle 'someday'" in result.output
    assert not path.exists()


def test_exponent_numbers_are_numbers(write_spec):
    kr = CTR.replace("baseline: 0.05", "baseline: 5e-2").replace("target: 0.08", "target: 8E-2")
    spec = load_spec(write_spec(spec_with_kr(kr)))
    assert spec.find_key_result("ctr").resolve(0.05) == (0.08, "maximize")


@pytest.mark.parametrize(
    "replace, line, message",
    [
        (("target: 0.08", "target: .nan"), 11, "target: Input should be a finite number"),
        (("baseline: 0.05", "baseline: .inf"), 10, "baseline: Input should be a finite number"),
        (("target: 0.08", "target: true"), 11, "target: expected a number or a string, got True"),
        (("baseline: 0.05", "baseline: yes"), 10, "baseline: expected a number or a mapping, got True"),
    ],
)
def test_numbers_must_be_finite_numbers(runner, write_spec, replace, line, message):
    path, output = validate_fails(runner, write_spec, spec_with_kr(CTR.replace(*replace)))
    assert f"{path}:{line}: {KR}.{message}" in output


def test_a_naive_moment_is_utc():
    cycle = parse_cycle("2026-Q4")
    naive = dt.datetime(2026, 12, 31, 23, 30)
    assert cycle.elapsed(naive) == cycle.elapsed(naive.replace(tzinfo=dt.timezone.utc))
    assert not cycle.is_over(naive)
    assert cycle.is_over(dt.datetime(2027, 1, 1, 0, 0, 1))


def test_relative_target_direction_follows_baseline_to_target(write_spec):
    kr = CTR.replace("baseline: 0.05", "baseline: -10").replace("target: 0.08", "target: '+5%'")
    spec = load_spec(write_spec(spec_with_kr(kr)))
    # 1.05 x -10 = -10.5, below the baseline: the KR minimizes, as validation inferred.
    assert spec.find_key_result("ctr").resolve(-10.0) == (-10.5, "minimize")
