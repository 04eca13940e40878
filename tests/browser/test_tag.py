"""collector/tag.js in headless Chromium against the live collector and its real warehouse."""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Request

from tests.browser.conftest import TAG_LOADED
from tests.conftest import LiveServer
from tests.tcf import make_tc_string

pytestmark = pytest.mark.browser

TAG = Path(__file__).resolve().parents[2] / "collector" / "tag.js"
HEX32 = re.compile(r"[0-9a-f]{32}")

Rows = list[tuple[Any, ...]]


# -- helpers ------------------------------------------------------------------------------------


def wait_rows(live_server: LiveServer, site: str, columns: str, until: Callable[[Rows], bool],
              where: str = "1", timeout_s: float = 20) -> Rows:
    """Poll the warehouse (flushing the writer each time) until `until(rows)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = events(live_server, site, columns, where)
        if until(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out waiting for rows; last seen: {rows}"
        time.sleep(0.05)  # polling: the browser sends on its own schedule


def events(live_server: LiveServer, site: str, columns: str, where: str = "1") -> Rows:
    live_server.flush()
    return live_server.query(
        f"SELECT {columns} FROM crumb.events WHERE site = {{site:String}} AND ({where}) ORDER BY ts, type",
        {"site": site},
    )


def cookie_value(page: Page, name: str) -> str:
    found = re.search(rf"(?:^|;\s*){name}=([^;]*)", page.evaluate("document.cookie"))
    return found.group(1) if found else ""


def context_cookies(context: BrowserContext) -> dict[str, str]:
    return {c["name"]: c["value"] for c in context.cookies()}


def sent_requests(page: Page, collector_url: str) -> list[Request]:
    """Every request the page makes to the collector's /e and /p.gif, as they start."""
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.url.startswith(
        (f"{collector_url}/e", f"{collector_url}/p.gif")) else None)
    return seen


def settle_page(page: Page, collector_url: str) -> None:
    """Make the tag flush now (pagehide) and wait for a later round trip from the page, so any
    beacon the tag meant to send has been started (and observed) before we look."""
    page.evaluate("dispatchEvent(new PageTransitionEvent('pagehide'))")
    page.evaluate("c => fetch(c + '/healthz', {mode: 'no-cors'}).then(() => 1)", collector_url)


# Keeps what the tag hands sendBeacon, for tests that look at the wire body itself.
BEACON_RECORDER = """<script>
  window.beacons = [];
  const sendBeacon = Navigator.prototype.sendBeacon;
  Navigator.prototype.sendBeacon = function (url, data) {
    beacons.push(data);
    return sendBeacon.call(this, url, data);
  };
</script>"""


def beacon_bodies(page: Page) -> list[dict[str, Any]]:
    return [json.loads(text) for text in page.evaluate("Promise.all(beacons.map(b => b.text()))")]


def tcf_stub(tc_string: str, purposes: list[int], answer_now: bool = True) -> str:
    """A CMP stub: answers `addEventListener` with a loaded TC string at once, or when the page
    calls `window.answerCmp()` (a user who has not decided yet)."""
    tc_data = {
        "gdprApplies": True, "tcString": tc_string, "eventStatus": "tcloaded", "listenerId": 1,
        "purpose": {"consents": {str(p): True for p in purposes}, "legitimateInterests": {}},
    }
    return f"""<script>
  window.answerCmp = () => {{}};
  window.__tcfapi = function (command, version, callback) {{
    if (command !== 'addEventListener') return;
    callback({{eventStatus: 'cmpuishown', gdprApplies: true, listenerId: 1}}, true);
    window.answerCmp = () => callback({json.dumps(tc_data)}, true);
    {"window.answerCmp();" if answer_now else ""}
  }};
</script>"""


# -- page views, events, engaged time -----------------------------------------------------------


