"""GET /v1/segments: the pure forms, then the endpoint over real HTTP on the live server (browser
callers) and on an app of its own with an API key configured (server callers)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from activation.lookup import (
    BadRequest,
    Format,
    SegmentInfo,
    gam_key_values,
    may_activate,
    openrtb_user,
    parse_format,
    parse_id,
    render,
)
from activation.lookup_endpoints import routes
from activation.store import SegmentCatalog, SegmentStore
from audiences.definitions import parse_segment
from collector.identity import CookieSigner
from crumb.settings import Settings
from tests.conftest import TEST_VENDOR_ID, LiveServer, free_port
from tests.tcf import make_tc_string

RULE = {"where": [{"field": "type", "op": "eq", "value": "pageview"}]}
CATALOG = SegmentCatalog.of([
    parse_segment({"id": 101, "name": "Soccer fans", "iab_audience_id": "663", "rule": RULE}),
    parse_segment({"id": 102, "name": "Car intenders", "rule": RULE}),
    parse_segment({"id": 103, "name": "Paused", "status": "paused", "rule": RULE}),
])
SOCCER, CARS = SegmentInfo(101, "Soccer fans", "663"), SegmentInfo(102, "Car intenders")


# -- pure ----------------------------------------------------------------------------------------


def test_json_form() -> None:
    assert render(Format.JSON, "ab" * 16, [SOCCER, CARS], 7) == {
        "id": "ab" * 16, "segments": [{"id": 101, "name": "Soccer fans"}, {"id": 102, "name": "Car intenders"}],
        "build_id": 7,
    }


def test_openrtb_form_splits_iab_and_own_ids() -> None:
    assert openrtb_user([SOCCER, CARS]) == {"user": {"data": [
        {"name": "crumb", "ext": {"segtax": 4}, "segment": [{"id": "663"}]},
        {"name": "crumb", "segment": [{"id": "102"}]},
    ]}}
    assert openrtb_user([CARS]) == {"user": {"data": [{"name": "crumb", "segment": [{"id": "102"}]}]}}
    assert openrtb_user([]) == {"user": {"data": []}}


def test_gam_form_honours_the_key_value_limits() -> None:
    assert gam_key_values([SOCCER, CARS]) == {"crumb_seg": ["101", "102"]}
    assert gam_key_values([]) == {}
    for bad_key in ("1seg", "a" * 21, "crumb-seg"):
        with pytest.raises(ValueError):
            gam_key_values([SOCCER], key=bad_key)


@pytest.mark.parametrize("value, expected", [(None, Format.JSON), ("openrtb", Format.OPENRTB), ("gam", Format.GAM)])
def test_formats(value: str | None, expected: Format) -> None:
    assert parse_format(value) is expected


@pytest.mark.parametrize("call", [
    lambda: parse_format("xml"), lambda: parse_id("not-an-id", None), lambda: parse_id("ab" * 16, "email"),
    lambda: parse_id("AB" * 16, None),
])
def test_bad_requests(call: Any) -> None:
    with pytest.raises(BadRequest):
        call()


CONSENTED = make_tc_string(purposes=[1, 3, 4], vendors=[TEST_VENDOR_ID])
NO_PROFILING = make_tc_string(purposes=[1], vendors=[TEST_VENDOR_ID])


@pytest.mark.parametrize("signals, allowed", [
    ({}, True),
    ({"opted_out": True}, False),
    ({"gpc": True}, False),
    ({"gdpr": "1"}, False),
    ({"gdpr": "1", "gdpr_consent": NO_PROFILING}, False),
    ({"gdpr": "1", "gdpr_consent": CONSENTED}, True),
    ({"us_privacy": "1YYN"}, False),
])
def test_who_may_be_answered(signals: dict[str, Any], allowed: bool) -> None:
    values = {"opted_out": False, "gpc": False, "gdpr": None, "gdpr_consent": None, "us_privacy": None, **signals}
    assert may_activate(**values, vendor_id=TEST_VENDOR_ID) is allowed


# -- the endpoint on the live server (browsers) ---------------------------------------------------


@pytest.fixture
def live_store(live_server: LiveServer) -> Iterator[SegmentStore]:
    store = live_server.crumb.activation.store
    before, store.catalog = store.catalog, CATALOG
    yield store
    store.catalog = before


@pytest.fixture
def member(live_store: SegmentStore, live_server: LiveServer) -> tuple[str, str]:
    """A fresh cookie ID in segments 101, 102 and 103 (paused), and its signed cookie value."""
    cookie_id = secrets.token_hex(16)
    live_store.put([(cookie_id, [101, 102, 103])])
    return cookie_id, live_server.crumb.activation.signer.sign(cookie_id)


def test_what_is_activated_is_what_a_lookup_answers(live_store: SegmentStore, member: tuple[str, str]) -> None:
    # A paused segment keeps its memberships until the next build exits them; URL destinations
    # fired it meanwhile, while lookups hid it.
    assert live_store.segments_of(member[0]) == [101, 102, 103]
    assert live_store.active_segments_of(member[0]) == [101, 102]


def get(live_server: LiveServer, cookies: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=live_server.url, cookies=cookies) as client:
        return client.get("/v1/segments", **kwargs)


def test_browser_gets_its_segments_in_each_form(live_server: LiveServer, member: tuple[str, str]) -> None:
    cookies = {"crumb_id": member[1]}
    answer = get(live_server, cookies).json()
    assert answer["id"] is None  # crumb_id is HttpOnly: not handed to page scripts
    assert answer["segments"] == [{"id": 101, "name": "Soccer fans"}, {"id": 102, "name": "Car intenders"}]
    assert get(live_server, cookies, params={"format": "openrtb"}).json() == openrtb_user([SOCCER, CARS])
    assert get(live_server, cookies, params={"format": "gam"}).json() == {"crumb_seg": ["101", "102"]}


def test_browser_with_consent_is_answered(live_server: LiveServer, member: tuple[str, str]) -> None:
    answer = get(live_server, {"crumb_id": member[1]}, params={"gdpr": "1", "gdpr_consent": CONSENTED})
    assert [s["id"] for s in answer.json()["segments"]] == [101, 102]


@pytest.mark.parametrize("cookies, params, headers", [
    ({"crumb_optout": "1"}, {}, {}),
    ({}, {}, {"sec-gpc": "1"}),
    ({}, {"gdpr": "1"}, {}),
    ({}, {"gdpr": "1", "gdpr_consent": NO_PROFILING}, {}),
], ids=["opted-out", "gpc", "gdpr-without-tc-string", "gdpr-without-profiling-consent"])
def test_refusals_are_empty_answers(live_server: LiveServer, member: tuple[str, str], cookies: dict[str, str],
                                    params: dict[str, str], headers: dict[str, str]) -> None:
    response = get(live_server, {"crumb_id": member[1], **cookies}, params=params, headers=headers)
    assert response.status_code == 200 and response.json()["segments"] == []
    gam = get(live_server, {"crumb_id": member[1], **cookies}, params={**params, "format": "gam"}, headers=headers)
    assert gam.json() == {}


def test_forged_or_missing_cookie_is_an_empty_answer(live_server: LiveServer, member: tuple[str, str]) -> None:
    assert get(live_server, {"crumb_id": member[0] + ".0123456789abcdef"}).json()["segments"] == []
    assert get(live_server).json()["segments"] == []


def test_credentialed_cors_and_no_caching(live_server: LiveServer, member: tuple[str, str]) -> None:
    response = get(live_server, {"crumb_id": member[1]}, headers={"origin": "https://shop.example.com"})
    assert response.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "no-store" in response.headers["cache-control"]


def test_bad_format_is_400(live_server: LiveServer) -> None:
    response = get(live_server, params={"format": "xml"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_format"


def test_server_lookup_without_a_configured_key_is_403(live_server: LiveServer, member: tuple[str, str]) -> None:
    response = get(live_server, params={"id": member[0]}, headers={"authorization": "Bearer anything"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "lookup_disabled"


# -- server callers, on an app with an API key ---------------------------------------------------


class _Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


@pytest.fixture
def keyed(live_store: SegmentStore, tmp_path: Path) -> Iterator[httpx.Client]:
    """The lookup routes alone, served by uvicorn, with an API key and a sites file."""
    sites = tmp_path / "sites.yaml"
    sites.write_text("sites:\n  shop:\n    origins: ['https://shop.example.com']\n")
    settings = Settings(data_dir=tmp_path, lookup_api_key="k3y", sites_file=sites, tcf_vendor_id=TEST_VENDOR_ID)
    app = Starlette(routes=routes(live_store, _Runtime(settings), CookieSigner(b"s")))  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "lookup app failed to start"
        thread.join(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        yield client
    server.should_exit = True
    thread.join(10)


def test_server_lookup_by_id_with_the_key(keyed: httpx.Client, member: tuple[str, str]) -> None:
    response = keyed.get("/v1/segments", params={"id": member[0]}, headers={"authorization": "Bearer k3y"})
    assert response.status_code == 200
    assert response.json()["id"] == member[0] and [s["id"] for s in response.json()["segments"]] == [101, 102]
    openrtb = keyed.get("/v1/segments", params={"id": member[0], "format": "openrtb"},
                        headers={"authorization": "Bearer k3y"})
    assert openrtb.json()["user"]["data"][0] == {"name": "crumb", "ext": {"segtax": 4}, "segment": [{"id": "663"}]}


def test_server_lookup_of_an_opted_out_id_is_empty(keyed: httpx.Client, member: tuple[str, str],
                                                   live_server: LiveServer) -> None:
    # Its memberships stay until the privacy worker erases it, which waits for a running build.
    live_server.crumb.optouts.add([member[0]])
    response = keyed.get("/v1/segments", params={"id": member[0]}, headers={"authorization": "Bearer k3y"})
    assert response.status_code == 200 and response.json()["segments"] == []


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic k3y"}])
def test_server_lookup_needs_the_key(keyed: httpx.Client, member: tuple[str, str], headers: dict[str, str]) -> None:
    response = keyed.get("/v1/segments", params={"id": member[0]}, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_malformed_id_is_400(keyed: httpx.Client) -> None:
    response = keyed.get("/v1/segments", params={"id": "x"}, headers={"authorization": "Bearer k3y"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_id"


def test_only_configured_origins_get_cors(keyed: httpx.Client) -> None:
    assert keyed.get("/v1/segments", headers={"origin": "https://evil.example"}).status_code == 403
    allowed = keyed.get("/v1/segments", headers={"origin": "https://shop.example.com"})
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
