"""The HTML report rendered in a real headless Chromium: not blank, no console errors, no script."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlflow_okr.report import build_report, render
from tests.conftest import NOW
from tests.test_report import UI, store  # noqa: F401  (the realistic store fixture)

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CONSOLE_PROBLEM = re.compile(r"Uncaught|ERROR:CONSOLE|CONSOLE\(\d+\)|Failed to load resource|Refused to")


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)")
    return CHROMIUM


def run_chromium(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page` with network features off and console messages on stderr."""
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
        # Any request that leaves the machine fails and is logged: the page must make none.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}", *args, page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_PROBLEM.search(line)]


def screenshot_pixels(path: Path):
    from matplotlib import image

    return image.imread(str(path))


@pytest.fixture(scope="module")
def report_page(store, tmp_path_factory) -> Path:  # noqa: F811
    page = tmp_path_factory.mktemp("browser") / "report.html"
    report = build_report(store[1], cycle="2026-Q4", now=NOW, ui_url=UI)
    page.write_text(render(report, "html"), encoding="utf-8")
    return page


def test_report_renders_in_chromium_without_console_errors(chromium, report_page, tmp_path):
    png = tmp_path / "report.png"
    result = run_chromium(chromium, report_page, tmp_path / "profile", f"--screenshot={png}")
    assert png.exists(), result.stderr[-2000:]
    assert console_problems(result.stderr) == []
    pixels = screenshot_pixels(png)
    assert pixels.shape[:2] == (2000, 1280)
    colours = {tuple(pixel) for pixel in pixels[::20, ::20].reshape(-1, pixels.shape[-1]).tolist()}
    assert len(colours) > 20  # text, charts, status colours: far from a blank page
    assert pixels[:, :, :3].std() > 0.05


def test_dom_shows_user_text_as_text_and_holds_no_script(chromium, report_page, tmp_path):
    result = run_chromium(chromium, report_page, tmp_path / "profile", "--dump-dom")
    dom = result.stdout
    assert "<main>" in dom and "OKR report" in dom
    assert re.search(r"<script\b", dom, re.I) is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; learn faster" in dom
    assert dom.count('<img class="chart"') == 6  # a trend chart per KR and the effort chart
    assert console_problems(result.stderr) == []


def test_the_console_check_catches_errors_and_network_requests(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        '<!doctype html><html><body><img src="https://cdn.example.test/logo.png">'
        "<script>notDefinedAnywhere()</script></body></html>",
        encoding="utf-8",
    )
    result = run_chromium(chromium, page, tmp_path / "profile", "--dump-dom")
    problems = console_problems(result.stderr)
    assert any("notDefinedAnywhere" in line for line in problems), result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Layout: a narrow screen and paper


CHROMEDRIVER = shutil.which("chromedriver")
NARROW = 420
# Elements past the right edge of the viewport, not counting content inside a box that scrolls.
OVERFLOWING = """
const width = document.documentElement.clientWidth;
const scrollers = [...document.querySelectorAll('*')].filter(
  element => ['auto', 'scroll'].includes(getComputedStyle(element).overflowX));
return [...document.body.querySelectorAll('*')].filter(element => {
  if (scrollers.some(box => box !== element && box.contains(element))) return false;
  const box = element.getBoundingClientRect();
  return box.width > 0 && (box.right > width + 0.5 || box.left < -0.5);
}).map(element => element.tagName.toLowerCase() + '.' + element.className);
"""


@pytest.fixture
def narrow_browser(chromium, tmp_path):
    if CHROMEDRIVER is None:
        pytest.skip("chromedriver is not installed: `apt-get install -y chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={NARROW},900",
                     f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    # Desktop Chromium keeps windows at least ~500 px wide; the device metrics set the viewport.
    metrics = {"width": NARROW, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        yield driver
    finally:
        driver.quit()


def test_nothing_is_wider_than_a_420_px_screen_and_tables_scroll(narrow_browser, report_page):
    narrow_browser.get(report_page.as_uri())
    assert narrow_browser.execute_script("return window.innerWidth") == NARROW
    assert narrow_browser.execute_script(OVERFLOWING) == []
    page_width = "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    assert narrow_browser.execute_script(page_width) is True
    # Every table that does not fit scrolls inside its own box, so no column is out of reach.
    tables = narrow_browser.execute_script(
        "return [...document.querySelectorAll('table')].map(t => [getComputedStyle(t).overflowX,"
        " t.scrollWidth > t.clientWidth, t.getBoundingClientRect().right <= innerWidth])"
    )
    # objectives, three objectives' KRs, the effort table and three hypothesis groups are wider
    # than 420 px; the next cycle's four columns fit
    assert tables == [["auto", True, True]] * 8 + [["auto", False, True]]


def print_to_pdf(chromium: str, page: Path, profile: Path) -> Path:
    pdf = page.with_suffix(".pdf")
    result = run_chromium(chromium, page, profile, "--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    assert pdf.exists(), result.stderr[-2000:]
    return pdf


def pdf_pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def inked_fraction(pdf: Path, workdir: Path) -> list[float]:
    """How far down each printed page its content reaches (1.0: to the bottom margin's edge)."""
    from PIL import Image

    subprocess.run(["pdftoppm", "-png", "-r", "40", str(pdf), str(workdir / "page")], check=True)
    fractions = []
    for image in sorted(workdir.glob("page-*.png")):
        grey = Image.open(image).convert("L")
        rows = [y for y in range(grey.height) if min(grey.crop((0, y, grey.width, y + 1)).getdata()) < 240]
        fractions.append(round((max(rows) + 1) / grey.height, 2))
    return fractions


@pytest.fixture(scope="module")
def poppler():
    if shutil.which("pdfinfo") is None or shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils is not installed: `apt-get install -y poppler-utils`")


def test_print_fills_its_pages_and_prints_the_draft_okrs_yaml(chromium, poppler, report_page, tmp_path):
    pdf = print_to_pdf(chromium, report_page, tmp_path / "profile")

    assert pdf_pages(pdf) == 4
    assert all(fraction >= 0.8 for fraction in inked_fraction(pdf, tmp_path)[:-1])
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "Draft okrs.yaml" in text
    assert "status_thresholds: {on_track: 0.7, at_risk: 0.4}" in text  # the draft itself, not its summary


@pytest.fixture(scope="module")
def demo_report_page(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    from mlflow_okr.demo import run_demo

    result = run_demo(tmp_path_factory.mktemp("demo") / "run")
    page = result.directory / "report.html"
    report = build_report(MlflowClient(result.store_uri), ui_url=UI)
    page.write_text(render(report, "html"), encoding="utf-8")
    return page


def test_the_demo_report_prints_on_four_full_pages_with_its_ledger(
    chromium, poppler, demo_report_page, tmp_path
):
    pdf = print_to_pdf(chromium, demo_report_page, tmp_path / "profile")

    assert pdf_pages(pdf) == 4
    assert all(fraction >= 0.8 for fraction in inked_fraction(pdf, tmp_path)[:-1])
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "Hypotheses resolved this cycle" in text and "forest-beats-linear" in text
    assert "Draft okrs.yaml" in text
