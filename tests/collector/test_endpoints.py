"""The collector over real HTTP on loopback, writing to the real chdb warehouse."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from crumb.privacy import BUILD_LOCK_KEY
from tests.conftest import LiveServer
from tests.tcf import make_tc_string

UA_DESKTOP = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/120.0.0.0 Safari/537.36")


def eid() -> str:
    return str(uuid.uuid4())


def beacon(site: str, *events: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"site": site, "events": list(events), **extra}


def pageview(**fields: Any) -> dict[str, Any]:
    return {"event_id": eid(), "type": "pageview", "url": "https://shop.example.com/a", **fields}


@pytest.fixture
def http(live_server: LiveServer) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, headers={"user-agent": UA_DESKTOP}) as client:
        yield client


def rows_of(live_server: LiveServer, site: str, columns: str = "*") -> list[tuple[Any, ...]]:
    live_server.flush()
    return live_server.query(f"SELECT {columns} FROM crumb.events WHERE site = {{s:String}} ORDER BY ts",
                             {"s": site})


def test_beacon_stores_an_enriched_event_with_a_signed_cookie(live_server: LiveServer, http: httpx.Client,
                                                               site: str) -> None:
    fp = uuid.uuid4().hex
    body = beacon(site, pageview(url="https://shop.example.com/sport?utm_source=nl&email=a@b.co",
                                 referrer="https://www.google.com/search?q=x", categories=["483"]), fp_id=fp)
    reply = http.post("/e", content=json.dumps(body), headers={"content-type": "text/plain",
                                                               "x-forwarded-for": "198.51.100.77"})
    assert reply.status_code == 204
    signed = reply.cookies["crumb_id"]
    assert "SameSite=None" in reply.headers["set-cookie"] and "Secure" in reply.headers["set-cookie"]
    (row,) = rows_of(live_server, site, "cookie_id, fp_id, host, path, utm_source, url, referrer_host, ip, "
                                        "device_type, browser, categories")
    assert row[0] == signed.split(".")[0] and row[1] == fp
    assert row[2:5] == ("shop.example.com", "/sport", "nl")
    assert "a@b.co" not in row[5] and "email" not in row[5]
    assert row[6:] == ("www.google.com", "198.51.100.0", "desktop", "Chrome", ["483"])


def test_pixel_always_answers_the_gif(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    good = http.get("/p.gif", params={"site": site, "event_id": eid(), "type": "signup", "pr.plan": "pro"})
    bad = http.get("/p.gif", params={"site": "", "event_id": "x"})
    for reply in (good, bad):
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/gif"
        assert len(reply.content) == 43 and reply.headers["cache-control"].startswith("no-store")
    assert rows_of(live_server, site, "type, props") == [("signup", {"plan": "pro"})]


def test_a_retried_event_is_stored_once(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    event = pageview()
    for _ in range(3):
        assert http.post("/e", json=beacon(site, event)).status_code == 204
    http.get("/p.gif", params={"site": site, "event_id": event["event_id"]})
    assert len(rows_of(live_server, site, "event_id")) == 1


def test_a_forged_cookie_is_replaced_never_stored(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    forged = "0123456789abcdef0123456789abcdef.0000000000000000"
    reply = http.post("/e", json=beacon(site, pageview()), headers={"cookie": f"crumb_id={forged}"})
    assert reply.status_code == 204
    (cookie_id,) = rows_of(live_server, site, "cookie_id")[0]
    assert cookie_id != forged[:32] and len(cookie_id) == 32
    assert reply.cookies["crumb_id"].startswith(cookie_id)


def test_malformed_first_party_ids_are_dropped(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    assert http.post("/e", json=beacon(site, pageview(), fp_id="ZZZ' OR 1=1")).status_code == 204
    assert rows_of(live_server, site, "fp_id") == [("",)]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"\xff\xfe\x00garbage", 400, "bad_json"),
        (b"[1,2]", 400, "bad_json"),
        (b'{"site": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "bad_json"),  # deeper than the parser goes
        (json.dumps({"site": "s", "events": []}).encode(), 400, "bad_field"),
        (json.dumps({"site": "bad site", "events": [{"event_id": str(uuid.uuid4()), "type": "x"}]}).encode(),
         400, "bad_site"),
        (json.dumps({"site": "s", "events": [{"event_id": "1", "type": "pageview"}]}).encode(), 400, "bad_event_id"),
        (json.dumps({"site": "s", "events": ["x"]}).encode(), 400, "bad_field"),
        (json.dumps({"site": "s", "consent": "yes", "events": [{"event_id": str(uuid.uuid4()), "type": "p"}]})
         .encode(), 400, "bad_field"),
        (json.dumps({"site": "s", "events": [{"event_id": str(uuid.uuid4()), "type": "p",
                                              "props": {"k": "v" * 70_000}}]}).encode(), 413, "too_large"),
        (b"x" * 65_537, 413, "too_large"),
    ],
)
def test_bad_beacons_get_a_clear_4xx(live_server: LiveServer, http: httpx.Client, body: bytes, status: int,
                                      code: str) -> None:
    before = live_server.stats.rejected[code]
    reply = http.post("/e", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code
    assert live_server.stats.rejected[code] == before + 1


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("site=ok&event_id=%ff%fe", "bad_encoding"),
        ("site=ok&event_id=" + "a" * 9000, "too_large"),
        ("site=a%20b", "bad_site"),
        ("site=ok&event_id=nope", "bad_event_id"),
        ("site=ok&engaged_ms=-5", "bad_field"),
        ("site=ok&type=%3Cscript%3E", "bad_type"),
    ],
)
def test_bad_pixels_get_the_gif_and_a_counted_rejection(live_server: LiveServer, http: httpx.Client, query: str,
                                                          reason: str) -> None:
    before = live_server.stats.rejected[reason]
    reply = http.get(f"/p.gif?{query}")
    assert reply.status_code == 200 and len(reply.content) == 43
    assert live_server.stats.rejected[reason] == before + 1
    metrics = http.get("/metrics").text
    assert f'crumb_events_rejected_total{{reason="{reason}"}}' in metrics


def test_without_purpose_one_no_cookie_is_set_or_read(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    refused = make_tc_string(purposes=set(), vendors=set())
    consent = {"gdpr": 1, "gdpr_consent": refused}
    reply = http.post("/e", json=beacon(site, pageview(), fp_id=uuid.uuid4().hex, consent=consent),
                      headers={"cookie": "crumb_id=whatever"})
    assert reply.status_code == 204 and "set-cookie" not in reply.headers
    assert rows_of(live_server, site, "cookie_id, fp_id, gdpr_applies, can_profile") == [("", "", 1, 0)]


def test_full_consent_allows_ids_and_profiling(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    given = make_tc_string(purposes={1, 3, 4}, vendors={live_server.settings.tcf_vendor_id})
    reply = http.post("/e", json=beacon(site, pageview(), consent={"gdpr": 1, "gdpr_consent": given}),
                      headers={"sec-gpc": "1"})
    assert reply.status_code == 204
    (row,) = rows_of(live_server, site, "cookie_id != '', consent_purposes, vendor_consent, can_profile, gpc, "
                                        "can_share")
    assert row == (True, [1, 3, 4], 1, 1, 1, 0)


def test_cors_echoes_configured_origins_with_credentials(http: httpx.Client, site: str) -> None:
    reply = http.post("/e", json=beacon(site, pageview()), headers={"origin": "https://shop.example.com"})
    assert reply.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert reply.headers["access-control-allow-credentials"] == "true"
    preflight = http.options("/e", headers={"origin": "https://shop.example.com",
                                            "access-control-request-method": "POST"})
    assert preflight.status_code == 204 and "POST" in preflight.headers["access-control-allow-methods"]


def test_optout_stops_collection_and_erases(live_server: LiveServer, http: httpx.Client, site: str) -> None:
    first = http.post("/e", json=beacon(site, pageview()))
    signed = first.cookies["crumb_id"]
    assert len(rows_of(live_server, site)) == 1
    reply = http.get("/optout", headers={"cookie": f"crumb_id={signed}"})
    assert reply.status_code == 200 and "crumb_optout=1" in reply.headers.get_list("set-cookie")[0]
    # A hit still in flight for this ID is dropped by the writer; a new one is refused at the door.
    http.post("/e", json=beacon(site, pageview()), headers={"cookie": f"crumb_id={signed}"})
    http.post("/e", json=beacon(site, pageview()), headers={"cookie": f"crumb_id={signed}; crumb_optout=1"})
    # Not while a build runs (it holds the builds' lock): the ID waits in the queue.
    build_lock = live_server.crumb.runtime.redis.lock(BUILD_LOCK_KEY, timeout=60, blocking=False)
    assert build_lock.acquire()
    try:
        assert live_server.crumb.erasures.run_once() == 0
        assert len(rows_of(live_server, site)) == 1
    finally:
        build_lock.release()
    live_server.crumb.erasures.run_once()
    cookie_id = signed.split(".")[0]
    assert rows_of(live_server, site) == []
    assert live_server.query("SELECT count() FROM crumb.erasures WHERE id = {i:String}", {"i": cookie_id}) == [(1,)]
    assert live_server.query("SELECT count() FROM crumb.optouts WHERE id = {i:String}", {"i": cookie_id}) == [(1,)]


def test_health_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").json()["status"] == "ok"
    metrics = http.get("/metrics").text
    for name in ("crumb_events_accepted_total", "crumb_events_flushed_total", "crumb_buffer_depth",
                 "crumb_spool_depth", "crumb_flush_seconds_bucket", "crumb_events_spooled_total"):
        assert name in metrics
