"""The quarter-end report on a realistic store: numbers in every format match the engine."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shutil
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import api, state
from mlflow_okr.compute import compute_key_results, computed_statuses
from mlflow_okr.report import build_report, render
from mlflow_okr.results import cycle_status
from mlflow_okr.sync import sync
from tests.conftest import NOW, invoke, make_run

UI = "http://mlflow.example.test:5000"
DAY_MS = 86_400_000
NOV_1 = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Improve recommendation relevance
    category: product
    owner: reco-team
    key_results:
      - id: ctr
        title: Increase CTR on "Recommended for You" from 5% to 8%
        metric: online_ctr
        experiments: ["reco-*"]
        baseline: 0.05
        target: 0.08
        guardrails:
          - {metric: p99_latency_ms, max: 50}
      - id: csat
        title: Keep satisfaction at 4.5 or more
        metric: csat
        experiments: ["reco-*"]
        maintain: {min: 4.5}
  - id: forecast
    title: Forecasts the business can plan with
    category: operational
    owner: forecasting
    key_results:
      - id: mape
        metric: mape
        unit: "%"
        experiments: [forecast]
        baseline: 12.0
        target: "-10%"
      - id: alerting
        title: Drift alerting live
        source: manual
        target: 1
  - id: research
    title: "<script>alert(1)</script> & learn faster"
    category: research
    key_results:
      - id: validated
        title: Validate 3 hypotheses
        source: ledger
        target: 3
"""


def build_quarter_store(uri: str, workdir: Path) -> None:
    """A cycle half way through: runs counted, excluded by guardrails and failed; a ledger; a check-in."""
    from mlflow_okr import ledger

    client = MlflowClient(uri)
    spec_path = workdir / "okrs.yaml"
    spec_path.write_text(textwrap.dedent(SPEC).lstrip(), encoding="utf-8")
    api.apply_spec(spec_path, tracking_uri=uri, sync_after=False)
    reco = client.create_experiment("reco-ab")
    forecast = client.create_experiment("forecast")
    make_run(client, reco, {"online_ctr": 0.056, "p99_latency_ms": 40, "csat": 4.7}, name="two-tower-v1")
    make_run(client, forecast, {"mape": 11.7}, name="prophet")
    sync(client, now=NOW)  # the first recorded state: history point 1
    make_run(
        client,
        reco,
        {"online_ctr": 0.065, "p99_latency_ms": 45, "csat": 4.6},
        start_time=NOV_1 + DAY_MS,
        name="two-tower-v2 <b>bold</b>",
    )
    make_run(
        client,
        reco,
        {"online_ctr": 0.075, "p99_latency_ms": 60},
        start_time=NOV_1 + 2 * DAY_MS,
        name="two-tower-big",
    )  # better CTR, but breaks the latency guardrail
    make_run(
        client,
        reco,
        {"online_ctr": 0.060, "p99_latency_ms": 70},
        start_time=NOV_1 + 3 * DAY_MS,
        name="slow-and-worse",
    )  # breaks the guardrail without beating the current value
    make_run(
        client,
        reco,
        {"online_ctr": 0.090, "p99_latency_ms": 30},
        start_time=NOV_1 + 4 * DAY_MS,
        status="FAILED",
        name="crashed",
    )
    make_run(client, reco, {"online_ctr": 0.070}, start_time=NOV_1 + 5 * DAY_MS, name="no-latency")
    make_run(
        client,
        reco,
        {"online_ctr": 0.099, "p99_latency_ms": 10},
        start_time=NOV_1 - 60 * DAY_MS,
        name="last-quarter",
    )  # outside the cycle
    make_run(client, forecast, {"mape": 11.4}, start_time=NOV_1 + DAY_MS, name="lightgbm")
    sync(client, now=NOW)  # history point 2
    api.checkin("alerting", 1.0, note="paging live", tracking_uri=uri)
    ledger.add_hypothesis(
        "Two towers beat matrix factorisation",
        hypothesis_id="two-tower",
        kr="ctr",
        tracking_uri=uri,
        when=dt.datetime(2026, 10, 5, tzinfo=dt.timezone.utc),
    )
    ab_tests = client.create_experiment("ab-tests")
    control = [make_run(client, ab_tests, {"online_ctr": v}) for v in (0.050, 0.052, 0.051)]
    treatment = [make_run(client, ab_tests, {"online_ctr": v}) for v in (0.060, 0.062, 0.061)]
    ledger.link_runs("two-tower", control, arm="control", tracking_uri=uri)
    ledger.link_runs("two-tower", treatment, arm="treatment", tracking_uri=uri)
    ledger.evaluate_hypothesis("two-tower", tracking_uri=uri)
    ledger.resolve_hypothesis(
        "two-tower",
        "validated",
        "Item embeddings generalise | use them everywhere",
        tracking_uri=uri,
        when=dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc),
    )
    ledger.add_hypothesis(
        "Bigger batches help CTR",
        hypothesis_id="big-batch",
        kr="ctr",
        tracking_uri=uri,
        when=dt.datetime(2026, 10, 6, tzinfo=dt.timezone.utc),
    )
    ledger.resolve_hypothesis(
        "big-batch",
        "invalidated",
        "No effect beyond noise",
        tracking_uri=uri,
        when=dt.datetime(2026, 11, 10, tzinfo=dt.timezone.utc),
    )
    ledger.add_hypothesis(
        "Cold-start users like popular items", hypothesis_id="cold-start", objective="reco", tracking_uri=uri
    )
    ledger.resolve_hypothesis(
        "cold-start",
        "inconclusive",
        "Too few cold-start sessions to tell",
        tracking_uri=uri,
        when=dt.datetime(2026, 11, 12, tzinfo=dt.timezone.utc),
    )
    ledger.add_hypothesis(
        "Old idea from last quarter",
        hypothesis_id="old",
        tracking_uri=uri,
        when=dt.datetime(2026, 8, 1, tzinfo=dt.timezone.utc),
    )
    ledger.resolve_hypothesis(
        "old",
        "validated",
        "Before this cycle",
        tracking_uri=uri,
        when=dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc),
    )
    sync(client, now=NOW)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path):
    """The realistic store, built once for the module; yields (tracking uri, client)."""
    workdir = tmp_path_factory.mktemp("report-store")
    shutil.copyfile(sqlite_template, workdir / "mlflow.db")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    build_quarter_store(uri, workdir)
    yield uri, MlflowClient(uri)
    mlflow.set_tracking_uri(None)
    monkeypatch.undo()


