"""The live board's JSON and its servers: `mlflow-okr board`, `mlflow server --app-name okr|okr-auth`.

Real MLflow stores and real server subprocesses; the browser side is tests/test_board_browser.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import mlflow_okr
from mlflow_okr import state
from mlflow_okr.board.app import create_board_app
from mlflow_okr.board.data import default_ui_url
from mlflow_okr.cli import cli
from tests import servers
from tests.conftest import make_run

UI = "http://mlflow.example.test:5000"
RUNS_VIEW = "?workflowType=machine_learning"  # run links open MLflow's classic runs view
HOSTILE_TITLE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> recall & more'
TODAY = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
AS_OF = TODAY.strftime("%Y-%m-%dT%H:%M:%S")


def board_spec() -> str:
    start, end = (TODAY - dt.timedelta(days=45)).date(), (TODAY + dt.timedelta(days=45)).date()
    return textwrap.dedent(
        f"""
        version: 1
        cycle: {{name: board, start: {start}, end: {end}}}
        objectives:
          - id: quality
            title: Ship a model users can trust
            category: product
            owner: ml-team
            key_results:
              - id: acc
                title: Raise validation accuracy from 0.5 to 1.0
                metric: val_acc
                experiments: ["board-*"]
                baseline: 0.5
                target: 1.0
                guardrails:
                  - {{metric: latency_ms, max: 50}}
              - id: latency
                title: Cut p99 latency from 100 ms to 10 ms
                metric: latency_ms
                unit: ms
                experiments: ["board-*"]
                baseline: 100
                target: 10
              - id: recall
                title: '{HOSTILE_TITLE}'
                metric: val_recall
                experiments: ["board-*"]
                baseline: 0.5
                target: 0.9
          - id: ops
            title: Run it reliably
            category: operational
            owner: platform-team
            key_results:
              - id: alerting
                title: Alerting is live
                source: manual
                target: 1
        """
    ).lstrip()


@dataclass
class BoardStore:
    """A published cycle with three training runs, a check-in and a hypothesis."""

    uri: str
    experiment_id: str
    okr_experiment_id: str
    runs: dict[str, str]
    kr_runs: dict[str, str]
    checkin_who: str


def build_board_store(uri: str, spec_path: Path) -> BoardStore:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("board-train")
    started = int((TODAY - dt.timedelta(days=1)).timestamp() * 1000)
    runs = {
        "small-model": make_run(client, experiment_id, {"val_acc": 0.7, "latency_ms": 40, "val_recall": 0.6},
                                start_time=started, name="small-model"),
        "fast-model": make_run(client, experiment_id, {"val_acc": 0.6, "latency_ms": 20, "val_recall": 0.7},
                               start_time=started + 1000, name="fast-model"),
        # The most accurate run breaks the latency guardrail, so accuracy does not count it.
        "slow-model": make_run(client, experiment_id, {"val_acc": 0.9, "latency_ms": 80},
                               start_time=started + 2000, name="slow-model"),
    }
    spec_path.write_text(board_spec(), encoding="utf-8")
    mlflow_okr.apply_spec(spec_path, tracking_uri=uri)
    record = mlflow_okr.checkin("alerting", 1, note="Pager wired to on-call", tracking_uri=uri)
    mlflow_okr.add_hypothesis("Dropout lifts accuracy", hypothesis_id="dropout", kr="acc", tracking_uri=uri)
    published = state.load_published(client, "board")
    return BoardStore(
        uri=uri,
        experiment_id=experiment_id,
        okr_experiment_id=published.experiment_id,
        runs=runs,
        kr_runs=dict(published.kr_runs),
        checkin_who=record.who,
    )


@pytest.fixture
def board_store(tracking_uri, tmp_path) -> BoardStore:
    return build_board_store(tracking_uri, tmp_path / "okrs.yaml")


def cli_status_json(uri: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    result = CliRunner().invoke(
        cli, ["status", "--format", "json", "--as-of", AS_OF, "--tracking-uri", uri, *extra],
        env=env, catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def key_results(status: dict) -> dict[str, dict]:
    return {kr["id"]: kr for objective in status["objectives"] for kr in objective["key_results"]}


# ---------------------------------------------------------------------------------------------
# The JSON the page reads


def test_api_status_is_the_status_command_object(board_store):
    client = create_board_app(board_store.uri, UI).test_client()
    response = client.get(f"/api/status?as_of={AS_OF}")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == cli_status_json(board_store.uri)
    krs = key_results(response.get_json())
    assert (krs["acc"]["current"], krs["acc"]["progress"], krs["acc"]["best_run_id"]) == (
        0.7, (0.7 - 0.5) / (1.0 - 0.5), board_store.runs["small-model"]
    )
    acc = krs["acc"]
    assert (acc["counted_runs"], acc["excluded_runs"], acc["guardrail_breaches"]) == (2, 1, 1)
    assert (krs["latency"]["current"], krs["latency"]["unit"], krs["latency"]["progress"]) == (
        20.0, "ms", (20 - 100) / (10 - 100)
    )
    assert krs["recall"]["title"] == HOSTILE_TITLE


def test_api_board_adds_history_links_checkins_and_hypotheses(board_store):
    client = create_board_app(board_store.uri, UI).test_client()
    board = client.get(f"/api/board?as_of={AS_OF}").get_json()
    assert board["status"] == cli_status_json(board_store.uri)
    assert board["ui_url"] == UI
    acc = board["key_results"]["acc"]
    kr_run, best_run = board_store.kr_runs["acc"], board_store.runs["small-model"]
    assert acc["kr_run_url"] == f"{UI}/#/experiments/{board_store.okr_experiment_id}/runs/{kr_run}{RUNS_VIEW}"
    assert acc["best_run_url"] == f"{UI}/#/experiments/{board_store.experiment_id}/runs/{best_run}{RUNS_VIEW}"
    assert acc["best_run_name"] == "small-model"
    assert acc["maintain"] is None
    assert [(point["progress"], point["value"]) for point in acc["history"]][-1] == ((0.7 - 0.5) / 0.5, 0.7)
    # One point per change: no two neighbours are the same state.
    pairs = [(point["progress"], point["value"]) for point in acc["history"]]
    assert all(a != b for a, b in zip(pairs, pairs[1:], strict=False))
    assert board["key_results"]["alerting"]["best_run_url"] is None
    [checkin] = board["checkins"]
    assert {key: checkin[key] for key in ("kr", "kr_title", "value", "unit", "who", "note")} == {
        "kr": "alerting", "kr_title": "Alerting is live", "value": 1.0, "unit": None,
        "who": board_store.checkin_who, "note": "Pager wired to on-call",
    }
    [hypothesis] = board["hypotheses"]
    fields = ("id", "status", "statement", "kr", "control_runs", "treatment_runs")
    assert {key: hypothesis[key] for key in fields} == {
        "id": "dropout", "status": "proposed", "statement": "Dropout lifts accuracy", "kr": "acc",
        "control_runs": 0, "treatment_runs": 0,
    }
    assert hypothesis["url"].startswith(f"{UI}/#/experiments/")


def test_the_page_is_self_contained_and_allows_only_its_own_script(board_store):
    client = create_board_app(board_store.uri, UI).test_client()
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    assert page.count("<script") == 1 and f'<script nonce="{nonce}">' in page
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for remote in ("http://", "https://", "//cdn"):
        assert remote not in page.replace("http://www.w3.org/2000/svg", "")
    assert "innerHTML" not in page and "@media print" in page
    # A fresh nonce per response: a copied page cannot run a script under an old one.
    assert client.get("/").headers["Content-Security-Policy"] != policy


def test_errors_are_json_with_the_library_message(board_store):
    client = create_board_app(board_store.uri, UI).test_client()
    response = client.get("/api/status?cycle=2031-Q1")
    assert response.status_code == 404
    assert response.get_json() == {
        "error": "cycle '2031-Q1' is not published in this MLflow backend; "
        "run `mlflow-okr apply okrs.yaml` first"
    }
    response = client.get("/api/status?as_of=yesterday")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "bad as_of 'yesterday': give a date such as 2026-11-15 or an ISO time"
    }


def test_default_ui_url_is_the_tracking_server_only_for_http():
    assert default_ui_url("http://mlflow.internal:5000/") == "http://mlflow.internal:5000"
    assert default_ui_url("okr+https://mlflow.internal") == "https://mlflow.internal"
    assert default_ui_url("sqlite:///mlflow.db") is None
    assert default_ui_url(None) is None or default_ui_url(None).startswith("http")


# ---------------------------------------------------------------------------------------------
# The servers


def _wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {seconds:.0f}s:\n{log.read_text(errors='replace')}")


@pytest.mark.server
def test_board_command_serves_the_page_and_the_status(board_store, tmp_path):
    port = servers.free_port()
    log = tmp_path / "board.log"
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow_okr", "board", "--port", str(port), "--tracking-uri",
             board_store.uri, "--ui-url", UI],
            stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url + "/api/status", process, log)
        status = requests.get(url + f"/api/status?as_of={AS_OF}", timeout=30).json()
        assert status == cli_status_json(board_store.uri)
        page = requests.get(url + "/", timeout=30)
        assert page.status_code == 200 and "<title>OKR board</title>" in page.text
        board = requests.get(url + "/api/board", timeout=30).json()
        assert board["key_results"]["acc"]["best_run_url"].startswith(UI + "/#/experiments/")
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert f"OKR board on http://127.0.0.1:{port}/" in log.read_text()


@pytest.mark.server
def test_mlflow_server_app_okr_serves_the_board_and_mlflow(board_store, tmp_path):
    with servers.mlflow_server(board_store.uri, tmp_path / "server", app_name="okr") as server:
        page = requests.get(server.url + "/okr/", timeout=30)
        assert page.status_code == 200 and "<title>OKR board</title>" in page.text
        assert requests.get(server.url + "/okr", timeout=30, allow_redirects=False).status_code in (301, 308)
        status = requests.get(server.url + f"/okr/api/status?as_of={AS_OF}", timeout=30).json()
        assert status == cli_status_json(board_store.uri)
        # Through the server's REST API the same store gives the same object.
        assert status == cli_status_json(server.url)
        board = requests.get(server.url + "/okr/api/board", timeout=30).json()
        # The MLflow UI is this server: links are relative to its root.
        assert board["key_results"]["acc"]["best_run_url"] == (
            f"/#/experiments/{board_store.experiment_id}/runs/{board_store.runs['small-model']}{RUNS_VIEW}"
        )
        ui = requests.get(server.url + "/", timeout=30)
        assert ui.status_code == 200 and "<title>MLflow</title>" in ui.text
        search = requests.get(server.url + "/ajax-api/2.0/mlflow/experiments/search",
                              params={"max_results": 100}, timeout=30)
        assert search.status_code == 200
        names = {experiment["name"] for experiment in search.json()["experiments"]}
        assert {"board-train", "okr/board", "okr/ledger"} <= names


# ---------------------------------------------------------------------------------------------
# MLflow's auth holds on the board


ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1234"
READER, READER_PASSWORD = "reader", "reader-password-1234"


def _auth_config(tmp_path: Path) -> Path:
    return servers.basic_auth_config(tmp_path, ADMIN, ADMIN_PASSWORD)


def _auth_env(tmp_path: Path) -> dict[str, str]:
    config = _auth_config(tmp_path)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"}


def _secret_store(url: str, tmp_path: Path, monkeypatch) -> dict[str, str]:
    """As admin: a public and a secret experiment, the spec, and READ for the reader on all but the secret."""
    from mlflow.server import get_app_client

    for key, value in {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}.items():
        monkeypatch.setenv(key, value)
    admin = MlflowClient(url)
    started = int((TODAY - dt.timedelta(days=1)).timestamp() * 1000)
    public_id = admin.create_experiment("board-public")
    secret_id = admin.create_experiment("board-secret")
    public_run = make_run(admin, public_id, {"val_acc": 0.7, "latency_ms": 30, "val_recall": 0.6},
                          start_time=started, name="public-run")
    secret_run = make_run(admin, secret_id, {"val_acc": 0.95, "latency_ms": 12, "val_recall": 0.85},
                          start_time=started, name="zz-secret-run-name")
    spec_path = tmp_path / "okrs.yaml"
    spec_path.write_text(board_spec(), encoding="utf-8")
    mlflow_okr.apply_spec(spec_path, tracking_uri=url)
    mlflow_okr.add_hypothesis("Dropout lifts accuracy", hypothesis_id="dropout", kr="acc", tracking_uri=url)
    mlflow_okr.link_runs("dropout", [secret_run], arm="treatment", tracking_uri=url)
    auth = get_app_client("basic-auth", tracking_uri=url)
    auth.create_user(READER, READER_PASSWORD)
    for name in ("board-public", "okr/board", "okr/ledger"):
        experiment_id = admin.get_experiment_by_name(name).experiment_id
        auth.grant_user_permission(READER, "experiment", experiment_id, "READ")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    return {"public_run": public_run, "secret_run": secret_run, "secret_id": secret_id}


def _assert_reader_view(board: dict, status: dict, store: dict[str, str]) -> None:
    text = json.dumps(board) + json.dumps(status)
    for secret in (store["secret_run"], "zz-secret-run-name", f"/experiments/{store['secret_id']}/"):
        assert secret not in text
    krs = key_results(status)
    # The aggregates follow okr/<cycle>'s permission (as for `status`); no secret run is named.
    assert (krs["acc"]["current"], krs["acc"]["best_run_id"]) == (0.95, None)
    assert board["key_results"]["acc"]["best_run_url"] is None
    assert krs["latency"]["best_run_id"] is None and krs["recall"]["best_run_id"] is None


@pytest.mark.server
def test_okr_auth_board_shows_each_viewer_only_what_mlflow_lets_them_read(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = _auth_env(tmp_path)
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with servers.mlflow_server(backend, tmp_path / "server", app_name="okr-auth", extra_env=env) as server:
        store = _secret_store(server.url, tmp_path, monkeypatch)
        assert requests.get(server.url + "/okr/api/status", timeout=30).status_code == 401
        reader = (READER, READER_PASSWORD)
        page = requests.get(server.url + "/okr/", auth=reader, timeout=30)
        assert page.status_code == 200 and "<title>OKR board</title>" in page.text
        status = requests.get(server.url + f"/okr/api/status?as_of={AS_OF}", auth=reader, timeout=30).json()
        board = requests.get(server.url + "/okr/api/board", auth=reader, timeout=30).json()
        _assert_reader_view(board, status, store)
        reader_env = {"MLFLOW_TRACKING_USERNAME": READER, "MLFLOW_TRACKING_PASSWORD": READER_PASSWORD}
        assert status == cli_status_json(server.url, env=reader_env)
        [hypothesis] = board["hypotheses"]
        assert hypothesis["id"] == "dropout"
        # The board calls the API at the address the request arrived on, not at the Host it names.
        spoofed = requests.get(server.url + f"/okr/api/status?as_of={AS_OF}", auth=reader, timeout=30,
                               headers={"Host": f"localhost:{servers.free_port()}"})
        assert (spoofed.status_code, spoofed.json()) == (200, status)
        # The admin, on the same board, sees the secret best run.
        admin = (ADMIN, ADMIN_PASSWORD)
        admin_board = requests.get(server.url + "/okr/api/board", auth=admin, timeout=30).json()
        assert admin_board["key_results"]["acc"]["best_run_url"] == (
            f"/#/experiments/{store['secret_id']}/runs/{store['secret_run']}{RUNS_VIEW}"
        )
        assert key_results(admin_board["status"])["acc"]["best_run_id"] == store["secret_run"]
        # MLflow's UI and API still work, behind auth.
        assert requests.get(server.url + "/", auth=reader, timeout=30).status_code == 200
        search = requests.get(server.url + "/ajax-api/2.0/mlflow/experiments/search",
                              params={"max_results": 100}, auth=reader, timeout=30)
        names = {experiment["name"] for experiment in search.json()["experiments"]}
        assert names == {"board-public", "okr/board", "okr/ledger"}


@pytest.mark.server
def test_board_command_reads_with_the_callers_credentials(tmp_path, monkeypatch):
    """`mlflow-okr board` on a basic-auth server: the reader's board hides what the reader may not read."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = _auth_env(tmp_path)
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with servers.mlflow_server(backend, tmp_path / "server", app_name="basic-auth", extra_env=env) as server:
        store = _secret_store(server.url, tmp_path, monkeypatch)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", READER_PASSWORD)
        client = create_board_app(server.url, default_ui_url(server.url)).test_client()
        status = client.get(f"/api/status?as_of={AS_OF}").get_json()
        board = client.get("/api/board").get_json()
        _assert_reader_view(board, status, store)
        assert board["key_results"]["acc"]["kr_run_url"].startswith(server.url + "/#/experiments/")


def test_board_command_takes_only_web_addresses_for_the_ui(tracking_uri):
    arguments = ["board", "--ui-url", "javascript:alert(1)", "--tracking-uri", tracking_uri]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2
    assert result.output == "Error: MLflow UI URL 'javascript:alert(1)' must start with http:// or https://\n"
