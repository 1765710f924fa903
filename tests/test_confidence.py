"""Confidence: a KR with a known linear history gets the stated model's probability."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from mlflow_okr import practice, state, vocabulary
from mlflow_okr.api import apply_spec
from mlflow_okr.confidence import trend_confidence
from mlflow_okr.spec import parse_cycle, parse_spec
from tests.conftest import NOW, invoke
from tests.specs import ON_CALL, okrs_yaml, reco

Q4 = parse_cycle("2026-Q4")
DAY_MS = vocabulary.MS_PER_DAY
END_DAY = 92.0  # 2026-10-01 .. 2026-12-31
SPEC = okrs_yaml(reco(
    "{id: ctr, metric: online_ctr, measures: product, baseline: 0.05, target: 0.08}",
    "{id: latency, metric: p99, baseline: 100, target: 50}",
    ON_CALL,
))
# ctr: about 0.05 + 0.0004 x day, give or take 0.001; the fitted line, 0.0498 + 0.0004 x day,
# reaches 0.0866 by day 92.
CTR_POINTS = [(5.0, 0.0510), (15.0, 0.0570), (25.0, 0.0590), (35.0, 0.0650), (45.0, 0.0670)]


def hand_model(points, end_day, target, direction):
    """The model of docs/practices.md written out: OLS line, prediction standard error, Student's t."""
    n = len(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    s = math.sqrt(sum((y - a - b * x) ** 2 for x, y in points) / (n - 2))
    se = s * math.sqrt(1 + 1 / n + (end_day - mx) ** 2 / sxx)
    projected = a + b * end_day
    z = (projected - target) / se if direction == "maximize" else (target - projected) / se
    return stats.t.cdf(z, n - 2), projected, se, b


def test_a_linear_history_gives_the_stated_model() -> None:
    found = trend_confidence(CTR_POINTS, END_DAY, 0.08, "maximize")
    probability, projected, se, slope = hand_model(CTR_POINTS, END_DAY, 0.08, "maximize")
    assert found.points == 5
    assert found.slope_per_day == pytest.approx(0.0004, rel=1e-12)  # (0.067 - 0.051) / 40 days, fitted
    assert found.projected == pytest.approx(projected, rel=1e-12) == pytest.approx(0.0866, rel=1e-12)
    assert found.standard_error == pytest.approx(se, rel=1e-12)
    assert found.probability == pytest.approx(probability, rel=1e-12)
    assert 0.9 < found.probability < 1.0  # 0.0866 projected, 0.08 needed
    # A target beyond the projection: under even odds; a minimized KR mirrors it.
    assert trend_confidence(CTR_POINTS, END_DAY, 0.09, "maximize").probability == pytest.approx(
        hand_model(CTR_POINTS, END_DAY, 0.09, "maximize")[0], rel=1e-12
    )
    falling = [(day, 1 - value) for day, value in CTR_POINTS]
    assert trend_confidence(falling, END_DAY, 1 - 0.08, "minimize").probability == pytest.approx(
        found.probability, rel=1e-9
    )


def test_no_line_without_three_points_and_a_perfect_line_is_certain() -> None:
    assert trend_confidence(CTR_POINTS[:2], END_DAY, 0.08, "maximize") is None
    assert trend_confidence([(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)], END_DAY, 4.0, "maximize") is None
    exact = [(10.0, 5.0), (20.0, 10.0), (30.0, 15.0)]  # 0.5 a day, no residual: reaches 46 by day 92
    assert trend_confidence(exact, END_DAY, 40.0, "maximize").probability == 1.0
    assert trend_confidence(exact, END_DAY, 50.0, "maximize").probability == 0.0


@pytest.fixture
def history(client):
    apply_spec(parse_spec(SPEC), tracking_uri=client.tracking_uri)
    krs = state.load_published(client, "2026-Q4").kr_runs
    for day, value in CTR_POINTS:
        state.log_kr_state(client, krs["ctr"], {vocabulary.METRIC_VALUE: value}, {}, Q4,
                           timestamp_ms=Q4.start_ms + int(day * DAY_MS))
    # A point after the as-of moment is not history yet.
    state.log_kr_state(client, krs["ctr"], {vocabulary.METRIC_VALUE: 0.2}, {}, Q4,
                       timestamp_ms=Q4.start_ms + 60 * DAY_MS)
    return krs


def test_status_shows_confidence_in_json_and_table(client, history, runner) -> None:
    status = practice.annotated_status(tracking_uri=client.tracking_uri, now=NOW)
    expected = trend_confidence(CTR_POINTS, END_DAY, 0.08, "maximize")
    assert status.find("ctr").confidence == expected
    assert status.find("latency").confidence is None and status.find("on-call").confidence is None
    args = ["status", "--as-of", "2026-11-15", "--tracking-uri", client.tracking_uri]
    payload = json.loads(invoke(runner, *args, "--format", "json").output)
    krs = {kr["id"]: kr for kr in payload["objectives"][0]["key_results"]}
    assert krs["ctr"]["confidence"] == expected.model_dump()
    assert "confidence" not in krs["latency"]  # no history: no field
    table = invoke(runner, *args).output
    assert f"  ctr: {expected.probability:.0%} (projects 0.0866 ± " in table
    assert "  latency: — (fewer than 3 recorded values)" in table


def test_the_board_shows_the_same_confidence(client, history) -> None:
    from mlflow_okr.board.data import board_state

    board = board_state(client.tracking_uri, None, now=NOW)
    ctr = board["status"]["objectives"][0]["key_results"][0]
    assert ctr["id"] == "ctr"
    assert ctr["confidence"] == trend_confidence(CTR_POINTS, END_DAY, 0.08, "maximize").model_dump()
    page = (Path(__file__).resolve().parents[1] / "mlflow_okr" / "board" / "page.html").read_text()
    assert 'percent(kr.confidence.probability) + " to reach it"' in page