@pytest.fixture(scope="module")
def engine_status(store):
    """The cycle recomputed from the source runs by the engine, independently of the stored state."""
    uri, client = store
    published = state.load_published(client, "2026-Q4")
    computations, _ = compute_key_results(client, published.spec)
    return cycle_status(published.spec, computed_statuses(client, published, computations, NOW), NOW)


@pytest.fixture(scope="module")
def report(store):
    return build_report(store[1], cycle="2026-Q4", now=NOW, ui_url=UI)


@pytest.fixture(scope="module")
def rendered(report):
    return {name: render(report, name) for name in ("md", "html", "json", "csv")}


def test_the_store_scores_as_computed_by_hand(engine_status):
    kr = {k.id: k for k in engine_status.key_results()}
    assert kr["ctr"].current == pytest.approx(0.065) and kr["ctr"].progress == pytest.approx(0.5)
    assert kr["csat"].current == pytest.approx(4.6) and kr["csat"].progress == 1.0
    assert kr["mape"].target == pytest.approx(10.8) and kr["mape"].progress == pytest.approx(0.5)
    assert kr["alerting"].progress == 1.0
    assert kr["validated"].current == 1.0 and kr["validated"].progress == 1 / 3
    assert [o.score for o in engine_status.objectives] == [0.75, 0.75, 1 / 3]
    assert engine_status.score == (0.75 + 0.75 + 1 / 3) / 3
    assert {k.id: k.status for k in engine_status.key_results()} == {
        "ctr": "on-track",
        "csat": "achieved",
        "mape": "on-track",
        "alerting": "achieved",
        "validated": "at-risk",
    }


def test_report_status_is_the_engine_status(report, engine_status):
    assert report.status.score == engine_status.score
    for mine, engine in zip(report.status.key_results(), engine_status.key_results(), strict=True):
        assert (mine.id, mine.status, mine.counted_runs, mine.best_run_id) == (
            engine.id,
            engine.status,
            engine.counted_runs,
            engine.best_run_id,
        )
        assert mine.progress == pytest.approx(engine.progress)
        assert mine.current == pytest.approx(engine.current)
    assert report.status_counts() == {"achieved": 2, "on-track": 2, "at-risk": 1, "off-track": 0}


