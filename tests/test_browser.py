"""Real-browser end-to-end test: headless Debian Chromium driven by Playwright.

Upload RG3 (a real DICOM), draw the ROI on the canvas, confirm the clinical inputs, get the
probability and both heatmaps, download the PDF; screenshots go to $BROWSER_SHOTS or the
test's tmp folder. Skips with a printed reason where Chromium or Playwright is missing
(.ci/run installs Chromium from Debian's packages).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def _skip(reason: str) -> None:
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_release, tmp_path_factory):
    if not CHROMIUM.exists():
        _skip("Debian chromium is not installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _skip("playwright is not installed")
    tmp = tmp_path_factory.mktemp("browser")
    env = dict(os.environ, MODEL_ZOO_DIR=str(tiny_release["release"]),
               MODEL_ZOO_AUDIT_LOG=str(tmp / "audit.jsonl"))
    with streamlit_server(env, tmp) as url:
        yield {"url": url, "tmp": tmp, "audit": tmp / "audit.jsonl"}


@contextlib.contextmanager
def streamlit_server(env: dict, tmp: Path):
    """The dashboard on a free loopback port with ``env``; yields its URL, log in tmp/server.log."""
    port = _free_port()
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            proc.kill()
            pytest.fail("streamlit did not start: " + (tmp / "server.log").read_text()[-2000:])
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def _roi_caption(page) -> str:
    return page.get_by_text(re.compile(r"ROI in stored pixels")).first.inner_text()


def test_upload_draw_predict_heatmaps_pdf(server):
    from playwright.sync_api import expect, sync_playwright
    from pydicom.data import get_testdata_file

    expect.set_options(timeout=120_000)  # first render imports torch/timm: slow on 2 cores
    shots = Path(os.environ.get("BROWSER_SHOTS", server["tmp"]))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        page.set_default_timeout(120_000)
        page.goto(server["url"], wait_until="networkidle")
        expect(page.get_by_text("1. Radiograph")).to_be_visible()

        page.locator("input[type=file]").first.set_input_files(get_testdata_file("RG3_UNCR.dcm"))
        expect(page.get_by_text(re.compile(r"1760 x 1760 px DICOM"))).to_be_visible()
        before = _roi_caption(page)
        assert "0-1760" in before  # a fresh upload starts from the whole image

        # Draw the ROI: drag on the top canvas layer (display px -> stored px in the app).
        canvas = page.locator("canvas.upper-canvas").first  # fabric.js's event layer
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box and box["width"] > 200
        x0, y0 = box["x"] + box["width"] * 0.44, box["y"] + box["height"] * 0.56
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + box["width"] * 0.10, y0 + box["height"] * 0.12, steps=8)
        page.mouse.up()
        expect(page.get_by_text(re.compile(r"ROI in stored pixels")).first).not_to_have_text(before)
        after = _roi_caption(page)
        nums = [int(v) for v in re.findall(r"x (\d+)-(\d+), y (\d+)-(\d+)", after)[0]]
        # 44 %..54 % of 1760 px wide, 56 %..68 % high, within a few display pixels
        assert abs(nums[0] - 0.44 * 1760) < 20 and abs(nums[1] - 0.54 * 1760) < 20, after
        assert abs(nums[2] - 0.56 * 1760) < 20 and abs(nums[3] - 0.68 * 1760) < 20, after
        page.screenshot(path=str(shots / "01_roi_drawn.png"), full_page=True)

        page.get_by_text("I have checked age, sex and site").click()
        expect(page.get_by_text(re.compile(r"Probability of malignant: \d\.\d\d")).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"GradCAM")).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"ScoreCAM")).first).to_be_visible()
        page.wait_for_load_state("networkidle")
        expect(page.get_by_text("Running...")).to_have_count(0, timeout=180_000)
        page.screenshot(path=str(shots / "02_result.png"), full_page=True)

        with page.expect_download() as info:
            page.get_by_role("button", name="Download the PDF case report").click()
        pdf = Path(info.value.path()).read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
        browser.close()
    assert server["audit"].is_file() and server["audit"].read_text().strip()


def test_case_url_opens_directly_and_no_developer_toolbar(server):
    """A bookmarked /case opens the Case page (it was "Page not found"), "/" lands on /case,
    and clinicians get the viewer toolbar only (no "Deploy", .streamlit/config.toml)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(f"{server['url']}/case", wait_until="networkidle")
        expect(page.get_by_text("1. Radiograph")).to_be_visible()
        expect(page.get_by_text("Page not found")).to_have_count(0)
        expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
        page.goto(server["url"], wait_until="networkidle")
        expect(page.get_by_text("1. Radiograph")).to_be_visible()
        assert page.url.rstrip("/").endswith("/case"), page.url
        browser.close()
