"""The weekly review: a known week's KR history gives exactly that week's changes."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlflow_okr import practice, state, vocabulary
from mlflow_okr.api import apply_spec, sync
from mlflow_okr.errors import InputError
from mlflow_okr.review import parse_since
from mlflow_okr.spec import parse_cycle, parse_spec
from tests.conftest import NOW, invoke
from tests.specs import ON_CALL, okrs_yaml, ops, reco

Q4 = parse_cycle("2026-Q4")
SINCE = dt.datetime(2026, 11, 8, tzinfo=dt.timezone.utc)
SPEC = okrs_yaml(
    reco(
        "{id: ctr, metric: online_ctr, measures: product, experiments: [reco], baseline: 0.05, target: 0.08, "
        "guardrails: [{metric: p99, max: 50}]}",
        "{id: recall, metric: recall, experiments: [reco], baseline: 0.5, target: 1.0}",
    ),
    ops("{id: latency, metric: p99, experiments: [serving], baseline: 100, target: 50}", ON_CALL),
)


def at(month: int, day: int, hour: int = 0) -> int:
    return int(dt.datetime(2026, month, day, hour, tzinfo=dt.timezone.utc).timestamp() * 1000)


def run(client, experiment_id: str, start_ms: int, metrics: dict[str, float]) -> str:
    created = client.create_run(experiment_id, start_time=start_ms, tags={"mlflow.user": "ann"})
    for key, value in metrics.items():
        client.log_metric(created.info.run_id, key, value, timestamp=start_ms + 1000)
    client.set_terminated(created.info.run_id, "FINISHED", end_time=start_ms + 60_000)
    return created.info.run_id


def log_history(client, kr_run_id: str, points: list[tuple[int, float, float]]) -> None:
    for when, value, progress in points:
        metrics = {vocabulary.METRIC_VALUE: value, vocabulary.METRIC_PROGRESS: progress}
        state.log_kr_state(client, kr_run_id, metrics, {}, Q4, timestamp_ms=when)


@pytest.fixture
def week(client):
    """The week of 2026-11-08 .. 2026-11-15 and what happened around it.

    ctr's runs: a (Oct 20, before), b (Nov 9, a new best), c (Nov 10, not), d (Nov 12, a new best),
    e (Nov 16, after); f (Nov 11) and g (Oct 25) break its p99 guardrail. The KR history
    (okr.value / okr.progress) is written at known times: ctr 0.06 (Oct 20) -> 0.065 (Nov 9) ->
    0.07 (Nov 12); latency progress 0.3 from Oct 5, so it slides below the on-track line
    (0.7 x elapsed) on Nov 9 at 10:17, then 0.4 on Nov 13 puts it back; recall 0.6 on Oct 10 and
    nothing since; on-call checked in on Nov 10.
    """
    apply_spec(parse_spec(SPEC), tracking_uri=client.tracking_uri)
    reco = client.create_experiment("reco")
    runs = {
        name: run(client, reco, start, {"online_ctr": value, "p99": p99})
        for name, start, value, p99 in (
            ("a", at(10, 20), 0.06, 10), ("b", at(11, 9), 0.065, 10), ("c", at(11, 10), 0.062, 10),
            ("d", at(11, 12), 0.07, 10), ("e", at(11, 16), 0.075, 10),
            # Breaking the p99 guardrail: g before the week, f in it.
            ("g", at(10, 25), 0.09, 80), ("f", at(11, 11), 0.095, 90),
        )
    }
    sync(tracking_uri=client.tracking_uri, now=NOW)  # tags the runs counted; its own points come later
    krs = state.load_published(client, "2026-Q4").kr_runs
    log_history(
        client, krs["ctr"], [(at(10, 20), 0.06, 1 / 3), (at(11, 9), 0.065, 0.5), (at(11, 12), 0.07, 2 / 3)]
    )
    log_history(client, krs["latency"], [(at(10, 5), 85.0, 0.3), (at(11, 13), 80.0, 0.4)])
    log_history(client, krs["recall"], [(at(10, 10), 0.6, 0.2)])
    # A check-in on Nov 10, recorded as `mlflow-okr checkin` records it (its value is not synced here).
    record = {"kr": "on-call", "value": 0.5, "who": "platform-lead", "when": "2026-11-10T09:00:00+00:00",
              "note": "pager rota drafted", "count": 1}
    client.set_tag(krs["on-call"], vocabulary.TAG_CHECKIN, vocabulary.checkin_text(record))
    return runs


def test_the_review_of_a_known_week_lists_exactly_its_changes(client, week) -> None:
    review = practice.weekly_review("2026-11-08", tracking_uri=client.tracking_uri, now=NOW)
    assert (review.since, review.until, review.has_history) == (SINCE, NOW, True)
    krs = {kr.id: kr for kr in review.key_results}
    ctr = krs["ctr"]
    assert (ctr.from_value, ctr.to_value, ctr.delta) == (0.06, 0.07, 0.07 - 0.06)
    assert ctr.transitions == [] and ctr.status == "on-track"
    assert ctr.moved_by == [week["b"], week["d"]]  # c did not beat b; a and e are outside the week
    assert ctr.guardrail_breaches == [week["f"]]  # g broke it before the week
    assert all(kr.guardrail_breaches == [] for kr in review.key_results if kr.id != "ctr")
    assert (ctr.stale, ctr.below_line) == (False, False)

    latency = krs["latency"]
    assert (latency.from_value, latency.to_value, latency.delta) == (85.0, 80.0, -5.0)
    assert [(t.time.strftime("%Y-%m-%d %H:%M"), t.from_status, t.to_status) for t in latency.transitions] == [
        ("2026-11-09 10:17", "on-track", "at-risk"),  # 0.3 / 0.7 of the quarter: elapsed caught up
        ("2026-11-13 00:00", "at-risk", "on-track"),  # the new value
    ]
    assert latency.moved_by == [] and not latency.stale and not latency.below_line

    recall = krs["recall"]
    assert (recall.from_value, recall.to_value, recall.delta, recall.transitions) == (0.6, 0.6, 0.0, [])
    # 0.2 is under the on-track line (0.7 x 0.489) but over the at-risk one (0.4 x 0.489 = 0.196).
    assert (recall.stale, recall.below_line, recall.status) == (True, True, "at-risk")
    assert recall.expected_progress == 0.7 * Q4.elapsed(NOW)

    on_call = krs["on-call"]
    assert on_call.checkin.model_dump() == {
        "value": 0.5, "who": "platform-lead", "when": dt.datetime(2026, 11, 10, 9, tzinfo=dt.timezone.utc),
        "note": "pager rota drafted",
    }
    assert all(kr.checkin is None for kr in review.key_results if kr.id != "on-call")
    assert (on_call.from_value, on_call.to_value, on_call.stale) == (None, None, True)
    assert on_call.status == "not-started"


def test_review_json_markdown_and_html(client, week, runner) -> None:
    args = ["review", "--since", "2026-11-08", "--as-of", "2026-11-15", "--tracking-uri", client.tracking_uri]
    result = invoke(runner, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert (payload["since"], payload["until"]) == ("2026-11-08T00:00:00Z", "2026-11-15T00:00:00Z")
    ctr = payload["key_results"][0]
    assert {key: ctr[key] for key in ("id", "from", "to", "delta", "transitions", "moved_by", "stale")} == {
        "id": "ctr", "from": 0.06, "to": 0.07, "delta": 0.07 - 0.06, "transitions": [],
        "moved_by": [week["b"], week["d"]], "stale": False,
    }
    assert payload["key_results"][2]["transitions"][0] == {
        "time": "2026-11-09T10:17:08.572000Z", "from": "on-track", "to": "at-risk"
    }
    markdown = invoke(runner, *args)
    assert "| `latency` | on-track → at-risk → on-track | 85 → 80 (-5) | — | — |" in markdown.output
    assert "| `recall` | at-risk | 0.6 (unchanged) | — | stale; below the line (expected 34%, has 20%) |" in (
        markdown.output
    )
    assert "checked in 0.5 by platform-lead on 2026-11-10: pager rota drafted" in markdown.output
    page = invoke(runner, *args, "--format", "html")
    assert page.output.startswith("<!doctype html>") and "<td><code>ctr</code>" in page.output


def test_a_cycle_without_history_says_so(client, runner) -> None:
    apply_spec(parse_spec(SPEC), tracking_uri=client.tracking_uri)
    result = invoke(runner, "review", "--as-of", "2026-11-15", "--tracking-uri", client.tracking_uri)
    assert result.exit_code == 0
    assert "Cycle 2026-Q4 has no KR history yet: nothing to review (run `mlflow-okr sync`)." in result.output


def test_since_is_a_span_or_a_date() -> None:
    assert parse_since("7d", NOW) == NOW - dt.timedelta(days=7)
    assert parse_since("2w", NOW) == NOW - dt.timedelta(days=14)
    assert parse_since("2026-11-28", dt.datetime(2026, 12, 5, tzinfo=dt.timezone.utc)) == dt.datetime(
        2026, 11, 28, tzinfo=dt.timezone.utc
    )
    with pytest.raises(InputError, match="neither a span such as 7d or 2w nor a date"):
        parse_since("last week", NOW)


class Receiver:
    """A webhook on 127.0.0.1 that keeps the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_notify_posts_the_review_to_the_spec_webhooks(client, runner) -> None:
    receiver = Receiver()
    try:
        spec = parse_spec(SPEC + f"notify: {{webhooks: ['{receiver.url}']}}\n")
        apply_spec(spec, tracking_uri=client.tracking_uri)
        args = ["--as-of", "2026-11-15", "--notify", "--tracking-uri", client.tracking_uri]
        result = invoke(runner, "review", *args)
        assert result.exit_code == 0, result.output
        assert "Review posted to http://127.0.0.1:" in result.output  # the path (a secret) is not shown
        # post() returns once the webhook answered: the body is there.
        assert [body["text"].splitlines()[1] for body in receiver.bodies] == [
            "Cycle 2026-Q4 has no KR history yet: nothing to review (run `mlflow-okr sync`)."
        ]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
