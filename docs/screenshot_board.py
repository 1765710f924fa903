"""Screenshots of the live board for the README and the docs: wide (1280 px), narrow (420 px) and print.

    python docs/screenshot_board.py                      # runs `mlflow-okr demo` in a temporary directory
    python docs/screenshot_board.py --tracking-uri sqlite:///mlflow.db

Needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and selenium.
The print view is Chrome's own PDF (Page.printToPDF) turned into PNG with pdftoppm when it is
installed (poppler-utils), else a screenshot with print media emulated.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

DOCS = Path(__file__).resolve().parent
WIDE, NARROW = 1280, 420


def serve(tracking_uri: str, ui_url: str | None):
    """The board on a free 127.0.0.1 port in a background thread; returns (server, url)."""
    from werkzeug.serving import make_server

    from mlflow_okr.board.app import create_board_app

    server = make_server("127.0.0.1", 0, create_board_app(tracking_uri, ui_url), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     "--disable-dev-shm-usage", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait_for_board(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-kr]"))


def full_page_png(driver, width: int, path: Path, mobile: bool = False) -> None:
    """The whole page at `width` CSS pixels, as tall as its content."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": mobile})
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))


def print_png(driver, path: Path) -> None:
    """The page as Chrome prints it on A4, pages stacked into one PNG."""
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        full_page_png(driver, 794, path)  # A4 width at 96 dpi
        return
    pdf = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True, "paperWidth": 8.27,
                                                     "paperHeight": 11.69, "preferCSSPageSize": True})
    with tempfile.TemporaryDirectory() as work:
        pdf_path = Path(work) / "board.pdf"
        pdf_path.write_bytes(base64.b64decode(pdf["data"]))
        subprocess.run([pdftoppm, "-png", "-r", "70", str(pdf_path), str(Path(work) / "page")], check=True)
        stack_pages(sorted(Path(work).glob("page*.png")), path)


def stack_pages(pages: list[Path], path: Path, gap: int = 16) -> None:
    from PIL import Image

    images = [Image.open(page).convert("RGB") for page in pages]
    width = max(image.width for image in images) + 2 * gap
    height = sum(image.height for image in images) + gap * (len(images) + 1)
    sheet = Image.new("RGB", (width, height), (200, 204, 208))
    top = gap
    for image in images:
        sheet.paste(image, (gap, top))
        top += image.height + gap
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="the store to show (default: a fresh `mlflow-okr demo` store)")
    parser.add_argument("--ui-url", default="http://127.0.0.1:5000", help="MLflow UI base URL for links")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        tracking_uri = args.tracking_uri
        if tracking_uri is None:
            from mlflow_okr.demo import run_demo

            tracking_uri = run_demo(Path(work), report=lambda line: None).store_uri
        server, url = serve(tracking_uri, args.ui_url)
        driver = browser()
        try:
            wait_for_board(driver, url)
            full_page_png(driver, WIDE, args.out / "board-wide.png")
            full_page_png(driver, NARROW, args.out / "board-narrow.png", mobile=True)
            print_png(driver, args.out / "board-print.png")
        finally:
            driver.quit()
            server.shutdown()
    for name in ("board-wide.png", "board-narrow.png", "board-print.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
