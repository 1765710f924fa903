"""The live board in a real headless Chromium, served by `mlflow server --app-name okr`.

It shows every KR, follows a new best logged through `okr+sqlite` without a reload, links to run
pages that MLflow's UI opens, keeps hostile titles as text, keeps its filters in the URL, and
lays out at 420 px and in print.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.conftest import okr_store_registered
from tests.test_board import HOSTILE_TITLE, build_board_store

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A board store behind `mlflow server --app-name okr`: (store, server URL)."""
    work = tmp_path_factory.mktemp("board-browser")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    store = build_board_store(uri, work / "okrs.yaml")
    with servers.mlflow_server(uri, work / "server", app_name="okr") as server:
        yield store, server.url


@pytest.fixture(scope="module")
def driver():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or chromedriver is not installed: apt-get install -y chromium chromium-driver")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield browser
    browser.quit()


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait(driver, condition, seconds: float = WAIT_SECONDS):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The board re-renders on every poll: an element found just before may be gone when read.
    ignored = (StaleElementReferenceException,)
    return WebDriverWait(driver, seconds, poll_frequency=0.2, ignored_exceptions=ignored).until(condition)


def open_board(driver, url: str) -> None:
    driver.get_log("browser")  # drop what earlier pages (MLflow's UI) logged
    driver.get(url)
    wait(driver, lambda d: css(d, "[data-kr]"))


def card_ids(driver) -> list[str]:
    return [card.get_attribute("data-kr") for card in css(driver, "[data-kr]")]


def shown(driver, kr_id: str, part: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            return css(driver, f'[data-kr="{kr_id}"] .{part}')[0].text
        except StaleElementReferenceException:
            continue  # the board re-rendered between the look-up and the read: look again
    raise AssertionError(f"{kr_id} .{part} kept being re-rendered")


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_board_shows_every_objective_and_kr(served, driver):
    store, url = served
    open_board(driver, url + "/okr/")
    assert card_ids(driver) == [
        "acc", "latency", "recall", "alerting"
    ]
    assert [title.text for title in css(driver, ".objective-title")] == [
        "Ship a model users can trust", "Run it reliably"
    ]
    assert shown(driver, "acc", "kr-current") == "0.7"
    assert shown(driver, "acc", "kr-target") == "1"
    assert shown(driver, "acc", "kr-progress") == "40%"
    assert shown(driver, "acc", "kr-runs") == "2 counted · 0 pending · 1 excluded"
    assert shown(driver, "acc", "kr-breaches") == "1 guardrail breach"
    assert shown(driver, "latency", "kr-current") == "20 ms"
    assert shown(driver, "latency", "kr-target") == "10 ms"
    assert shown(driver, "alerting", "kr-status") == "achieved"
    assert len(css(driver, '[data-kr="acc"] svg.spark polyline.progress')) == 1
    assert len(css(driver, '[data-kr="acc"] svg.spark line.expected')) == 1
    assert "Pager wired to on-call" in css(driver, "#checkins")[0].text
    assert "Dropout lifts accuracy" in css(driver, '[data-hypothesis="dropout"]')[0].text
    assert console_errors(driver) == []


def test_a_script_in_a_kr_title_stays_text(served, driver):
    _, url = served
    open_board(driver, url + "/okr/")
    assert shown(driver, "recall", "kr-title") == HOSTILE_TITLE
    assert driver.execute_script("return window.pwned === undefined")
    assert driver.execute_script("return document.scripts.length") == 1
    assert css(driver, "[data-kr] img, [data-kr] script") == []


def test_links_open_the_kr_run_and_best_run_in_mlflow(served, driver):
    store, url = served
    open_board(driver, url + "/okr/")
    kr_href = css(driver, '[data-kr="acc"] a.kr-run')[0].get_attribute("href")
    best_href = css(driver, '[data-kr="acc"] a.best-run')[0].get_attribute("href")
    runs_view = "?workflowType=machine_learning"
    assert kr_href == f"{url}/#/experiments/{store.okr_experiment_id}/runs/{store.kr_runs['acc']}{runs_view}"
    best_run = store.runs["small-model"]
    assert best_href == f"{url}/#/experiments/{store.experiment_id}/runs/{best_run}{runs_view}"
    kr_run_name = MlflowClient(store.uri).get_run(store.kr_runs["acc"]).info.run_name
    for href, run_name in ((best_href, "small-model"), (kr_href, kr_run_name)):
        driver.get(href)
        wait(driver, lambda d, name=run_name: name in d.find_element("tag name", "body").text)


def test_filters_live_in_the_url(served, driver):
    from selenium.webdriver.support.ui import Select

    _, url = served
    open_board(driver, url + "/okr/")
    Select(css(driver, "#filter-status")[0]).select_by_value("achieved")
    wait(driver, lambda d: d.current_url.endswith("/okr/?status=achieved"))
    assert card_ids(driver) == ["alerting"]
    # The URL is shareable: opening it applies the same filter.
    open_board(driver, url + "/okr/?owner=ml-team")
    assert card_ids(driver) == ["acc", "latency", "recall"]
    assert Select(css(driver, "#filter-owner")[0]).first_selected_option.get_attribute("value") == "ml-team"


def test_usable_at_420_px_and_in_print(served, driver, tmp_path):
    _, url = served
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 420, "height": 900, "deviceScaleFactor": 1, "mobile": True})
    try:
        open_board(driver, url + "/okr/")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 420
        rights = driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-kr]'))"
            ".map(e => e.getBoundingClientRect().right)"
        )
        assert len(rights) == 4 and max(rights) <= 420
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert css(driver, ".filters")[0].is_displayed() is False
        assert all(card.is_displayed() for card in css(driver, "[data-kr]"))
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    pdf = base64.b64decode(driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True})["data"])
    assert pdf.startswith(b"%PDF")
    Path(tmp_path / "board.pdf").write_bytes(pdf)


