"""Real-browser tests: Playwright for Python driving Debian's Chromium (/usr/bin/chromium, installed by apt-get in
.ci/run; Playwright never downloads a browser here) against the live server (uvicorn in a thread: the admin, /v1
and static files, as in production).

Each browser script runs in a thread of its own with Playwright's sync API: the test's thread keeps no event
loop, so the Django ORM works there as in every other test. A missing Chromium fails the tests (naming what to
install); it never skips them.
"""
import os
import shutil
import threading
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (requirements-dev.txt)"
    return None


@pytest.fixture(scope="session")
def browser_ready():
    missing = chromium_missing()
    if missing:
        pytest.fail(missing)


def in_browser(script, *, viewport=VIEWPORT, timeout=300):
    """Run `script(page)` in a fresh headless Chromium page (in its own thread); returns what it returns."""
    from playwright.sync_api import sync_playwright

    outcome = {}

    def run():
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
                try:
                    page = browser.new_page(viewport=viewport)
                    page.set_default_timeout(20_000)
                    outcome["value"] = script(page)
                finally:
                    browser.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="browser", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"the browser script did not finish within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def login(page, base_url: str, username: str, password: str):
    page.goto(base_url + "/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/admin/")


def screenshot(page, name: str):
    """Save a screenshot under docs/screenshots when UPDATE_SCREENSHOTS=1 (the README shows them)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


WIDEST = """() => {
  const limit = document.documentElement.clientWidth;
  const offenders = [];
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    let clipped = false;  // inside a scroll container that is itself within the viewport: not an overflow
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if ((o === 'auto' || o === 'scroll' || o === 'hidden') && p.getBoundingClientRect().right <= limit + 1) {
        clipped = true; break;
      }
    }
    if (!clipped && box.right > limit + 1) {
      offenders.push((el.tagName + (el.id ? '#' + el.id : '') + '.' + [...el.classList].join('.')).slice(0, 80)
                     + ' right=' + Math.round(box.right));
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, limit, offenders: offenders.slice(0, 10)};
}"""
