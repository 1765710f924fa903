"""MLflow's own UI, in a real headless Chromium against a real `mlflow server`, showing the OKR notes."""

from __future__ import annotations

import shutil

import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import api, mlflow_ui, state
from tests.conftest import NOW, make_run
from tests.servers import mlflow_server
from tests.test_mlflow_ui import SPEC

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PAGE_SECONDS = 60
EXPAND_DESCRIPTION = '[data-component-id="mlflow.experiment.metadata_editor.expand_button"]'


@pytest.fixture(scope="module")
def okr_ui(tmp_path_factory):
    """A synced cycle with its notes written, served by `mlflow server`: (url, published, experiments)."""
    workdir = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiments = {name: client.create_experiment(name) for name in ("reco-a", "reco-b", "serving")}
    make_run(client, experiments["reco-a"], {"f1": 0.8}, {"role": "baseline"})
    make_run(client, experiments["reco-a"], {"online_ctr": 0.065, "p99_latency_ms": 40, "f1": 0.82})
    make_run(client, experiments["reco-a"], {"online_ctr": 0.07, "p99_latency_ms": 60})
    make_run(client, experiments["reco-b"], {"f1": 0.81})
    make_run(client, experiments["serving"], {"p99_latency_ms": 125})
    spec_path = workdir / "okrs.yaml"
    spec_path.write_text(SPEC, encoding="utf-8")
    api.apply_spec(spec_path, tracking_uri=uri)
    status = api.sync(uri, cycle="2026-Q4", now=NOW).status
    published = state.load_published(client, "2026-Q4")
    mlflow_ui.refresh_ui_notes(client, published, status)
    with mlflow_server(uri, workdir) as server:
        yield server.url, published, experiments


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or chromedriver is missing: `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # A fresh profile each test: nothing remembered from an earlier visit picks the view.
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1400", profile):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver, text: str) -> str:
    """The page's visible text once it contains `text`."""
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(driver):
        body = driver.find_element("tag name", "body").text
        return body if text in body else False

    return WebDriverWait(driver, PAGE_SECONDS, poll_frequency=0.2).until(shown, f"no {text!r} on the page")


def open_ui(driver, url: str, link: str) -> None:
    driver.get(f"{url}/{link}")


def test_the_okr_experiment_opens_in_the_runs_view(okr_ui, browser):
    url, published, _ = okr_ui
    open_ui(browser, url, mlflow_ui.experiment_link(published.experiment_id))

    page = wait_for_text(browser, "6 matching runs")  # 2 objectives, 4 KRs

    assert "/runs?" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    headings = [element.text for element in browser.find_elements("css selector", "h2")]
    assert "Runs" in headings
    for genai_only in ("Detect Issues", "Observability", "Token Usage"):
        assert genai_only not in page


def test_the_experiment_description_lists_every_kr_with_its_status(okr_ui, browser):
    url, published, _ = okr_ui
    open_ui(browser, url, mlflow_ui.experiment_link(published.experiment_id))
    wait_for_text(browser, "OKRs 2026-Q4: grade 0.37")
    browser.find_element("css selector", EXPAND_DESCRIPTION).click()
    wait_for_text(browser, "owner reco_team")

    rows = [
        [cell.text for cell in row.find_elements("css selector", "td")]
        for row in browser.find_elements("css selector", "table tbody tr")
        if row.find_elements("css selector", "td a[href*='/runs/']")
    ]
    assert [row[:5] for row in rows] == [
        ["● on-track", "ctr Raise CTR [from 5% to 8%]", "50%", "0.065 → 0.08", "1"],
        ["● on-track", "f1", "50%", "0.82 → 0.84", "3"],
        ["● on-track", "latency", "50%", "125 ms → 50 ms", "1"],
        ["○ not-started", "alerting-live", "0%", "— → 1", "—"],
    ]
    assert all(row[5].startswith("run ") for row in rows[:3]) and rows[3][5] == "—"
    assert len(rows) == len(published.kr_runs)
    page = browser.find_element("tag name", "body").text
    assert "Improve *recommendation* relevance <script>alert(1)</script>" in page
    scripts = "return [...document.scripts].filter(s => s.textContent.includes('alert(1)')).length"
    assert browser.execute_script(scripts) == 0


def test_a_kr_link_opens_its_run_in_the_runs_view(okr_ui, browser):
    url, published, experiments = okr_ui
    open_ui(browser, url, mlflow_ui.experiment_link(published.experiment_id))
    wait_for_text(browser, "OKRs 2026-Q4: grade 0.37")
    link = browser.find_element("css selector", f"a[href*='{published.kr_runs['ctr']}']")
    kr_run = mlflow_ui.run_link(published.experiment_id, published.kr_runs["ctr"])
    assert link.get_attribute("href") == f"{url}/{kr_run}"

    browser.get(link.get_attribute("href"))
    wait_for_text(browser, "Show more")
    show_more = "//*[self::button or @role='button'][normalize-space()='Show more']"
    browser.find_element("xpath", show_more).click()
    page = wait_for_text(browser, "1 counted, 0 pending, 1 excluded")

    assert "Raise CTR [from 5% to 8%]" in page
    assert "Observability" not in page  # MLflow's GenAI sidebar
    counted = browser.find_element("link text", "1 counted, 0 pending, 1 excluded").get_attribute("href")
    browser.get(counted)
    wait_for_text(browser, "1 matching run")
    assert f"/experiments/{experiments['reco-a']}/runs" in browser.current_url