@pytest.mark.skipif(not okr_store_registered(), reason="the okr+ tracking-store plugin is not registered")
def test_a_new_best_shows_within_seconds_without_a_reload(served, driver):
    from mlflow_okr.store import flush

    store, url = served
    open_board(driver, url + "/okr/")
    assert shown(driver, "acc", "kr-current") == "0.7"
    driver.execute_script("document.body.dataset.loadedOnce = 'yes'")  # gone if the page reloads
    mlflow.set_tracking_uri("okr+" + store.uri)
    try:
        mlflow.set_experiment("board-train")
        with mlflow.start_run(run_name="bigger-model"):
            mlflow.log_metrics({"val_acc": 0.8, "latency_ms": 30})
        flush()
    finally:
        mlflow.set_tracking_uri(None)
    wait(driver, lambda d: shown(d, "acc", "kr-current") == "0.8")
    assert shown(driver, "acc", "kr-progress") == "60%"
    assert shown(driver, "acc", "kr-runs") == "3 counted · 0 pending · 1 excluded"
    assert "bigger-model" in css(driver, '[data-kr="acc"] a.best-run')[0].text
    assert driver.execute_script("return document.body.dataset.loadedOnce") == "yes"
    assert console_errors(driver) == []


def organization_store(directory: Path) -> tuple[str, str]:
    """A company set of an enclosing cycle and two team sets aligned to it, with one counted run
    per team KR: (tracking URI, the run that moved team-a's KR)."""
    import datetime as dt

    from mlflow_okr.api import apply_spec
    from mlflow_okr.spec import parse_spec
    from tests.conftest import make_run

    uri = f"sqlite:///{directory / 'org.db'}"
    today = dt.datetime.now(dt.timezone.utc).date()
    around = lambda name, days: (  # noqa: E731
        f"{{name: {name}, start: {today - dt.timedelta(days=days)}, end: {today + dt.timedelta(days=days)}}}"
    )
    client = MlflowClient(uri)
    experiment = client.create_experiment("org-train")
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    moved = make_run(client, experiment, {"ctr": 0.07}, start_time=now_ms, name="ranker-v2")
    make_run(client, experiment, {"recall": 0.8}, start_time=now_ms, name="rules-v3")
    company = (
        f"version: 1\ncycle: {around('year', 90)}\nobjectives:\n  - id: grow\n    title: Grow the business\n"
        "    category: product\n    key_results:\n      - {id: revenue, source: manual, target: 100}\n"
    )
    apply_spec(parse_spec(company), tracking_uri=uri)
    teams = (("team-a", "reco", "ctr", "ctr"), ("team-b", "fraud", "recall", "recall"))
    for team, objective, kr, metric in teams:
        text = (
            f"version: 1\nteam: {team}\ncycle: {around('quarter', 45)}\n"
            f"objectives:\n  - id: {objective}\n"
            f"    title: {team} {objective}\n    category: product\n    aligns_to: [grow]\n"
            "    key_results:\n"
            f"      - {{id: {kr}, metric: {metric}, experiments: [org-train],\n"
            "         baseline: 0.05, target: 0.09}\n"
        )
        apply_spec(parse_spec(text), tracking_uri=uri)
    return uri, moved


def test_a_person_drills_from_a_company_objective_to_the_run_that_moved_a_team_kr(tmp_path, driver):
    from selenium.webdriver.common.by import By

    uri, moved = organization_store(tmp_path)
    with servers.mlflow_server(uri, tmp_path / "server", app_name="okr") as server:
        open_board(driver, server.url + "/okr/")
        headings = [heading.text for heading in css(driver, "h2.team")]
        assert headings == ["quarter · team team-a", "quarter · team team-b", "year · unnamed set"]
        company = css(driver, 'section[id="year:grow"]')[0]
        children = [link.get_attribute("href").split("#", 1)[1] for link in company.find_elements(
            By.CSS_SELECTOR, "a.aligned-child")]
        assert children == ["quarter:team-a/reco", "quarter:team-b/fraud"]
        company.find_elements(By.CSS_SELECTOR, "a.aligned-child")[0].click()
        wait(driver, lambda d: d.current_url.endswith("#quarter:team-a/reco"))
        team_objective = css(driver, 'section[id="quarter:team-a/reco"]')[0]
        assert [card.get_attribute("data-kr") for card in team_objective.find_elements(
            By.CSS_SELECTOR, "[data-kr]")] == ["ctr"]
        best = team_objective.find_elements(By.CSS_SELECTOR, '[data-kr="ctr"] a.best-run')[0]
        assert "ranker-v2" in best.text and moved in best.get_attribute("href")
        assert console_errors(driver) == []
