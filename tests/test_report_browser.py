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
    assert dom.count('<img class="chart"') == 5
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
