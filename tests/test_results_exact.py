"""Machine output is exact: JSON and CSV carry the engine's floats to the last bit; tables round."""

from __future__ import annotations

import csv
import io
import json

import pytest

import mlflow_okr
from mlflow_okr.engine import RunRule, Tally, infer_direction, score_metric_kr, weighted_mean
from mlflow_okr.spec import resolve_target
from tests.conftest import IN_CYCLE_MS, NOW, invoke, make_run

AS_OF = ("--as-of", "2026-11-15")

# (kr id, metric, baseline, target as written in okrs.yaml, the one run's value)
CASES = [
    ("tiny", "error_rate", 1e-6, 1e-7, 3e-7),
    ("huge", "tokens", 1e299, 3e300, 1e300),
    ("long-fraction", "training_accuracy_score", 0.9, "+5%", 0.9333333333333333),
    ("autolog-accuracy", "val_accuracy", 0.5, 1.0, 0.9733333333333334),
    ("almost", "recall", 0.0, 1.0, 0.99996),
]
OBJECTIVES = {"small": ["tiny", "huge"], "fractions": ["long-fraction", "autolog-accuracy", "almost"]}


def _spec_text() -> str:
    lines = ["version: 1", "cycle: 2026-Q4", "objectives:"]
    cases = {case[0]: case for case in CASES}
    for objective, kr_ids in OBJECTIVES.items():
        lines += [f"  - id: {objective}", f"    title: {objective}", "    category: product"]
        lines.append("    key_results:")
        for kr_id in kr_ids:
            _, metric, baseline, target, _ = cases[kr_id]
            target_text = f'"{target}"' if isinstance(target, str) else repr(target)
            lines += [
                f"      - id: {kr_id}",
                f"        metric: {metric}",
                '        experiments: ["exact"]',
                f"        baseline: {baseline!r}",
                f"        target: {target_text}",
                # weights that do not divide evenly, so the scores are long fractions too
                f"        weight: {len(kr_id)}",
            ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def published(client, runner, write_spec):
    """The cases' runs in one experiment, the spec applied and synced; returns run ids by KR."""
    experiment_id = client.create_experiment("exact")
    run_ids = {
        kr_id: make_run(client, experiment_id, {metric: value}, start_time=IN_CYCLE_MS + index)
        for index, (kr_id, metric, _, _, value) in enumerate(CASES)
    }
    spec_path = write_spec(_spec_text())
    result = invoke(runner, "apply", str(spec_path))
    assert result.exit_code == 0, result.output
    result = invoke(runner, "sync", *AS_OF)
    assert result.exit_code == 0, result.output
    return run_ids


def engine_expectations(run_ids: dict[str, str]) -> dict:
    """What the engine says, computed here from the same inputs: per KR, per objective, cycle."""
    spec = mlflow_okr.parse_spec(_spec_text(), "okrs.yaml")
    elapsed, over = spec.cycle.elapsed(NOW), spec.cycle.is_over(NOW)
    krs = {}
    for index, (kr_id, metric, baseline, target_text, value) in enumerate(CASES):
        target = resolve_target(target_text, baseline)
        tally = Tally(RunRule(metric=metric), direction=infer_direction(baseline, target, None))
        tally.add(run_ids[kr_id], value, IN_CYCLE_MS + index)
        krs[kr_id] = score_metric_kr(tally, baseline, target, elapsed, over)
    objectives = {
        objective: weighted_mean((krs[kr_id].progress, float(len(kr_id))) for kr_id in kr_ids)
        for objective, kr_ids in OBJECTIVES.items()
    }
    score = weighted_mean((value, 1.0) for value in objectives.values())
    return {"elapsed": elapsed, "krs": krs, "objectives": objectives, "score": score}


def assert_exact(payload: dict, expected: dict) -> None:
    assert payload["cycle"]["elapsed"] == expected["elapsed"] == 45 / 92
    assert payload["score"] == expected["score"]
    assert {o["id"]: o["score"] for o in payload["objectives"]} == expected["objectives"]
    krs = {kr["id"]: kr for o in payload["objectives"] for kr in o["key_results"]}
    for kr_id, scored in expected["krs"].items():
        kr = krs[kr_id]
        got = (kr["baseline"], kr["target"], kr["current"], kr["progress"], kr["status"], kr["best_run_id"])
        want = (scored.baseline, scored.target, scored.current, scored.progress, scored.status,
                scored.best_run_id)
        assert got == want, kr_id


def test_the_cases_are_the_ones_rounding_broke(published):
    expected = engine_expectations(published)["krs"]
    assert expected["tiny"].current == 3e-7 and round(3e-7, 6) == 0.0
    assert expected["huge"].current == 1e300
    assert expected["autolog-accuracy"].current == 0.9733333333333334
    assert expected["long-fraction"].target == 0.9 * 1.05 != round(0.9 * 1.05, 6)
    almost = expected["almost"]
    assert almost.progress == 0.99996 and round(almost.progress, 4) == 1.0
    assert almost.status == "on-track"
    assert round(expected["tiny"].progress, 4) != expected["tiny"].progress


def test_status_json_equals_the_engine(published, runner):
    result = invoke(runner, "status", "--format", "json", *AS_OF)
    assert result.exit_code == 0, result.output
    assert_exact(json.loads(result.output), engine_expectations(published))


def test_report_json_equals_the_engine(published, runner):
    result = invoke(runner, "report", "--format", "json", *AS_OF)
    assert result.exit_code == 0, result.output
    assert_exact(json.loads(result.output), engine_expectations(published))


def test_python_api_objects_are_exact(published, tracking_uri):
    status = mlflow_okr.status(tracking_uri=tracking_uri, now=NOW)
    assert_exact(status.model_dump(mode="json"), engine_expectations(published))


@pytest.mark.parametrize("command", [("status", "--format", "csv"), ("report", "--format", "csv")])
def test_csv_equals_the_engine(published, runner, command):
    result = invoke(runner, *command, *AS_OF)
    assert result.exit_code == 0, result.output
    rows = {row["kr"]: row for row in csv.DictReader(io.StringIO(result.output))}
    expected = engine_expectations(published)
    for kr_id, scored in expected["krs"].items():
        row = rows[kr_id]
        got = tuple(float(row[name]) for name in ("baseline", "target", "current", "progress"))
        assert got == (scored.baseline, scored.target, scored.current, scored.progress), kr_id
        assert float(row["objective_score"]) == expected["objectives"][row["objective"]]
        if "grade" in row:
            assert float(row["grade"]) == scored.progress


def test_tables_round_for_people(published, runner):
    result = invoke(runner, "status", *AS_OF)
    assert result.exit_code == 0, result.output
    almost = next(line for line in result.output.splitlines() if line.strip().startswith("almost"))
    assert almost.split()[1:5] == ["●", "on-track", "0", "1"]
    tiny = next(line for line in result.output.splitlines() if line.strip().startswith("tiny"))
    assert tiny.split()[3:6] == ["1e-06", "3e-07", "1e-07"]
    assert "0.9733333333333334" not in result.output and "0.9733" in result.output
