"""The tag hands the browser's own segments to the page's ad stack: googletag targeting (GAM
key-values), Prebid's ortb2.user.data (OpenRTB), and crumb.push(['segments', cb])."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from activation.lookup import SegmentInfo, openrtb_user
from activation.store import SegmentCatalog, SegmentStore
from audiences.definitions import parse_segment
from tests.conftest import LiveServer

pytestmark = pytest.mark.browser

RULE = {"where": [{"field": "type", "op": "eq", "value": "pageview"}]}
CATALOG = SegmentCatalog.of([
    parse_segment({"id": 101, "name": "Soccer fans", "iab_audience_id": "663", "rule": RULE}),
    parse_segment({"id": 102, "name": "Car intenders", "rule": RULE}),
])

# googletag and pbjs as the page has them before GPT and Prebid load: command queues. The test
# runs the queued functions, then reads what they set.
AD_STACK = """<script>
  window.targeting = {};
  window.googletag = {cmd: [], pubads: () => ({setTargeting: (k, v) => { window.targeting[k] = v; }})};
  window.pbjsConfig = {ortb2: {site: {name: 'shop'}, user: {data: [{name: 'other', segment: [{id: '9'}]}]}}};
  window.pbjs = {que: [], getConfig: k => window.pbjsConfig[k],
                 setConfig: c => Object.assign(window.pbjsConfig, c)};
</script>"""
RUN_QUEUES = "() => { googletag.cmd.forEach(f => f()); pbjs.que.forEach(f => f()); }"


@pytest.fixture
def store(live_server: LiveServer) -> Iterator[SegmentStore]:
    store = live_server.crumb.activation.store
    before, store.catalog = store.catalog, CATALOG
    yield store
    store.catalog = before


def own_cookie_id(context: BrowserContext, live_server: LiveServer) -> str:
    """The crumb_id the first page view got, verified."""
    deadline = time.monotonic() + 15
    while True:
        signed = {c["name"]: c["value"] for c in context.cookies()}.get("crumb_id", "")
        cookie_id = live_server.crumb.activation.signer.verify(signed) if signed else None
        if cookie_id:
            return cookie_id
        assert time.monotonic() < deadline, "the page view set no crumb_id"
        time.sleep(0.05)  # polling: the browser sends on its own schedule


def seeded_page(page: Page, context: BrowserContext, live_server: LiveServer, store: SegmentStore,
                open_tag_page: Callable[..., str], **init: Any) -> str:
    """First visit (gets a crumb_id), then the store learns its segments; returns the cookie ID."""
    open_tag_page(head=AD_STACK, **init)
    cookie_id = own_cookie_id(context, live_server)
    store.put([(cookie_id, [101, 102])])
    return cookie_id


def test_tag_sets_gam_targeting_and_prebid_ortb2(
    page: Page, context: BrowserContext, live_server: LiveServer, store: SegmentStore,
    open_tag_page: Callable[..., str], page_errors: list[str],
) -> None:
    seeded_page(page, context, live_server, store, open_tag_page)
    open_tag_page(head=AD_STACK)  # the next page view: the lookup now finds segments
    page.wait_for_function("googletag.cmd.length > 0 && pbjs.que.length > 0")
    page.evaluate(RUN_QUEUES)
    assert page.evaluate("window.targeting") == {"crumb_seg": ["101", "102"]}
    ortb2 = page.evaluate("pbjsConfig.ortb2")
    ours = openrtb_user([SegmentInfo(101, "Soccer fans", "663"), SegmentInfo(102, "Car intenders")])
    assert ortb2["site"] == {"name": "shop"}  # the page's own config is kept
    assert ortb2["user"]["data"] == [{"name": "other", "segment": [{"id": "9"}]}, *ours["user"]["data"]]
    assert page_errors == []


def test_segments_command_answers_the_browsers_segments(
    page: Page, context: BrowserContext, live_server: LiveServer, store: SegmentStore,
    open_tag_page: Callable[..., str],
) -> None:
    seeded_page(page, context, live_server, store, open_tag_page)
    answer = page.evaluate("() => new Promise(done => crumb.push(['segments', done]))")
    assert answer["segments"] == [{"id": 101, "name": "Soccer fans"}, {"id": 102, "name": "Car intenders"}]


def test_no_lookups_with_segments_false_and_none_after_opt_out(
    page: Page, context: BrowserContext, live_server: LiveServer, store: SegmentStore,
    open_tag_page: Callable[..., str], collector_url: str,
) -> None:
    seeded_page(page, context, live_server, store, open_tag_page)
    lookups: list[str] = []
    page.on("request", lambda r: lookups.append(r.url) if "/v1/segments" in r.url else None)
    open_tag_page(head=AD_STACK, segments=False)
    page.evaluate("c => fetch(c + '/healthz', {mode: 'no-cors'}).then(() => 1)", collector_url)
    assert lookups == [] and page.evaluate("googletag.cmd.length + pbjs.que.length") == 0
    context.add_cookies([{"name": "crumb_optout", "value": "1", "url": collector_url}])
    assert page.evaluate("() => new Promise(done => crumb.push(['segments', done]))") is None