def test_pageview_on_load_carries_both_cookie_ids(live_server: LiveServer, page: Page, context: BrowserContext,
                                                   open_tag_page: Callable[..., str], site: str,
                                                   page_errors: list[str]) -> None:
    url = open_tag_page(categories=["483", "not a category!"])
    ((kind, stored_url, path, fp_id, cookie_id, categories, source),) = wait_rows(
        live_server, site, "type, url, path, fp_id, cookie_id, categories, source", bool)
    assert (kind, stored_url, source, categories) == ("pageview", url, "beacon", ["483"])
    assert path.endswith("/index.html")
    first_party = cookie_value(page, "_crumb")
    assert HEX32.fullmatch(first_party) and fp_id == first_party
    assert HEX32.fullmatch(cookie_id) and context_cookies(context)["crumb_id"].split(".")[0] == cookie_id
    assert cookie_id != fp_id
    assert page_errors == []


def test_the_first_party_cookie_is_kept_across_page_views(live_server: LiveServer, page: Page,
                                                           open_tag_page: Callable[..., str], site: str) -> None:
    url = open_tag_page()
    first = cookie_value(page, "_crumb")
    wait_rows(live_server, site, "1", bool)  # crumb_id is set by the first answer
    page.goto(url)
    page.wait_for_function(TAG_LOADED)
    rows = wait_rows(live_server, site, "fp_id, cookie_id", lambda r: len(r) == 2, where="type = 'pageview'")
    assert cookie_value(page, "_crumb") == first and {row[0] for row in rows} == {first}
    assert len({row[1] for row in rows}) == 1


def test_custom_event_with_props(live_server: LiveServer, page: Page, open_tag_page: Callable[..., str],
                                 site: str, page_errors: list[str]) -> None:
    open_tag_page()
    page.evaluate("crumb.push(['track', 'signup', {plan: 'pro', seats: 3, trial: false, bad: {x: 1}}])")
    ((kind, props, fp_id),) = wait_rows(live_server, site, "type, props, fp_id", bool, where="type != 'pageview'")
    assert kind == "signup" and props == {"plan": "pro", "seats": "3", "trial": "false"}
    assert fp_id == cookie_value(page, "_crumb")
    assert page_errors == []


def test_commands_queued_before_the_tag_loads_go_out_in_one_batch(
    live_server: LiveServer, page: Page, open_tag_page: Callable[..., str], site: str,
) -> None:
    url = open_tag_page(head=BEACON_RECORDER, commands=[["track", "queued", {"n": 1}]])
    rows = wait_rows(live_server, site, "type, toString(event_id)", lambda r: len(r) == 2)
    (body,) = beacon_bodies(page)
    assert body["site"] == site and body["fp_id"] == cookie_value(page, "_crumb") and "consent" not in body
    pageview, queued = body["events"]
    assert UUID(pageview["event_id"]).version == 4 and abs(pageview["ts"] - time.time() * 1000) < 60_000
    assert pageview | {"event_id": "", "ts": 0} == {
        "event_id": "", "ts": 0, "type": "pageview", "url": url, "referrer": "", "categories": [],
        "engaged_ms": 0, "props": {},
    }
    assert (queued["type"], queued["props"], queued["url"]) == ("queued", {"n": 1}, url)
    assert sorted(rows) == sorted([("pageview", pageview["event_id"]), ("queued", queued["event_id"])])


def test_event_ids_without_crypto_random_uuid(live_server: LiveServer, open_tag_page: Callable[..., str],
                                              site: str) -> None:
    open_tag_page(head="<script>delete Crypto.prototype.randomUUID;</script>")  # as in an insecure context
    ((event_id,),) = wait_rows(live_server, site, "toString(event_id)", bool)
    assert UUID(event_id).version == 4 and UUID(event_id).variant == "specified in RFC 4122"