def test_report_evidence(report, store):
    ctr = report.details["ctr"]
    assert ctr.best_run.name == "two-tower-v2 <b>bold</b>" and ctr.best_run.value == pytest.approx(0.065)
    assert ctr.best_run.url == (
        f"{UI}/#/experiments/{ctr.best_run.experiment_id}/runs/{ctr.best_run.run_id}"
        "?workflowType=machine_learning"
    )
    # Only the guardrail breach that beats 0.065 is one; the failed run and the run missing a
    # guardrail metric are excluded for other reasons.
    assert ctr.guardrail_breach_count == 1
    assert ctr.guardrail_breaches[0].name == "two-tower-big"
    assert ctr.guardrail_breaches[0].reason == "guardrail p99_latency_ms = 60 breaks <= 50"
    assert [p.value for p in ctr.history] == pytest.approx([0.056, 0.065])
    assert [p.progress for p in ctr.history] == pytest.approx([0.2, 0.5])
    assert report.details["csat"].maintain_min == 4.5 and report.details["csat"].guardrail_breach_count == 0


def test_report_ledger_holds_this_cycle_only(report):
    assert [(h.id, h.status) for h in report.ledger] == [
        ("two-tower", "validated"),
        ("big-batch", "invalidated"),
        ("cold-start", "inconclusive"),
    ]
    assert report.ledger[0].learnings == "Item embeddings generalise | use them everywhere"
    assert report.ledger[0].statement == "Two towers beat matrix factorisation"
    assert report.ledger[0].effect_size == pytest.approx(0.01)
    assert report.ledger[0].p_value < 0.01
    assert report.ledger[1].effect_size is None
    assert (report.ledger[0].control_runs, report.ledger[0].treatment_runs) == (3, 3)
    assert "| 3 control / 3 treatment | +0.01 (+19.6%) | < 0.001 | 2026-11-03 |" in render(report, "md")


def test_json_is_the_status_object_plus_history_and_ledger(rendered, engine_status, report):
    payload = json.loads(rendered["json"])
    assert {"cycle", "score", "objectives", "history", "ledger"} <= set(payload)
    assert payload["cycle"] == {
        "name": "2026-Q4",
        "start": "2026-10-01",
        "end": "2026-12-31",
        "elapsed": engine_status.cycle.elapsed,
    }
    assert payload["score"] == engine_status.score
    engine_krs = {k.id: k for k in engine_status.key_results()}
    for objective in payload["objectives"]:
        for kr in objective["key_results"]:
            engine = engine_krs[kr["id"]]
            assert kr["progress"] == pytest.approx(engine.progress)
            assert kr["status"] == engine.status and kr["counted_runs"] == engine.counted_runs
            assert kr["best_run_id"] == engine.best_run_id
    assert [point["value"] for point in payload["history"]["ctr"]] == pytest.approx([0.056, 0.065])
    assert [h["id"] for h in payload["ledger"]] == ["two-tower", "big-batch", "cold-start"]
    assert payload["evidence"]["ctr"]["guardrail_breach_count"] == 1
    assert payload["status_counts"]["at-risk"] == 1


def test_csv_has_one_row_per_kr_with_engine_numbers(rendered, engine_status):
    rows = list(csv.DictReader(io.StringIO(rendered["csv"])))
    assert [row["kr"] for row in rows] == ["ctr", "csat", "mape", "alerting", "validated"]
    engine_krs = {k.id: k for k in engine_status.key_results()}
    for row in rows:
        engine = engine_krs[row["kr"]]
        assert float(row["progress"]) == pytest.approx(engine.progress)
        assert float(row["grade"]) == engine.progress
        assert row["status"] == engine.status
        assert int(row["counted_runs"]) == engine.counted_runs
    ctr = rows[0]
    assert float(ctr["current"]) == pytest.approx(0.065) and float(ctr["target"]) == pytest.approx(0.08)
    assert ctr["guardrail_breaches"] == "1" and ctr["best_run_name"] == "two-tower-v2 <b>bold</b>"
    assert float(rows[2]["objective_score"]) == pytest.approx(0.75)


