"""Browser fixtures: one headless Debian Chromium per session, a fresh context per test, and a
tiny page server on `localhost` whose pages install the tag from the live collector.

Page and collector are both reached as `localhost` (on different ports), so they are same-site:
the collector's cookies are sent with the tag's beacons, and Chromium treats localhost as secure,
so `Secure` cookies work over plain http.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import LiveServer

CHROMIUM = "/usr/bin/chromium"
TAG_LOADED = "window.crumb && !Array.isArray(window.crumb)"  # the tag has replaced the command queue
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


class PageServer:
    """Serves registered HTML documents; every path under a document's prefix answers with it,
    so a reload after `history.pushState` still finds the page."""

    def __init__(self) -> None:
        self._pages: dict[str, bytes] = {}
        pages = self._pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                body = pages.get(self.path.split("/")[1] if self.path.count("/") > 1 else "")
                self.send_response(200 if body else 404)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="page-server", daemon=True)
        self._thread.start()

    def add(self, html: str) -> str:
        """Publish a document; its URL."""
        key = "p" + uuid.uuid4().hex[:12]  # never all digits: the collector redacts 7+ digit runs as phones
        self._pages[key] = html.encode()
        return f"{self.url}/{key}/index.html"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def tag_page_html(site: str, collector: str, head: str = "", commands: Sequence[Any] = (), **init: Any) -> str:
    """The README's install snippet, with optional extra <head> markup and commands queued
    before the tag loads."""
    options = json.dumps({"site": site, "collector": collector, **init})
    queued = "".join(f"crumb.push({json.dumps(command)});" for command in commands)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Crumb test page</title>
{head}
<script>
  window.crumb = window.crumb || [];
  crumb.push(['init', {options}]);
  {queued}
</script>
<script async src="{collector}/tag.js"></script>
</head><body><h1>Crumb test page</h1><p>Some content.</p></body></html>"""


@pytest.fixture(scope="session")
def collector_url(live_server: LiveServer) -> str:
    """The live collector under the page's host name, so page and collector are same-site."""
    return live_server.url.replace("127.0.0.1", "localhost")


@pytest.fixture(scope="package")
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


# Package scope, not session: Playwright's sync API keeps an event loop running in this thread
# while it is open, and tests elsewhere that call asyncio.run() would fail after ours.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def page_errors(page: Page) -> list[str]:
    """Uncaught errors of the page: the tag must never throw into it."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


@pytest.fixture
def open_tag_page(page: Page, page_server: PageServer, collector_url: str, site: str) -> Callable[..., str]:
    """Publish a page carrying the tag for this test's site, open it, wait for the tag to run."""

    def open_page(head: str = "", commands: Sequence[Any] = (), **init: Any) -> str:
        url = page_server.add(tag_page_html(site, collector_url, head, commands, **init))
        page.goto(url)
        page.wait_for_function(TAG_LOADED)
        return url

    return open_page