def test_spa_navigation_sends_a_pageview_and_the_previous_engagement(
    live_server: LiveServer, page: Page, open_tag_page: Callable[..., str], site: str,
) -> None:
    first_path = urlsplit(open_tag_page()).path
    ((first_id,),) = wait_rows(live_server, site, "toString(event_id)", bool)  # visible for a while by now
    page.evaluate("history.pushState({}, '', location.href)")  # same URL: nothing
    page.evaluate("history.pushState({}, '', '/next')")
    page.evaluate("new Promise(resolve => { addEventListener('popstate', resolve); history.back(); })")
    rows = wait_rows(live_server, site, "type, path, referrer_host, engaged_ms, props",
                     lambda r: [row[0] for row in r].count("pageview") == 3)
    pageviews = {row[1]: row for row in rows if row[0] == "pageview"}
    assert sorted(row[1] for row in rows if row[0] == "pageview") == sorted([first_path, first_path, "/next"])
    assert pageviews["/next"][2] == "localhost"  # an SPA page view's referrer is the previous URL
    engagements = [row for row in rows if row[0] == "engagement"]
    assert {"pageview_id": first_id} in [row[4] for row in engagements]  # sent before the navigation
    assert all(row[3] > 0 for row in engagements)


def test_spa_tracking_can_be_turned_off(live_server: LiveServer, page: Page, open_tag_page: Callable[..., str],
                                        site: str) -> None:
    open_tag_page(spa=False)
    page.evaluate("history.pushState({}, '', '/elsewhere')")
    page.evaluate("crumb.push(['track', 'marker'])")
    rows = wait_rows(live_server, site, "type, path", lambda r: any(row[0] == "marker" for row in r))
    assert [row[0] for row in rows].count("pageview") == 1


def test_engagement_on_page_close(live_server: LiveServer, page: Page, open_tag_page: Callable[..., str],
                                  site: str) -> None:
    started = time.monotonic()
    open_tag_page()
    ((pageview_id, pageview_ms),) = wait_rows(
        live_server, site, "toString(event_id), toUnixTimestamp64Milli(ts)", bool)
    visible_ms = page.evaluate("Date.now()") - pageview_ms  # at least this long visible
    page.close(run_before_unload=True)
    closed = time.monotonic()
    ((engaged_ms, props),) = wait_rows(live_server, site, "engaged_ms, props", bool, where="type = 'engagement'")
    assert props == {"pageview_id": pageview_id}
    assert visible_ms - 2 <= engaged_ms <= (closed - started) * 1000  # the whole visible time, no more
    # visibilitychange and pagehide both fire on close; the second has nothing left to report
    assert len(events(live_server, site, "1", "type = 'engagement'")) == 1


def set_visibility(page: Page, state: str) -> tuple[float, float]:
    """Pretend the tab was hidden or shown (headless pages stay visible); the page's clock just
    before and just after the tag saw it."""
    return tuple(page.evaluate("""state => {
      const before = performance.now();
      Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
      document.dispatchEvent(new Event('visibilitychange'));
      return [before, performance.now()];
    }""", state))


def test_hidden_time_is_not_engaged_time(live_server: LiveServer, page: Page, open_tag_page: Callable[..., str],
                                         site: str) -> None:
    open_tag_page()
    ((pageview_id,),) = wait_rows(live_server, site, "toString(event_id)", bool)
    set_visibility(page, "hidden")  # reports the first stretch at once
    wait_rows(live_server, site, "1", bool, where="type = 'engagement'")  # hidden all this while
    shown = set_visibility(page, "visible")
    page.wait_for_function("ms => performance.now() > ms + 50", arg=shown[1])  # a known visible stretch
    hidden_again = set_visibility(page, "hidden")
    page.evaluate("dispatchEvent(new PageTransitionEvent('pagehide'))")  # nothing new to report: nothing sent
    rows = wait_rows(live_server, site, "engaged_ms, props", lambda r: len(r) == 2, where="type = 'engagement'")
    assert all(props == {"pageview_id": pageview_id} for _, props in rows)
    second = rows[1][0]  # the second visible stretch only: the hidden time before it is not counted
    assert 50 <= hidden_again[0] - shown[1] - 1 <= second <= hidden_again[1] - shown[0] + 1
    assert len(events(live_server, site, "1", "type = 'engagement'")) == 2