def test_markdown_renders_the_numbers(rendered):
    text = rendered["md"]
    assert text.startswith("# OKR report 2026-Q4\n")
    assert "## Grade 0.61 / 1.0 — Below the 0.7 success grade." in text
    assert "0.7 is the conventional success" in text
    assert "| 2 | 2 | 1 | 0 |" in text  # achieved, on-track, at-risk, off-track
    assert re.search(
        r"\| \*\*ctr\*\*<br>.* \| ● on-track \| 0\.05 \| 0\.08 \| 0\.065 \| "
        r"`█████░░░░░` 50% \| 0\.50 \| 2 \|",
        text,
    )
    assert re.search(r"\| \*\*mape\*\* \| ● on-track \| 12 % \| 10\.8 % \| 11\.4 % \|", text)
    assert "| **csat**<br>Keep satisfaction at 4.5 or more | ✔ achieved | — | stay ≥ 4.5 | 4.6 |" in text
    assert "guardrail breaches: 1 run(s)" in text and "two-tower-big" in text
    assert f"[two-tower-v2 &lt;b&gt;bold&lt;/b&gt;]({UI}/#/experiments/" in text
    assert "### Validated (1)" in text and "### Invalidated (1)" in text and "### Inconclusive (1)" in text
    assert text.index("### Invalidated") < text.index("### Inconclusive") < text.index("## Next cycle")
    assert "Item embeddings generalise \\| use them everywhere" in text  # a pipe cannot break the table
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; learn faster" in text
    outside_code = re.sub(r"```yaml.*?```", "", text, flags=re.S)
    assert "<script>" not in outside_code and "<b>" not in outside_code


def test_next_cycle_section_from_suggest(report, rendered):
    draft = report.next_cycle
    assert draft.cycle == "2027-Q1"
    assert [kr.kr for kr in draft.key_results] == ["ctr", "csat", "mape", "alerting", "validated"]
    assert (
        "## Next cycle: 2027-Q1" in rendered["md"] and "```yaml\n# Draft OKRs for 2027-Q1" in rendered["md"]
    )
    assert "Next cycle: 2027-Q1" in rendered["html"]
    assert json.loads(rendered["json"])["next_cycle"]["cycle"] == "2027-Q1"


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.text.append(" ")

    def handle_data(self, data):
        self.text.append(data)


def parse(html_text: str) -> _Elements:
    parser = _Elements()
    parser.feed(html_text)
    return parser


