"""KR transition notifications against a real local webhook server and a real MLflow store."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_okr import notify, state, vocabulary
from mlflow_okr.api import apply_spec
from mlflow_okr.compute import compute_key_results, computed_statuses
from mlflow_okr.kr_state import state_writes, write_kr_status
from mlflow_okr.sync import sync
from tests.conftest import NOW, invoke, make_run

EARLY = dt.datetime(2026, 10, 20, tzinfo=dt.timezone.utc)


class Webhook:
    """A webhook endpoint on 127.0.0.1 that records every request; `failures` 500s come first."""

    def __init__(self, failures: int = 0):
        self.requests: list[dict] = []
        self.failures = failures
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.lock:
                    hook.requests.append({"path": self.path, "body": body})
                    failing = hook.failures > 0
                    hook.failures -= 1 if failing else 0
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"no" if failing else b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self) -> list[str]:
        notify.wait_for_pending(timeout=30)
        with self.lock:
            return [json.loads(request["body"])["text"] for request in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "BACKOFF_SECONDS", 0.01)


def spec_text(url: str, transitions: str = "[achieved, at-risk, off-track, missed]") -> str:
    return f"""
        version: 1
        cycle: 2026-Q4
        notify:
          webhooks: ["{url}"]
          transitions: {transitions}
        objectives:
          - id: reco
            title: Better recommendations
            category: product
            key_results:
              - id: ctr
                title: CTR from 5% to 8% <!channel>
                metric: online_ctr
                experiments: [reco]
                baseline: 0.05
                target: 0.08
        """


@pytest.fixture
def published(client, tracking_uri, write_spec, webhook):
    """A published cycle notifying `webhook`, and the source experiment id."""
    apply_spec(write_spec(spec_text(webhook.url)), tracking_uri=tracking_uri, sync_after=False)
    return client.create_experiment("reco")


def test_a_transition_sends_exactly_one_message_and_resync_sends_none(client, published, webhook):
    make_run(client, published, {"online_ctr": 0.08})
    sync(client, now=NOW)
    messages = webhook.messages()
    assert len(messages) == 1
    assert "KR `ctr`" in messages[0] and "*achieved*" in messages[0] and "was not-started" in messages[0]
    assert "current 0.08" in messages[0] and "2026-Q4" in messages[0]
    assert "(CTR from 5% to 8% &lt;!channel&gt;)" in messages[0]  # no @channel ping from a title
    sync(client, now=NOW)
    sync(client, now=NOW)
    assert len(webhook.messages()) == 1
    params = client.get_run(state.load_published(client).kr_runs["ctr"]).data.params
    assert list(params) == ["okr.notified.achieved.1"]


def test_a_kr_missed_at_the_end_of_the_cycle_is_announced(client, published, webhook):
    make_run(client, published, {"online_ctr": 0.06})  # progress 0.33: below the 0.7 grade
    sync(client, now=NOW)
    sync(client, now=dt.datetime(2027, 1, 2, tzinfo=dt.timezone.utc))
    messages = webhook.messages()
    assert len(messages) == 2
    assert "*at-risk* (was not-started)" in messages[0] and "*missed* (was at-risk)" in messages[1]


def test_statuses_not_listed_in_transitions_are_not_sent(client, tracking_uri, write_spec, webhook):
    apply_spec(write_spec(spec_text(webhook.url, "[achieved]")), tracking_uri=tracking_uri, sync_after=False)
    experiment_id = client.create_experiment("reco")
    make_run(client, experiment_id, {"online_ctr": 0.058})  # progress 0.27: at-risk on Nov 15
    result = sync(client, now=NOW)
    assert result.status.find("ctr").status == "at-risk"
    assert webhook.messages() == []


def test_a_status_entered_again_is_a_new_transition(client, published, webhook):
    make_run(client, published, {"online_ctr": 0.059})  # progress 0.3
    assert sync(client, now=EARLY).status.find("ctr").status == "on-track"
    assert sync(client, now=NOW).status.find("ctr").status == "at-risk"
    assert sync(client, now=EARLY).status.find("ctr").status == "on-track"
    assert sync(client, now=NOW).status.find("ctr").status == "at-risk"
    messages = webhook.messages()
    assert len(messages) == 2
    assert all("*at-risk* (was on-track)" in message for message in messages)


def test_two_writers_that_saw_the_same_transition_send_one_message(client, published, webhook):
    make_run(client, published, {"online_ctr": 0.08})
    kr_published = state.load_published(client)
    computations, _ = compute_key_results(client, kr_published.spec)
    status = computed_statuses(client, kr_published, computations, NOW)["ctr"]
    run_id = kr_published.kr_runs["ctr"]
    # Both writers read the KR run before either writes: the race the claim param settles.
    first = notify.pending_transition(client, kr_published, run_id, status)
    second = notify.pending_transition(client, kr_published, run_id, status)
    assert first is not None and second is not None and first.claim_key == second.claim_key
    metrics, tags = state_writes(status)
    for _ in range(2):
        state.log_kr_state(client, run_id, metrics, tags, kr_published.cycle)
    threads = [threading.Thread(target=notify.announce, args=(client, t)) for t in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(webhook.messages()) == 1
    # A writer that reads after the write sees no transition at all.
    write_kr_status(client, kr_published, status)
    assert notify.pending_transition(client, kr_published, run_id, status) is None
    assert len(webhook.messages()) == 1


def test_concurrent_sync_processes_send_one_message(client, published, webhook, tracking_uri):
    make_run(client, published, {"online_ctr": 0.08})
    command = [sys.executable, "-m", "mlflow_okr", "sync", "--as-of", "2026-11-15"]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    processes = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert len(webhook.messages()) == 1
    run = client.get_run(state.load_published(client).kr_runs["ctr"])
    assert run.data.tags[vocabulary.TAG_STATUS] == "achieved"
    assert list(run.data.params) == ["okr.notified.achieved.1"]


def test_a_failing_webhook_is_retried(client, tracking_uri, write_spec):
    flaky = Webhook(failures=1)
    try:
        apply_spec(write_spec(spec_text(flaky.url)), tracking_uri=tracking_uri, sync_after=False)
        experiment_id = client.create_experiment("reco")
        make_run(client, experiment_id, {"online_ctr": 0.08})
        sync(client, now=NOW)
        messages = flaky.messages()
        assert len(messages) == 2  # a 500, then the same message again, answered 200
        assert messages[0] == messages[1] and "*achieved*" in messages[0]
    finally:
        flaky.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_an_unreachable_webhook_is_logged_never_raised(client, tracking_uri, write_spec, caplog):
    apply_spec(write_spec(spec_text(closed_port_url())), tracking_uri=tracking_uri, sync_after=False)
    experiment_id = client.create_experiment("reco")
    make_run(client, experiment_id, {"online_ctr": 0.08})
    with caplog.at_level(logging.ERROR, logger="mlflow_okr"):
        result = sync(client, now=NOW)
        notify.wait_for_pending(timeout=30)
    assert result.status.find("ctr").status == "achieved"
    assert "failed after 3 attempts (ConnectionError)" in caplog.text
    assert "/hook" not in caplog.text  # webhook paths are secrets


def test_webhooks_read_from_the_environment(client, tracking_uri, write_spec, webhook, monkeypatch):
    monkeypatch.setenv("OKR_TEST_WEBHOOK", webhook.url)
    apply_spec(write_spec(spec_text("${OKR_TEST_WEBHOOK}")), tracking_uri=tracking_uri, sync_after=False)
    experiment_id = client.create_experiment("reco")
    make_run(client, experiment_id, {"online_ctr": 0.08})
    sync(client, now=NOW)
    assert len(webhook.messages()) == 1


def test_notify_test_sends_one_message_per_webhook(runner, published, webhook):
    result = invoke(runner, "notify", "--test")
    assert result.exit_code == 0, result.output
    assert "1 of 1 webhook(s) answered" in result.output
    messages = webhook.messages()
    assert len(messages) == 1 and "test message for cycle *2026-Q4*" in messages[0]


def test_notify_test_without_webhooks_is_bad_input(runner, tracking_uri, write_spec):
    spec = write_spec(
        """
        version: 1
        cycle: 2026-Q4
        objectives:
          - id: ops
            title: Reliable alerting
            category: operational
            key_results:
              - {id: alerting-live, source: manual, target: 1}
        """
    )
    apply_spec(spec, tracking_uri=tracking_uri, sync_after=False)
    result = invoke(runner, "notify", "--test")
    assert result.exit_code == 2
    assert "no webhooks are configured" in result.output


def test_notify_test_reports_an_unreachable_webhook(runner, tracking_uri, write_spec):
    apply_spec(write_spec(spec_text(closed_port_url())), tracking_uri=tracking_uri, sync_after=False)
    result = invoke(runner, "notify", "--test")
    assert result.exit_code == 1
    assert "0 of 1 webhook(s) answered" in result.output


def test_the_live_store_sends_the_transition_once(tracking_uri, client, webhook):
    from mlflow_okr.store import flush
    from tests.live_fixtures import CYCLE, EXPERIMENT, live_spec_text, publish, use_okr_uri

    text = live_spec_text().replace("objectives:", f'notify:\n  webhooks: ["{webhook.url}"]\nobjectives:', 1)
    publish(tracking_uri, text)
    use_okr_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run():
        mlflow.log_metrics({"latency": 10, "val_acc": 1.0})
        flush()
    messages = webhook.messages()
    assert len(messages) == 1 and "KR `acc`" in messages[0] and "*achieved*" in messages[0]
    sync(client, cycle=CYCLE)  # the live state is already right: nothing new to announce
    with mlflow.start_run():
        mlflow.log_metrics({"latency": 10, "val_acc": 0.9})
        flush()
    assert len(webhook.messages()) == 1


@pytest.mark.slow  # a server start takes most of a minute on a busy machine: `pytest -m slow`
@pytest.mark.server
def test_server_workers_and_http_syncs_send_one_message(tmp_path, webhook):
    """The hook runs in `mlflow server` workers; HTTP clients sync too: one message in all."""
    from tests.live_fixtures import CYCLE, EXPERIMENT, live_spec_text, publish
    from tests.servers import mlflow_server

    database = f"sqlite:///{tmp_path / 'server.db'}"
    text = live_spec_text().replace("objectives:", f'notify:\n  webhooks: ["{webhook.url}"]\nobjectives:', 1)
    publish(database, text)
    with mlflow_server("okr+" + database, tmp_path, workers=2) as server:
        http = MlflowClient(server.url)
        experiment_id = http.create_experiment(EXPERIMENT)
        run = http.create_run(experiment_id)
        http.log_batch(run.info.run_id, metrics=[Metric("latency", 10, 0, 0), Metric("val_acc", 1.0, 0, 0)])
        http.set_terminated(run.info.run_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not webhook.requests:
            time.sleep(0.2)
        syncs = [threading.Thread(target=sync, args=(http,), kwargs={"cycle": CYCLE}) for _ in range(2)]
        for thread in syncs:
            thread.start()
        for thread in syncs:
            thread.join()
        time.sleep(1)  # a duplicate from a server worker would arrive within this
    messages = webhook.messages()
    assert len(messages) == 1 and "KR `acc`" in messages[0] and "*achieved*" in messages[0]
