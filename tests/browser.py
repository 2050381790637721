"""A real browser for UI tests: Debian's headless Chromium driven through its chromedriver (Selenium),
logged in to the test stack's Airflow as its admin user, as a new user would be."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lifecycle.settings import Settings
from lifecycle.stack.airflow import admin_credentials


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium; fails (never skips) naming the package when it is not installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "UI tests need Debian's chromium and chromium-driver (apt-get install, as .ci/run does)"
    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.implicitly_wait(10)
    try:
        yield d
    finally:
        d.quit()


def until(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (a page still rendering raises meanwhile)."""
    from selenium.common.exceptions import WebDriverException

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if got := check():
                return got
        except (WebDriverException, IndexError) as exc:  # the DOM changes under us while React renders
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


def airflow_login(d: Any, settings: Settings) -> str:
    """Log in through Airflow's login page; returns the UI's base URL."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    creds = admin_credentials(settings)
    assert creds, "the test stack's Airflow has no admin user"
    base = f"http://{settings.host}:{settings.airflow_port}"
    d.get(base + "/")
    d.find_element(By.NAME, "username").send_keys(creds[0])
    d.find_element(By.NAME, "password").send_keys(creds[1] + Keys.ENTER)
    until(lambda: "/auth/login" not in d.current_url, what="the Airflow home page after login")
    return base


def screenshot(d: Any, settings: Settings, name: str) -> Path:
    """Save the page under the test stack's home (``screenshots/``); the README's pictures come from here."""
    folder = settings.home / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    d.save_screenshot(str(path))
    return path


def type_into(element: Any, text: str) -> None:
    """Type ``text`` into a form field a key at a time, as a person does: Airflow's React form re-renders
    on each change and drops keys sent in one burst. Checked, and typed again if a key was lost."""
    from selenium.webdriver.common.keys import Keys

    for _ in range(3):
        element.send_keys(Keys.CONTROL + "a", Keys.DELETE)
        for ch in text:
            element.send_keys(ch)
            time.sleep(0.02)
        try:
            until(lambda: element.get_attribute("value") == text, timeout=3, what="the typed value")
            return
        except AssertionError:
            continue
    raise AssertionError(f"the field kept {element.get_attribute('value')!r}, not {text!r}")
