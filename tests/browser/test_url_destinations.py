"""URL destinations in headless Chromium: the tag's sync frame fires each due destination's pixel
at a local fake receiver, which records exactly what arrived — once per interval, and never
under GPC or without consent for the destination's vendor."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activation.destinations.config import UrlConfig
from collector.endpoints import GIF
from collector.identity import new_cookie_id
from tests.activation.test_url_destinations import configured
from tests.browser.test_idsync import sync_frame_images
from tests.browser.test_tag import tcf_stub
from tests.conftest import TEST_VENDOR_ID, LiveServer
from tests.loopback import LoopbackServer
from tests.tcf import make_tc_string

pytestmark = pytest.mark.browser

VENDOR = 755
OURS_ONLY = make_tc_string({1, 3, 4}, {TEST_VENDOR_ID})
BOTH = make_tc_string({1, 3, 4}, {TEST_VENDOR_ID, VENDOR})


class Receiver:
    """The destination's pixel server: records every hit's query, answers a 1×1 GIF."""

    def __init__(self) -> None:
        self.hits: list[dict[str, str]] = []
        self.server = LoopbackServer(Starlette(routes=[Route("/px", self._pixel, methods=["GET"])]))

    async def _pixel(self, request: Request) -> Response:
        self.hits.append(dict(request.query_params))
        return Response(GIF, media_type="image/gif", headers={"cache-control": "no-store"})


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop()


@pytest.fixture
def destination(live_server: LiveServer, receiver: Receiver) -> Iterator[UrlConfig]:
    receiver.hits.clear()
    config = UrlConfig(
        name=f"px-{uuid.uuid4().hex[:8]}", type="url", gvl_id=VENDOR, segments={101: "soccer", 102: "golf"},
        template=f"{receiver.server.url}/px?uid=${{CRUMB_ID}}&seg=${{SEGMENTS}}&gdpr=${{GDPR}}"
                 "&gdpr_consent=${GDPR_CONSENT_755}",
    )
    with configured(live_server, [config]):
        yield config


@pytest.fixture
def browser_id(live_server: LiveServer, context: BrowserContext, collector_url: str) -> str:
    """A browser already holding a crumb_id, whose segments are in the store."""
    cookie_id = new_cookie_id()
    signed = live_server.crumb.activation.idsync.signer.sign(cookie_id)
    context.add_cookies([{"name": "crumb_id", "value": signed, "url": collector_url}])
    live_server.crumb.activation.store.put([(cookie_id, [101, 102, 999])])
    return cookie_id


def test_tag_fires_the_pixel_once_with_its_macros_filled(
    page: Page, open_tag_page: Callable[..., str], receiver: Receiver, destination: UrlConfig, browser_id: str,
    page_errors: list[str],
) -> None:
    open_tag_page()
    assert sync_frame_images(page) == 1
    assert receiver.hits == [{"uid": browser_id, "seg": "soccer,golf", "gdpr": "0", "gdpr_consent": ""}]

    open_tag_page()  # the next page, within the interval
    assert sync_frame_images(page) == 0
    assert len(receiver.hits) == 1
    assert page_errors == []


@pytest.mark.parametrize(("tc_string", "gpc", "fired"), [
    (OURS_ONLY, False, False),  # no consent for the destination's vendor
    (BOTH, True, False),  # Global Privacy Control
    (BOTH, False, True),  # the control: the same page, consent for both
])
def test_tag_fires_only_with_the_vendors_consent_and_without_gpc(
    page: Page, context: BrowserContext, open_tag_page: Callable[..., str], receiver: Receiver,
    destination: UrlConfig, browser_id: str, tc_string: str, gpc: bool, fired: bool,
) -> None:
    if gpc:
        context.set_extra_http_headers({"Sec-GPC": "1"})
    open_tag_page(head=tcf_stub(tc_string, [1, 3, 4]))
    assert sync_frame_images(page) == int(fired)
    expected = {"uid": browser_id, "seg": "soccer,golf", "gdpr": "1", "gdpr_consent": tc_string}
    assert receiver.hits == ([expected] if fired else [])
