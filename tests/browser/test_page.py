"""The page in a real browser: headless Chromium drives `dfdc serve` on a loopback port.

Screenshots before and after each upload go to reports/browser/ (git-ignored) for eyes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dfdc.release.predict import list_videos

if TYPE_CHECKING:
    from conftest import Demo
    from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "reports" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = ("headless Chromium is needed for tests/browser: `apt-get install -y chromium chromium-driver` "
           "(Debian; `make test` does it when run as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(serve_bundle_dir: Path) -> Iterator[str]:
    """`dfdc serve` itself, in a subprocess, on a free loopback port; its base URL."""
    port = _free_port()
    cmd = [sys.executable, "-c", "from flows.cli import app; app()", "serve",
           "--model", str(serve_bundle_dir), "--host", "127.0.0.1", "--port", str(port),
           "--params", str(ROOT / "params.yaml")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"dfdc serve exited {proc.returncode}:\n{proc.stdout.read()}")
                if time.monotonic() > deadline:
                    pytest.fail("dfdc serve did not answer /healthz within 120 s")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"chromium or chromedriver not found. {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _api_score(url: str, path: Path) -> dict:
    """The JSON API's answer for the same file (multipart by hand: no extra client needed)."""
    boundary = "dfdcboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: video/mp4\r\n\r\n").encode()
    body += path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/api/score", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)


def _upload(browser: WebDriver, url: str, path: Path, before: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    browser.save_screenshot(str(SHOTS / before))
    browser.find_element(By.ID, "file").send_keys(str(path))


def test_upload_shows_the_api_probability(browser: WebDriver, server: str, demo: Demo) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    video = list_videos(demo.test_dir)[0]
    _upload(browser, server, video, "01-page-before-upload.png")
    WebDriverWait(browser, 120).until(ec.visibility_of_element_located((By.ID, "result")))
    time.sleep(0.5)  # the report frame sizes itself on load
    browser.save_screenshot(str(SHOTS / "02-verdict-after-upload.png"))
    assert browser.find_element(By.ID, "error").is_displayed() is False
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
    browser.switch_to.frame(browser.find_element(By.ID, "report"))
    try:
        shown = browser.find_element(By.ID, "probability")
        words = browser.find_element(By.ID, "verdict-words").text
        value, text = float(shown.get_attribute("data-value")), shown.text
    finally:
        browser.switch_to.default_content()
    api = _api_score(server, video)
    assert value == pytest.approx(api["label"], abs=1e-6)
    assert text == f"P(FAKE) = {api['label']:.3f}" and words == api["reading"]["verdict"]


def test_text_file_named_mp4_shows_the_reason(
    browser: WebDriver, server: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "interview.mp4"
    fake.write_text("not a video at all\n" * 50)
    _upload(browser, server, fake, "03-page-before-text-upload.png")
    error = WebDriverWait(browser, 60).until(ec.visibility_of_element_located((By.ID, "error")))
    browser.save_screenshot(str(SHOTS / "04-text-file-refused.png"))
    assert "Not scored" in error.text and "not a video" in error.text and "not_a_video" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