def test_pageview_id_survives_whatever_digits_the_uuid_has(live_server: LiveServer, page: Page,
                                                           open_tag_page: Callable[..., str], site: str) -> None:
    digits_uuid = """<script>
      // Valid random v4 UUIDs whose 2nd and 3rd groups happen to be all digits, as 4% of them are.
      crypto.randomUUID = () => {
        const h = [...crypto.getRandomValues(new Uint8Array(11))].map(b => b.toString(16).padStart(2, '0')).join('');
        return `a${h.slice(0, 7)}-1621-4415-9${h.slice(7, 10)}-${h.slice(10)}`;
      };
    </script>"""
    open_tag_page(head=digits_uuid)
    ((pageview_id,),) = wait_rows(live_server, site, "toString(event_id)", bool)
    assert "-1621-4415-9" in pageview_id
    page.evaluate("dispatchEvent(new PageTransitionEvent('pagehide'))")
    ((props,),) = wait_rows(live_server, site, "props", bool, where="type = 'engagement'")
    assert props == {"pageview_id": pageview_id}


# -- transports --------------------------------------------------------------------------------

TRANSPORTS = {
    "beacon": "",
    "fetch": "<script>delete Navigator.prototype.sendBeacon;</script>",
    "pixel": "<script>Navigator.prototype.sendBeacon = () => false;</script>",  # a beacon the browser refused
}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_transport_delivers_events_with_ids_and_privacy_signals(
    live_server: LiveServer, page: Page, context: BrowserContext, open_tag_page: Callable[..., str],
    collector_url: str, site: str, transport: str, page_errors: list[str],
) -> None:
    signals = """<script>
      Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true});
      window.__uspapi = (command, version, callback) => callback({version: 1, uspString: '1YYN'}, true);
    </script>"""
    requests = sent_requests(page, collector_url)
    open_tag_page(head=TRANSPORTS[transport] + signals, categories=["483"])
    # The first answer sets crumb_id; events sent alongside it would each be given a new one.
    wait_rows(live_server, site, "1", bool)
    page.evaluate("crumb.push(['track', 'signup', {plan: 'pro', seats: 2}])")
    rows = wait_rows(live_server, site, "type, source, fp_id, cookie_id, props, categories, gpc, us_privacy, "
                                        "can_share, referrer_host", lambda r: len(r) == 2)
    source = "pixel" if transport == "pixel" else "beacon"
    fp_id, cookie_id = cookie_value(page, "_crumb"), context_cookies(context)["crumb_id"].split(".")[0]
    assert rows == [
        ("pageview", source, fp_id, cookie_id, {}, ["483"], 1, "1YYN", 0, ""),
        ("signup", source, fp_id, cookie_id, {"plan": "pro", "seats": "2"}, [], 1, "1YYN", 0, ""),
    ]
    kinds = {"beacon": ["ping", "ping"], "fetch": ["fetch", "fetch"], "pixel": ["image", "image"]}[transport]
    assert [r.resource_type for r in requests] == kinds  # pixel: one image request per event
    assert page_errors == []


def test_bad_commands_never_throw_into_the_page(live_server: LiveServer, page: Page,
                                                open_tag_page: Callable[..., str], site: str,
                                                page_errors: list[str]) -> None:
    open_tag_page(commands=[["nonsense"], None, "text", ["track"], ["track", "bad type!"],
                            ["segments", "not a function"], ["init", {"site": "other"}]])
    page.evaluate("""() => {
      crumb.push(['track', 'x'.repeat(65)], ['track', 'ok', {long: 'y'.repeat(600), nan: NaN, k: null}]);
      crumb.push(['segments', () => { throw new Error('callback error'); }]);
      return 1;
    }""")
    rows = wait_rows(live_server, site, "type, props", lambda r: any(row[0] == "ok" for row in r))
    assert sorted(rows) == [("ok", {"long": "y" * 512}), ("pageview", {})]
    assert page_errors == []


def test_segments_callback_gets_null_or_json(page: Page, open_tag_page: Callable[..., str]) -> None:
    open_tag_page()
    result = page.evaluate("new Promise(resolve => crumb.push(['segments', resolve]))")
    assert result is None or isinstance(result, dict)


# -- consent and opt-out -------------------------------------------------------------------------


