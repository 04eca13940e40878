"""HTTP mode against a fake collector (httpx.MockTransport): what each simulated browser sends."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from collector.consent import decode_consent
from crumb.simulator import SimulationResult, SimulationSpec, World, read_ground_truth, send_via_http
from crumb.simulator.catalogue import GDPR_NO_PROFILE
from crumb.simulator.http import MAX_EVENTS_PER_BEACON
from crumb.simulator.traffic import iter_chunks

SPEC = SimulationSpec(cookies=150, events=3_000, days=5, seed=5, end=datetime(2026, 3, 1, tzinfo=UTC),
                      gdpr_share=0.1, gpc_share=0.1)
VENDOR_ID = 1111
DOCUMENTATION_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                        "2001:db8::/32")]


@dataclass
class FakeCollector:
    """Sets a signed-looking crumb_id on a browser's first beacon and records every request."""

    status: int = 204
    requests: list[httpx.Request] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # the crumb_id value set in each response

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        cookie = request.headers.get("cookie", "")
        value = cookie.removeprefix("crumb_id=") or f"{secrets.token_hex(16)}.{secrets.token_hex(8)}"
        self.answered.append(value)
        set_cookie = f"crumb_id={value}; Max-Age=34214400; Path=/; SameSite=None; Secure; HttpOnly"
        return httpx.Response(self.status, headers={"set-cookie": set_cookie})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]

    def by_browser(self) -> dict[int, list[int]]:
        """Request numbers of each simulated browser (cookie index), in sending order."""
        owner: dict[str, int] = {}
        for chunk in iter_chunks(World.build(SPEC)):
            ids = [str(uuid.UUID(bytes=bytes(raw))) for raw in chunk.event_ids]
            owner.update(zip(ids, chunk.cookie.tolist(), strict=True))
        requests: dict[int, list[int]] = {}
        for number, body in enumerate(self.bodies()):
            requests.setdefault(owner[body["events"][0]["event_id"]], []).append(number)
        return requests


def run(collector: FakeCollector, tmp_path: Path, **options: Any) -> SimulationResult:
    return asyncio.run(send_via_http(
        "http://collector.test/", SPEC, truth_path=tmp_path / "truth.jsonl", tcf_vendor_id=VENDOR_ID,
        transport=httpx.MockTransport(collector.handle), concurrency=4, **options,
    ))


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeCollector, SimulationResult]:
    collector = FakeCollector()
    return collector, run(collector, tmp_path_factory.mktemp("http"))


def test_every_event_is_sent_and_counted(sent: tuple[FakeCollector, SimulationResult]) -> None:
    collector, result = sent
    assert (result.mode, result.events, result.rejected) == ("http", SPEC.total_events, 0)
    assert result.cookies == SPEC.cookies
    assert sum(len(body["events"]) for body in collector.bodies()) == SPEC.total_events


def test_beacons_follow_the_wire_format(sent: tuple[FakeCollector, SimulationResult]) -> None:
    collector, _ = sent
    for request, body in zip(collector.requests, collector.bodies(), strict=True):
        assert request.method == "POST" and request.url.path == "/e"
        assert len(request.content) <= 64 * 1024 and 1 <= len(body["events"]) <= MAX_EVENTS_PER_BEACON
        assert request.headers["origin"] == f"https://{body['site']}.example"
        address = ipaddress.ip_address(request.headers["x-forwarded-for"])
        assert any(address in net for net in DOCUMENTATION_NETS)
        for event in body["events"]:
            assert str(uuid.UUID(event["event_id"])) == event["event_id"] and isinstance(event["ts"], int)
            assert event["url"].startswith(f"https://{body['site']}.example/")
            assert event["type"] != "engagement" or event["engaged_ms"] > 0


def test_the_traffic_is_the_bulk_modes_event_for_event(sent: tuple[FakeCollector, SimulationResult]) -> None:
    collector, _ = sent
    sent_ids = sorted(event["event_id"] for body in collector.bodies() for event in body["events"])
    bulk = np.concatenate([chunk.event_ids for chunk in iter_chunks(World.build(SPEC))])
    assert sent_ids == sorted(str(uuid.UUID(bytes=bytes(raw))) for raw in bulk)


def test_each_browser_keeps_its_own_cookie_jar(sent: tuple[FakeCollector, SimulationResult]) -> None:
    collector, _ = sent
    browsers = collector.by_browser()
    assert len(browsers) == SPEC.cookies
    for first, *later in browsers.values():
        assert "cookie" not in collector.requests[first].headers  # a new browser has no cookie yet
        given = f"crumb_id={collector.answered[first]}"
        assert all(collector.requests[number].headers["cookie"] == given for number in later)


def test_the_truth_maps_each_browser_to_the_id_it_was_given(
    sent: tuple[FakeCollector, SimulationResult],
) -> None:
    collector, result = sent
    assert result.truth_path is not None
    truth = read_ground_truth(result.truth_path)
    for cookie, (first, *_) in collector.by_browser().items():
        assert truth.cookies[cookie].cookie_id == collector.answered[first].partition(".")[0]
        assert truth.cookies[cookie].cookie_id != truth.cookies[cookie].sim_id


def test_consent_travels_as_the_collector_reads_it(sent: tuple[FakeCollector, SimulationResult]) -> None:
    collector, _ = sent
    sent_with = list(zip(collector.requests, collector.bodies(), strict=True))
    gdpr = [(r, b) for r, b in sent_with if "gdpr" in b.get("consent", {})]
    gpc = [(r, b) for r, b in sent_with if "gpc" in b.get("consent", {})]
    assert gdpr and gpc
    consent = gdpr[0][1]["consent"]
    decoded = decode_consent(consent["gdpr"], consent["gdpr_consent"], False, None, VENDOR_ID)
    assert decoded.purposes == frozenset(GDPR_NO_PROFILE.purposes)
    assert decoded.can_store and not decoded.can_profile
    assert all(request.headers.get("sec-gpc") == "1" for request, _ in gpc)


def test_first_party_ids_are_sent_in_the_body(sent: tuple[FakeCollector, SimulationResult]) -> None:
    collector, result = sent
    assert result.truth_path is not None
    expected = {c.fp_id for c in read_ground_truth(result.truth_path).cookies if c.fp_id}
    assert {body["fp_id"] for body in collector.bodies() if "fp_id" in body} == expected


def test_refused_beacons_are_counted_as_rejected(tmp_path: Path) -> None:
    result = run(FakeCollector(status=400), tmp_path)
    assert (result.events, result.rejected) == (0, SPEC.total_events)
