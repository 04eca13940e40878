"""URL destinations: the filled pixel URLs, who may fire them, the per-browser interval, and the
ID sync frame that carries them (real Redis, the live server over loopback HTTP)."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from activation.destinations.config import DestinationConfigError, UrlConfig, load_destinations
from activation.idsync import SyncSignals
from activation.store import SegmentCatalog
from activation.url_destinations import UrlDestinations, refusal, url_destination_urls
from audiences.definitions import parse_segment
from collector.identity import new_cookie_id
from crumb.privacy import erase
from tests.conftest import TEST_VENDOR_ID, LiveServer
from tests.tcf import make_tc_string

VENDOR = 755
BOTH = make_tc_string({1, 3, 4}, {TEST_VENDOR_ID, VENDOR})
TEMPLATE = ("https://px.example/seg?uid=${CRUMB_ID}&s=${SEGMENTS}&gdpr=${GDPR}&gdpr_consent=${GDPR_CONSENT_755}"
            "&us=${US_PRIVACY}")


def url_config(name: str = "", **fields: Any) -> UrlConfig:
    values = {"name": name or f"px-{uuid.uuid4().hex[:8]}", "type": "url", "template": TEMPLATE, "gvl_id": VENDOR,
              "segments": {101: "soccer", 102: "tennis", 103: "golf"}}
    return UrlConfig(**{**values, **fields})


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- filling ------------------------------------------------------------------------------------


def test_macros_are_filled_and_encoded_server_side() -> None:
    signals = SyncSignals(gdpr="1", gdpr_consent=BOTH, us_privacy="1YNN")
    (url,) = url_destination_urls([url_config()], "a b&c", [102, 101, 999], signals)
    assert url == f"https://px.example/seg?uid=a%20b%26c&s=soccer,tennis&gdpr=1&gdpr_consent={BOTH}&us=1YNN"
    assert url_destination_urls([url_config()], "x", [999], signals) == []  # none of its segments held
    assert url_destination_urls([url_config(enabled=False)], "x", [101], signals) == []


def test_yaml_configures_url_destinations(tmp_path: Path) -> None:
    (tmp_path / "px.yaml").write_text(
        "name: px\ntype: url\ntemplate: https://px.example/s?u=${CRUMB_ID}&g=${GDPR_CONSENT_755}\n"
        "gvl_id: 755\ninterval_hours: 12\nsegments: {101: soccer}\n")
    (config,) = load_destinations(tmp_path)
    assert (config.gvl_id, config.interval_hours, config.ids) == (755, 12, "cookie")


@pytest.mark.parametrize(("fields", "message"), [
    ({"template": "https://px.example/?u=${EMAIL}"}, "unknown macro"),
    ({"template": "https://px.example/?c=${GDPR_CONSENT_32}"}, "GVL ID 755"),
    ({"template": "https://px.example/?c=${GDPR_CONSENT_755}", "gvl_id": None}, "GVL ID"),
    ({"template": "http://px.example/?u=${CRUMB_ID}"}, "template"),
    ({"ids": "partner"}, "ids"),
    ({"interval_hours": 0}, "interval_hours"),
])
def test_bad_url_destinations_are_refused_with_the_field(tmp_path: Path, fields: dict[str, Any],
                                                         message: str) -> None:
    document = {"name": "px", "type": "url", "template": "https://px.example/?u=${CRUMB_ID}", "gvl_id": 755,
                "segments": {101: "soccer"}, **fields}
    (tmp_path / "bad.yaml").write_text("\n".join(f"{k}: {v if v is not None else 'null'}"
                                                 for k, v in document.items()))
    with pytest.raises(DestinationConfigError, match=rf"bad\.yaml.*{message}"):
        load_destinations(tmp_path)


def test_plain_http_is_for_loopback_receivers_only() -> None:
    assert url_config(template="http://127.0.0.1:8080/px?u=${CRUMB_ID}").template.startswith("http://")


# -- who may fire -------------------------------------------------------------------------------


@pytest.mark.parametrize(("cookie", "signals", "gvl_id", "refused"), [
    (True, SyncSignals(), VENDOR, ""),
    (True, SyncSignals(gdpr="0"), None, ""),  # no vendor ID needed where GDPR does not apply
    (False, SyncSignals(), VENDOR, "no_id"),
    (True, SyncSignals(opted_out=True), VENDOR, "no_consent"),
    (True, SyncSignals(gpc=True), VENDOR, "no_consent"),
    (True, SyncSignals(us_privacy="1YYN"), VENDOR, "no_consent"),
    (True, SyncSignals(gdpr="1"), VENDOR, "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1, 3, 4}, {VENDOR})), VENDOR, "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1}, {TEST_VENDOR_ID, VENDOR})), VENDOR, "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1, 3, 4}, {TEST_VENDOR_ID})), VENDOR,
     "no_vendor_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=BOTH), None, "no_vendor_consent"),  # GDPR applies, vendor unknown
    (True, SyncSignals(gdpr="1", gdpr_consent=BOTH), VENDOR, ""),
    (True, SyncSignals(gdpr="1", gdpr_consent=BOTH, gpc=True), VENDOR, "no_consent"),
])
def test_consent_refusals(cookie: bool, signals: SyncSignals, gvl_id: int | None, refused: str) -> None:
    template = "https://px.example/?u=${CRUMB_ID}"
    config = url_config(template=template, gvl_id=gvl_id)
    assert refusal(config, new_cookie_id() if cookie else None, signals, TEST_VENDOR_ID) == refused


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pixels(live_server: LiveServer, clock: Clock) -> UrlDestinations:
    held = {"segments": [101]}
    return UrlDestinations([], live_server.crumb.runtime.redis, lambda _id: held["segments"], TEST_VENDOR_ID, clock)


def test_due_refused_fires_nothing_and_claims_nothing(pixels: UrlDestinations) -> None:
    config = url_config()
    pixels.configure([config])
    cookie_id = new_cookie_id()
    assert pixels.due(cookie_id, SyncSignals(gpc=True)) == []
    assert pixels.due(cookie_id, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1, 3, 4}, {TEST_VENDOR_ID}))) == []
    assert len(pixels.due(cookie_id, SyncSignals())) == 1  # refusals did not use up the interval


def test_each_destination_fires_once_per_interval_per_browser(
    pixels: UrlDestinations, clock: Clock, live_server: LiveServer,
) -> None:
    daily, hourly = url_config(), url_config(interval_hours=1)
    pixels.configure([daily, hourly, url_config(enabled=False)])
    first, second = new_cookie_id(), new_cookie_id()
    assert len(pixels.due(first, SyncSignals())) == 2
    assert pixels.due(first, SyncSignals()) == []
    assert len(pixels.due(second, SyncSignals())) == 2  # per browser
    clock.now += 3601
    assert [u.split("uid=")[1][:32] for u in pixels.due(first, SyncSignals())] == [first]  # the hourly one
    clock.now += 23 * 3600
    assert len(pixels.due(first, SyncSignals())) == 2
    erase(live_server.client, live_server.crumb.runtime.redis, [second], reason="test")
    assert len(pixels.due(second, SyncSignals())) == 2  # erasure forgets the firings with the syncs


# -- the frame ----------------------------------------------------------------------------------


@contextlib.contextmanager
def configured(live_server: LiveServer, configs: list[UrlConfig],
               paused: tuple[int, ...] = ()) -> Iterator[UrlDestinations]:
    """The server's URL destinations, and its catalog of segments 101-103 (active unless `paused`):
    a pixel carries the segments a lookup answers."""
    pixels, store = live_server.crumb.activation.url_destinations, live_server.crumb.activation.store
    before, catalog = pixels.configs, store.catalog
    pixels.configure(configs)
    store.catalog = SegmentCatalog.of([parse_segment({
        "id": i, "name": f"s{i}", "status": "paused" if i in paused else "active", "rule": {"where": []}})
        for i in (101, 102, 103)])
    try:
        yield pixels
    finally:
        pixels.configure(before)
        store.catalog = catalog


def test_a_paused_segment_is_not_fired(live_server: LiveServer) -> None:
    # Its memberships stay until the next build exits them: lookups hid it, pixels fired it.
    cookie_id = new_cookie_id()
    live_server.crumb.activation.store.put([(cookie_id, [101, 103])])
    with configured(live_server, [url_config(template="https://px.example/seg?uid=${CRUMB_ID}&s=${SEGMENTS}&x=1",
                                             gvl_id=None)], paused=(103,)) as pixels:
        (url,) = pixels.due(cookie_id, SyncSignals())
    assert f"uid={cookie_id}&s=soccer&" in url


def test_sync_frame_carries_due_pixels(live_server: LiveServer) -> None:
    cookie_id = new_cookie_id()
    cookie = {"cookie": f"crumb_id={live_server.crumb.activation.idsync.signer.sign(cookie_id)}"}
    live_server.crumb.activation.store.put([(cookie_id, [101, 103])])
    frame = f"{live_server.url}/sync/frame?gdpr=1&gdpr_consent={BOTH}"
    with configured(live_server, [url_config()]):
        assert re.findall(r"<img[^>]*>", httpx.get(frame, headers={**cookie, "sec-gpc": "1"}).text) == []
        (image,) = re.findall(r"<img[^>]*>", httpx.get(frame, headers=cookie).text)
        assert re.findall(r"<img[^>]*>", httpx.get(frame, headers=cookie).text) == []  # fired already
    expected = f"https://px.example/seg?uid={cookie_id}&amp;s=soccer,golf&amp;gdpr=1&amp;gdpr_consent={BOTH}&amp;us="
    assert image == f'<img src="{expected}" width="1" height="1" alt="" referrerpolicy="no-referrer">'