def test_no_sending_and_no_cookie_until_the_cmp_answers_then_no_ids_without_consent(
    live_server: LiveServer, page: Page, context: BrowserContext, open_tag_page: Callable[..., str],
    collector_url: str, site: str,
) -> None:
    requests = sent_requests(page, collector_url)
    tc_string = make_tc_string(set(), set())
    open_tag_page(head=BEACON_RECORDER + tcf_stub(tc_string, [], answer_now=False))
    page.evaluate("crumb.push(['track', 'early'])")
    settle_page(page, collector_url)
    assert requests == [] and cookie_value(page, "_crumb") == ""

    page.evaluate("answerCmp()")
    rows = wait_rows(live_server, site, "type, cookie_id, fp_id, gdpr_applies, vendor_consent",
                     lambda r: len(r) == 3)
    assert sorted(rows) == [(kind, "", "", 1, 0) for kind in ("early", "engagement", "pageview")]
    assert "crumb_id" not in context_cookies(context) and "_crumb" not in context_cookies(context)
    (body,) = beacon_bodies(page)
    assert body["consent"] == {"gdpr": 1, "gdpr_consent": tc_string} and "fp_id" not in body


def test_ids_are_stored_with_tcf_consent(live_server: LiveServer, page: Page, context: BrowserContext,
                                          open_tag_page: Callable[..., str], site: str) -> None:
    vendor = live_server.settings.tcf_vendor_id
    open_tag_page(head=tcf_stub(make_tc_string({1, 3, 4}, {vendor}), [1, 3, 4]))
    ((cookie_id, fp_id, purposes, can_profile),) = wait_rows(
        live_server, site, "cookie_id, fp_id, consent_purposes, can_profile", bool)
    assert HEX32.fullmatch(cookie_id) and context_cookies(context)["crumb_id"].startswith(cookie_id + ".")
    assert fp_id == cookie_value(page, "_crumb") and HEX32.fullmatch(fp_id)
    assert (purposes, can_profile) == ([1, 3, 4], 1)


def test_opt_out_stops_collection(live_server: LiveServer, page: Page, context: BrowserContext,
                                  open_tag_page: Callable[..., str], collector_url: str, site: str) -> None:
    url = open_tag_page()
    ((fp_id,),) = wait_rows(live_server, site, "fp_id", bool)
    page.goto(f"{collector_url}/optout")
    cookies = context_cookies(context)
    assert cookies.get("crumb_optout") == "1" and "crumb_id" not in cookies

    requests = sent_requests(page, collector_url)
    page.goto(url)
    page.wait_for_function(TAG_LOADED)
    page.evaluate("crumb.push(['track', 'after_optout'])")
    settle_page(page, collector_url)
    assert requests == []  # the tag sees crumb_optout=1 and sends nothing

    # A client that ignores the cookie still gets nothing stored: the collector refuses it too.
    refused = live_server.stats.rejected["opted_out"]
    page.evaluate("""([collector, site, fp_id]) => navigator.sendBeacon(collector + '/e', JSON.stringify(
        {site, fp_id, events: [{event_id: crypto.randomUUID(), type: 'after_optout'}]}))""",
                  [collector_url, site, fp_id])
    deadline = time.monotonic() + 20
    while live_server.stats.rejected["opted_out"] == refused:
        assert time.monotonic() < deadline, "the collector did not refuse an opted-out browser"
        time.sleep(0.05)  # polling the server's counter
    # What came before the opt-out may remain until its erasure runs; nothing from after it.
    kinds = [kind for (kind,) in events(live_server, site, "type")]
    assert "after_optout" not in kinds and kinds.count("pageview") <= 1


# -- the file itself -----------------------------------------------------------------------------


def test_tag_is_small_cached_and_javascript(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as http:
        reply = http.get("/tag.js", headers={"accept-encoding": "gzip"})
        served = reply.content  # the minified form of collector/tag.js, which the other tests run
        assert reply.status_code == 200 and 0 < len(served) < len(TAG.read_bytes())
        assert len(gzip.compress(served, 9)) <= 4096
        assert "javascript" in reply.headers["content-type"] and reply.headers["content-encoding"] == "gzip"
        etag = reply.headers["etag"]
        again = http.get("/tag.js", headers={"if-none-match": etag})
        assert again.status_code == 304 and again.content == b""