def test_html_is_self_contained_and_escapes_user_text(rendered):
    page = parse(rendered["html"])
    names = [tag for tag, _ in page.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, attrs in page.tags:
        assert not any(key.startswith("on") for key in attrs), (tag, attrs)
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/svg+xml;base64,"), tag
        if "href" in attrs:  # only links to the MLflow UI given with --ui-url, and in-page anchors
            assert attrs["href"].startswith((UI + "/#/experiments/", "#kr-")), attrs["href"]
    text = "".join(page.text)
    assert "<script>alert(1)</script> & learn faster" in " ".join(text.split())
    assert "two-tower-v2 <b>bold</b>" in text
    assert names.count("img") == 6  # one trend chart per KR and the effort chart
    assert "@media print" in rendered["html"]


def test_html_without_ui_url_has_no_network_reference(store):
    document = render(build_report(store[1], cycle="2026-Q4", now=NOW), "html")
    assert re.search(r"https?://", document) is None
    assert "two-tower-v2 &lt;b&gt;bold&lt;/b&gt;" in document


def test_html_shows_the_numbers(rendered):
    body = rendered["html"][rendered["html"].index("<body>") :]
    text = " ".join("".join(parse(body).text).split())
    assert "0.61 / 1.0 Below the 0.7 success grade." in text
    assert "ctr ● on-track 0.05 0.08 0.065 50% 0.50 2" in text
    assert "mape ● on-track 12 % 10.8 % 11.4 % 50% 0.50 2" in text
    assert "Improve recommendation relevance reco product reco-team 0.75" in text
    assert "1 run(s) would have improved this KR but broke a counter-metric" in text
    assert "two-tower Two towers beat matrix factorisation ctr" in text


def test_trend_chart_has_actual_and_expected_lines(report):
    from mlflow_okr.report.charts import trend_svg

    svg = trend_svg(report, report.status.find("ctr"))
    assert svg.startswith("<?xml") and "<!DOCTYPE" not in svg and "<script" not in svg
    # matplotlib writes each text as paths preceded by a comment holding the text
    for label in (
        "<!-- expected -->",
        "<!-- actual -->",
        "<!-- as of -->",
        "<!-- Nov 01 -->",
        "<!-- 0.080 -->",
    ):
        assert label in svg
    maintain = trend_svg(report, report.status.find("csat"))
    assert "<!-- bound -->" in maintain and "<!-- 4.50 -->" in maintain


def test_cli_report_formats_and_output_file(runner, store, tmp_path):
    uri = store[0]
    out = tmp_path / "report.html"
    result = invoke(
        runner,
        "report",
        "--cycle",
        "2026-Q4",
        "--format",
        "html",
        "-o",
        str(out),
        "--as-of",
        "2026-11-15",
        "--tracking-uri",
        uri,
    )
    assert result.exit_code == 0, result.output
    assert "0.61" in out.read_text(encoding="utf-8")
    result = invoke(runner, "report", "--as-of", "2026-11-15", "--tracking-uri", uri)  # markdown, stdout
    assert result.exit_code == 0 and "## Grade 0.61 / 1.0" in result.output
    result = invoke(runner, "report", "--format", "json", "--as-of", "2026-11-15", "--tracking-uri", uri)
    assert json.loads(result.output)["score"] == (0.75 + 0.75 + 1 / 3) / 3


def test_as_of_makes_statuses_and_elapsed_reproducible(runner, store):
    uri = store[0]
    early = json.loads(
        invoke(runner, "report", "--format", "json", "--as-of", "2026-10-15", "--tracking-uri", uri).output
    )
    late = json.loads(
        invoke(runner, "report", "--format", "json", "--as-of", "2027-01-05", "--tracking-uri", uri).output
    )
    assert early["cycle"]["elapsed"] == 14 / 92
    assert late["cycle"]["elapsed"] == 1.0
    early_status = {kr["id"]: kr["status"] for o in early["objectives"] for kr in o["key_results"]}
    late_status = {kr["id"]: kr["status"] for o in late["objectives"] for kr in o["key_results"]}
    assert early_status["validated"] == "on-track" and late_status["validated"] == "missed"
    assert late_status["ctr"] == "missed" and late_status["csat"] == "achieved"


def test_fail_under_gates_on_the_cycle_grade(runner, store):
    uri = store[0]
    result = invoke(runner, "report", "--fail-under", "0.7", "--as-of", "2026-11-15", "--tracking-uri", uri)
    assert result.exit_code == 1
    assert "grade 0.61 is below --fail-under 0.70" in result.output
    result = invoke(runner, "report", "--fail-under", "0.6", "--as-of", "2026-11-15", "--tracking-uri", uri)
    assert result.exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "'pdf' is not one of"),
        (["--fail-under", "1.5"], "1.5 is not in the range"),
        (["--ui-url", "javascript:alert(1)"], "must start with http:// or https://"),
        (["--cycle", "2031-Q1"], "cycle '2031-Q1' is not published"),
        (["--as-of", "yesterday"], "'yesterday' does not match"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(runner, store, args, message):
    result = invoke(runner, "report", *args, "--tracking-uri", store[0])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_report_without_ledger_or_history(client, tracking_uri, write_spec):
    from mlflow_okr.report.charts import trend_svg

    api.apply_spec(write_spec(SPEC), tracking_uri=tracking_uri, sync_after=False)
    empty = build_report(client, now=NOW)
    assert empty.ledger is None and empty.status.score == 0.0
    assert all(detail.history == [] and detail.best_run is None for detail in empty.details.values())
    text = render(empty, "md")
    assert "## Hypotheses" not in text and "| 0 | 0 | 0 | 0 | 5 |" in text  # five KRs not started
    assert "<!-- no value recorded yet -->" in trend_svg(empty, empty.status.find("ctr"))
    assert len(list(csv.DictReader(io.StringIO(render(empty, "csv"))))) == 5


def test_markdown_cells_cannot_break_the_table_or_inject_markup():
    from mlflow_okr.report.markdown import md

    assert md("a [b](javascript:x) | <i>c</i>\nd") == "a \\[b\\](javascript:x) \\| &lt;i&gt;c&lt;/i&gt; d"


def test_every_kr_row_in_markdown_and_html_matches_the_engine(rendered, engine_status):
    from mlflow_okr.render import STATUS_MARKS, number

    body = rendered["html"][rendered["html"].index("<body>"):]
    html_text = " ".join("".join(parse(body).text).split())
    md_rows = {line.split("**")[1]: line for line in rendered["md"].splitlines() if line.startswith("| **")}
    for kr in engine_status.key_results():
        progress, grade = f"{kr.progress:.0%}", f"{kr.progress:.2f}"
        cells = [STATUS_MARKS[kr.status], number(kr.current, kr.unit), progress, grade]
        row = md_rows[kr.id]
        assert all(f"| {cell} |" in row or f" {cell} |" in row for cell in cells), (kr.id, row, cells)
        assert row.rstrip().split("|")[-3].strip() == str(kr.counted_runs)
        html_row = f"{kr.id} {cells[0]} {number(kr.baseline, kr.unit) if kr.kind != 'maintain' else '—'}"
        assert html_row in html_text, html_row
        assert f"{cells[1]} {cells[2]} {cells[3]} {kr.counted_runs}" in html_text, (kr.id, cells)
    for objective in engine_status.objectives:
        assert f"| {objective.score:.2f} |" in rendered["md"]
