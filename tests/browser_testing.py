"""A real browser for the dashboard tests: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (``.ci/run`` installs both). Every wait is bounded.

Without Chromium, chromedriver or Selenium the browser tests skip; when ``CI`` is set that is a
failure instead (a browser test that silently skips in CI proves nothing). ``TM_TEST_CHROMIUM``
and ``TM_TEST_CHROMEDRIVER`` name other binaries.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

PAGE_LOAD_TIMEOUT_S = 20
SCRIPT_TIMEOUT_S = 10
DRIVER_START_TIMEOUT_S = 30


def missing(what: str) -> None:
    """Skip locally; fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: this is a failure, not a skip)", pytrace=False)
    pytest.skip(what)


def _binary(variable: str, *names: str) -> str | None:
    chosen = os.environ.get(variable)
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    return next((found for name in names if (found := shutil.which(name))), None)


class Browser:
    """One headless Chromium window, with what the tests look at: console errors, the URLs the
    page requested, screenshots at a given width, and the colour scheme."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float) -> Any:
        """Poll ``check`` every 0.1 s until it returns something truthy; fail after
        ``timeout_s`` naming ``what`` and the page's status line."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                status = self.text("#freshness")
                pytest.fail(
                    f"timed out after {timeout_s:g} s waiting for {what} (page: {status!r})"
                )
            time.sleep(0.1)

    def press(self, *keys: str, shift: bool = False) -> None:
        """Type ``keys`` into whatever has the focus, as a keyboard does (``shift`` held
        throughout). An element's own ``send_keys`` first requires that element to be
        interactable, which a page that re-renders may deny between two presses of a tab
        walk (seen once in CI: "element not interactable"); a keyboard checks nothing."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        actions = ActionChains(self.driver)
        if shift:
            actions.key_down(Keys.SHIFT)
        actions.send_keys(*keys)
        if shift:
            actions.key_up(Keys.SHIFT)
        actions.perform()

    def text(self, selector: str) -> str:
        return str(
            self.js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                selector,
            )
        )

    def console_errors(self) -> list[dict[str, Any]]:
        """Console entries of level SEVERE since the last call (CSP violations included)."""
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for since the last call (from the performance log)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(str(message["params"]["request"]["url"]))
        return urls

    def foreign_requests(self, origin: str) -> list[str]:
        """Requested URLs outside ``origin`` (scheme://host:port)."""
        want = urlsplit(origin)
        return [
            url
            for url in self.requested_urls()
            if (urlsplit(url).scheme, urlsplit(url).netloc) != (want.scheme, want.netloc)
        ]

    def set_width(self, width_px: int, height_px: int = 900) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width_px, "height": height_px, "deviceScaleFactor": 1, "mobile": False},
        )

    def set_dark(self, dark: bool) -> None:
        scheme = "dark" if dark else "light"
        self.driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
        )

    def next_frames(self) -> None:
        """Return after two animation frames (the page's resize handlers have drawn)."""
        self.driver.execute_async_script(
            "const done = arguments[0];"
            "requestAnimationFrame(() => requestAnimationFrame(() => done(true)));"
        )

    def overflows_horizontally(self) -> bool:
        return bool(self.js("return document.documentElement.scrollWidth > window.innerWidth;"))

    def screenshot(self, path: Path, width_px: int) -> tuple[int, int]:
        """A PNG of the whole page at ``width_px`` CSS pixels wide; returns its size."""
        self.set_width(width_px)
        height = int(self.js("return Math.ceil(document.documentElement.scrollHeight);"))
        self.set_width(width_px, max(height, 200))
        self.next_frames()
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return png_size(data)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@contextlib.contextmanager
def open_browser(width_px: int = 1440, height_px: int = 900) -> Iterator[Browser]:
    """A headless Chromium (quit at the end), or a skip (CI: a failure) when there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[status]' --group test)")
    chromium = _binary("TM_TEST_CHROMIUM", "chromium", "chromium-browser")
    driver_path = _binary("TM_TEST_CHROMEDRIVER", "chromedriver")
    if chromium is None or driver_path is None:
        missing(
            "no chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI and containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",  # no update checks etc. in the request log
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width_px},{height_px}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=driver_path)
    deadline = time.monotonic() + DRIVER_START_TIMEOUT_S
    driver = webdriver.Chrome(options=options, service=service)
    assert time.monotonic() < deadline, "chromedriver took too long to start"
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    driver.set_script_timeout(SCRIPT_TIMEOUT_S)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
