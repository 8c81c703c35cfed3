"""The web console in a real browser: Debian's chromium driven by Playwright.

`browser` (one chromium per test module) and `ui(server)` (a fresh browser
context, so fresh cookies, per call) are what test_console.py uses. Every
page the helper lands on is checked as it is reached:

* every input, select and textarea (but hidden inputs) has a `<label for>`
  with text, or an `aria-label`;
* no inline script: no `<script>` without `src`, no `on*=` handler
  attribute, no `style=` attribute, and the browser reported no
  Content-Security-Policy violation;
* the document's answer carried the strict Content-Security-Policy.

Its HTML is kept (`Console.seen`) so a test can look for a secret in every
page a person saw.

Playwright cannot download a browser here: it drives the distribution's
chromium (`apt-get install chromium`, done by scripts/test.sh), as root
without chromium's sandbox.
"""

from __future__ import annotations

import re
import os
import shutil
from pathlib import Path

import pytest
import requests

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
# Where the screenshots go: target/console-screenshots, or the directory
# ATREST_CONSOLE_SCREENSHOTS names (`=docs/console` refreshes the README's).
SCREENSHOTS = Path(os.environ.get("ATREST_CONSOLE_SCREENSHOTS")
                   or Path(__file__).resolve().parents[2] / "target" / "console-screenshots")

# What every console answer's Content-Security-Policy must say.
CSP_MUST = ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
            "object-src 'none'", "form-action 'self'")

_CHECK_JS = """
() => {
  const unlabelled = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    const aria = (el.getAttribute('aria-label') || '').trim();
    let label = null;
    if (el.id) label = document.querySelector('label[for="' + CSS.escape(el.id) + '"]');
    const text = label ? label.textContent.trim() : '';
    if (!text && !aria) unlabelled.push(el.outerHTML.slice(0, 160));
  }
  const inline = [];
  for (const s of document.querySelectorAll('script')) {
    if (!s.getAttribute('src')) inline.push(s.outerHTML.slice(0, 160));
  }
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      const n = a.name.toLowerCase();
      if (n.startsWith('on') || n === 'style') inline.push(el.tagName + ' ' + n + '=' + a.value.slice(0, 60));
    }
  }
  return {unlabelled, inline, html: document.documentElement.outerHTML};
}
"""


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the module's tests."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Console:
    """One person's browser (its own cookies) on one server's console."""

    def __init__(self, browser, server):
        self.server = server
        self.context = browser.new_context(viewport=VIEWPORT, base_url=server.url)
        self.context.set_default_timeout(20_000)
        self.page = self.context.new_page()
        self.seen: list[str] = []
        self.documents: list[tuple[str, int, dict]] = []
        self.csp_violations: list[str] = []
        self.checks = True
        self.page.on("console", self._on_console)
        self.page.on("response", self._on_response)

    def _on_console(self, msg) -> None:
        if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text:
            self.csp_violations.append(msg.text)

    def _on_response(self, resp) -> None:
        if resp.request.resource_type == "document":
            self.documents.append((resp.url, resp.status, dict(resp.headers)))

    def close(self) -> None:
        self.context.close()

    # -- navigation --------------------------------------------------------
    def url(self, path: str) -> str:
        return self.server.url + path

    def goto(self, path: str):
        resp = self.page.goto(self.url(path))
        self.check()
        return resp

    def click(self, name: str, role: str = "button"):
        """Clicks the one `role` named exactly `name` and checks where it lands."""
        self.page.get_by_role(role, name=name, exact=True).click()
        self.page.wait_for_load_state()
        self.check()

    def path(self) -> str:
        return re.sub(r"^https?://[^/]+", "", self.page.url)

    # -- what the page shows -----------------------------------------------
    def text(self) -> str:
        return self.page.inner_text("main")

    def alerts(self) -> list[str]:
        return [t.strip() for t in self.page.locator("[role=alert]").all_inner_texts()]

    def flash(self) -> str:
        loc = self.page.locator("p.flash")
        return loc.inner_text().strip() if loc.count() else ""

    def value(self, selector: str) -> str:
        return self.page.input_value(selector)

    def csrf(self) -> str:
        return self.page.locator("input[name=csrf]").first.get_attribute("value")

    def session_cookie(self) -> dict | None:
        for c in self.context.cookies():
            if c["name"] == "atrest-console":
                return c
        return None

    # -- checks --------------------------------------------------------------
    def check(self) -> None:
        """Labels, no inline script, CSP: on the page just reached."""
        got = self.page.evaluate(_CHECK_JS)
        self.seen.append(got["html"])
        if not self.checks:
            return
        where = self.page.url
        assert got["unlabelled"] == [], f"{where}: form fields without a label: {got['unlabelled']}"
        assert got["inline"] == [], f"{where}: inline script or style: {got['inline']}"
        assert self.csp_violations == [], f"{where}: CSP violations: {self.csp_violations}"
        assert self.documents, f"{where}: no document answer seen"
        url, status, headers = self.documents[-1]
        csp = headers.get("content-security-policy", "")
        for part in CSP_MUST:
            assert part in csp, f"{url} ({status}): Content-Security-Policy {csp!r} lacks {part!r}"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp

    # -- sign-in -------------------------------------------------------------
    def sign_in(self, creds: tuple[str, str], expect: str | None = "/console/keys") -> None:
        """Signs in through the form; lands on `expect` unless it is None."""
        if "/console/sign-in" not in self.page.url:
            self.goto("/console/sign-in")
        self.page.fill("#access_key_id", creds[0])
        self.page.fill("#secret_access_key", creds[1])
        self.click("Sign in")
        if expect is not None:
            assert self.path().startswith(expect), (self.page.url, self.text())

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def ui(browser):
    """`ui(server)`: a fresh browser context on `server`'s console; all are
    closed at teardown."""
    made: list[Console] = []

    def make(server) -> Console:
        c = Console(browser, server)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            try:
                c.close()
            except Exception:  # the browser may be gone already
                pass


def http_session(server, cookie: str | None = None) -> requests.Session:
    """A `requests` session for the console, with the session cookie if given."""
    s = requests.Session()
    s.trust_env = False
    if cookie is not None:
        s.cookies.set("atrest-console", cookie, path="/console/")
    return s
