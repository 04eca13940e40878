"""HTTP mode: the simulated browsing sent through a real collector (`POST /e`, docs/collector-wire.md).

Each simulated browser is a sequence of beacons (one per session, split at 100 events) sent in
order with its own User-Agent, X-Forwarded-For, Origin and hand-kept cookie jar: the `crumb_id`
the collector sets is sent back on the browser's later requests. One httpx client serves every
browser; `concurrency` browsers are in flight at once. The traffic is the bulk mode's, event for
event (same seed, same event IDs); only the cookie IDs are the collector's.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from crumb.progress import SILENT, Progress
from crumb.simulator.catalogue import CONSENT_CLASSES, ENGAGEMENT, GDPR_NO_PROFILE, GPC
from crumb.simulator.model import SimulationResult, SimulationSpec, World
from crumb.simulator.population import DEVICES, uuid_texts
from crumb.simulator.render import Renderer
from crumb.simulator.tcf import tc_string
from crumb.simulator.traffic import CHUNK_EVENTS, EventChunk, iter_chunks

MAX_EVENTS_PER_BEACON = 100  # the collector's limit per batch
COOKIE_NAME = "crumb_id"
_ATTEMPTS = 3
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class _Browser:
    index: int  # cookie index in the World
    headers: dict[str, str]
    beacons: list[tuple[str, bytes, int]]  # the site's Origin, JSON body, events in it


@dataclass
class _Tally:
    accepted: int = 0
    rejected: int = 0
    assigned: dict[int, str] = field(default_factory=dict)  # cookie index → crumb_id (before the '.')


async def send_via_http(
    collector_url: str, spec: SimulationSpec, progress: Progress = SILENT, concurrency: int = 16,
    truth_path: Path | str | None = None, tcf_vendor_id: int = 0,
    transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 30.0,
) -> SimulationResult:
    """Send the simulation to `collector_url` (e.g. http://127.0.0.1:8080).

    `tcf_vendor_id` is the collector's CRUMB_TCF_VENDOR_ID: GDPR browsers consent to it (0: to no
    vendor, so the collector sets them no cookie). `transport` replaces the network in tests.
    Keep `spec.days` within the collector's CRUMB_MAX_EVENT_AGE_HOURS: it stores older `ts` values
    as the arrival time.
    """
    started = time.perf_counter()
    truth = Path(truth_path) if truth_path is not None else None
    world = World.build(spec)
    tally = _Tally()
    queue: asyncio.Queue[_Browser | None] = asyncio.Queue(maxsize=concurrency * 4)
    endpoint = collector_url.rstrip("/") + "/e"
    async with _client(transport, concurrency, timeout_s) as client, asyncio.TaskGroup() as workers:
        for _ in range(concurrency):  # a worker that fails cancels the group instead of hanging it
            workers.create_task(_worker(client, endpoint, queue, tally, progress, spec.total_events))
        async for browser in _browsers(world, tcf_vendor_id):
            await queue.put(browser)
        for _ in range(concurrency):
            await queue.put(None)
    if truth is not None:
        world.write_ground_truth(truth, tally.assigned)
    return SimulationResult(
        mode="http", events=tally.accepted, cookies=spec.cookies, bots=int(world.cookies.is_bot.sum()),
        sites=len(world.sites), duration_s=time.perf_counter() - started, truth_path=truth,
        rejected=tally.rejected,
    )


def _client(transport: httpx.AsyncBaseTransport | None, concurrency: int,
            timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # Cookies are kept per browser by hand; the client's own jar would share them between browsers.
    no_jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(transport=transport, limits=limits, timeout=timeout_s, cookies=no_jar)


async def _worker(client: httpx.AsyncClient, endpoint: str, queue: asyncio.Queue[_Browser | None],
                  tally: _Tally, progress: Progress, total: int) -> None:
    while (browser := await queue.get()) is not None:
        await _browse(client, endpoint, browser, tally)
        progress.count("events", tally.accepted + tally.rejected, total)


async def _browse(client: httpx.AsyncClient, endpoint: str, browser: _Browser, tally: _Tally) -> None:
    jar = ""
    for origin, body, events in browser.beacons:
        headers = browser.headers | {"Origin": origin} | ({"Cookie": f"{COOKIE_NAME}={jar}"} if jar else {})
        response = await _post(client, endpoint, body, headers)
        if response is not None and response.status_code == 204:
            tally.accepted += events
        else:
            tally.rejected += events
        jar = (_crumb_cookie(response) if response is not None else None) or jar
    if jar:
        tally.assigned[browser.index] = jar.partition(".")[0]


async def _post(client: httpx.AsyncClient, endpoint: str, body: bytes,
                headers: dict[str, str]) -> httpx.Response | None:
    """POST, retried on network errors and overload; event IDs make a repeated beacon count once."""
    response = None
    for attempt in range(_ATTEMPTS):
        try:
            response = await client.post(endpoint, content=body, headers=headers)
            if response.status_code not in _RETRY_STATUSES:
                return response
        except httpx.TransportError:
            response = None
        await asyncio.sleep(0.2 * 2 ** attempt)
    return response


def _crumb_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == COOKIE_NAME:
            return rest.partition(";")[0].strip() or None
    return None


async def _browsers(world: World, tcf_vendor_id: int) -> AsyncIterator[_Browser]:
    renderer = Renderer(world)
    for chunk in iter_chunks(world, CHUNK_EVENTS):
        beacons = _ChunkBeacons(world, renderer, chunk, tcf_vendor_id)
        for index in range(chunk.first_cookie, chunk.stop_cookie):
            yield beacons.browser(index)
            await asyncio.sleep(0)  # let the workers send while the next browsers are built


class _ChunkBeacons:
    """A chunk's events as wire JSON, browser by browser (text built once per chunk, bodies lazily)."""

    def __init__(self, world: World, renderer: Renderer, chunk: EventChunk, tcf_vendor_id: int) -> None:
        self.world = world
        self.chunk = chunk
        self.columns = _wire_columns(renderer, chunk)
        self.row_starts = _row_starts(chunk)
        self.ips = world.cookies.client_ips(chunk.first_cookie, chunk.stop_cookie)
        self.fp_ids = world.cookies.first_party_ids(chunk.first_cookie, chunk.stop_cookie)
        gdpr = tc_string(GDPR_NO_PROFILE.purposes, tcf_vendor_id, world.start_ms)
        self.consent = {GDPR_NO_PROFILE.name: {"gdpr": 1, "gdpr_consent": gdpr},
                        GPC.name: {"gpc": 1, "us_privacy": GPC.us_privacy}}

    def browser(self, index: int) -> _Browser:
        local = index - self.chunk.first_cookie
        first, stop = self.row_starts[local], self.row_starts[local + 1]
        consent = CONSENT_CLASSES[self.world.cookies.consent[index]]
        headers = {"User-Agent": DEVICES[self.world.cookies.device[index]].user_agent,
                   "X-Forwarded-For": self.ips[local], "Content-Type": "application/json"}
        if consent is GPC:
            headers["Sec-GPC"] = "1"
        envelope: dict[str, Any] = {}
        if self.fp_ids[local]:
            envelope["fp_id"] = self.fp_ids[local]
        if consent.name in self.consent:
            envelope["consent"] = self.consent[consent.name]
        return _Browser(index, headers, list(self._beacons(first, stop, envelope)))

    def _beacons(self, first: int, stop: int, envelope: dict[str, Any]) -> list[tuple[str, bytes, int]]:
        """One beacon per session (its events share a site), split at the collector's batch limit."""
        events = _wire_events([column[first:stop] for column in self.columns])
        cuts = (np.flatnonzero(np.diff(self.chunk.session[first:stop])) + 1).tolist()
        beacons = []
        for start, end in zip([0, *cuts], [*cuts, stop - first], strict=True):
            site = self.world.sites[int(self.chunk.site[first + start])]
            for part in range(start, end, MAX_EVENTS_PER_BEACON):
                batch = events[part:min(part + MAX_EVENTS_PER_BEACON, end)]
                body = json.dumps({"site": site.name, **envelope, "events": batch}, separators=(",", ":"))
                beacons.append((site.origin, body.encode(), len(batch)))
        return beacons


def _row_starts(chunk: EventChunk) -> list[int]:
    counts = np.bincount(chunk.cookie - chunk.first_cookie, minlength=chunk.stop_cookie - chunk.first_cookie)
    return np.concatenate([[0], np.cumsum(counts)]).tolist()


def _wire_columns(renderer: Renderer, chunk: EventChunk) -> list[list[Any]]:
    return [
        uuid_texts(chunk.event_ids), chunk.ts_ms.tolist(), renderer.event_types[chunk.kind].tolist(),
        renderer.urls(chunk), renderer.referrers(chunk), renderer.categories(chunk),
        chunk.engaged_ms.tolist(), renderer.props(chunk), (chunk.kind == ENGAGEMENT).tolist(),
    ]


def _wire_events(columns: list[list[Any]]) -> list[dict[str, Any]]:
    """Each event as the tag sends it (`ts` in epoch ms), empty fields left out."""
    events = []
    for event_id, ts, kind, url, referrer, categories, engaged, props, beacon in zip(*columns, strict=True):
        event: dict[str, Any] = {"event_id": event_id, "ts": ts, "type": kind, "url": url}
        if referrer:
            event["referrer"] = referrer
        if categories:
            event["categories"] = categories
        if beacon:
            event["engaged_ms"] = engaged
        if props:
            event["props"] = props
        events.append(event)
    return events
