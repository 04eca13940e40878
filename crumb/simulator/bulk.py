"""Bulk mode: simulated events straight into `crumb.events`, columns as the collector stores them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from collector.schema import EVENT_COLUMNS, EVENTS_TABLE
from crumb.progress import SILENT, Progress
from crumb.simulator.catalogue import CONSENT_CLASSES
from crumb.simulator.model import SimulationResult, SimulationSpec, World
from crumb.simulator.render import UTM_FIELDS, Renderer
from crumb.simulator.sampling import objects
from crumb.simulator.traffic import CHUNK_EVENTS, EventChunk, iter_chunks

SOURCE = "sim"
_CONSENT_FIELDS = (
    "gdpr_applies", "purposes", "vendor_consent", "can_profile", "can_share", "gpc", "us_privacy",
)


def load_bulk(
    client: Client, spec: SimulationSpec, progress: Progress = SILENT, truth_path: Path | str | None = None,
    chunk_events: int = CHUNK_EVENTS,
) -> SimulationResult:
    """Generate and insert the spec's events, `chunk_events` at a time (memory stays per chunk).

    The traffic is fixed by the seed and the chunk size; the default size is the HTTP mode's, so
    both modes then send the very same events.
    """
    started = time.perf_counter()
    truth = Path(truth_path) if truth_path is not None else None
    world = World.build(spec)
    renderer = Renderer(world)
    loaded = 0
    for chunk in iter_chunks(world, chunk_events):
        client.insert(EVENTS_TABLE, event_columns(renderer, chunk), column_names=EVENT_COLUMNS,
                      column_oriented=True)
        loaded += len(chunk)
        progress.count("events", loaded, spec.total_events)
    if truth is not None:
        world.write_ground_truth(truth)
    return SimulationResult(
        mode="bulk", events=loaded, cookies=spec.cookies, bots=int(world.cookies.is_bot.sum()),
        sites=len(world.sites), duration_s=time.perf_counter() - started, truth_path=truth,
    )


def event_columns(renderer: Renderer, chunk: EventChunk) -> list[Any]:
    """One chunk in EVENT_COLUMNS order, column-oriented, as clickhouse-connect inserts it."""
    cookies = renderer.world.cookies
    first, stop = chunk.first_cookie, chunk.stop_cookie
    local = chunk.cookie - first
    ts = chunk.ts_ms.tolist()  # epoch ms ints: the DateTime64(3) wire form, no datetime objects
    device_type, os, browser, is_bot = renderer.agent_columns(chunk)
    columns: dict[str, Any] = {
        "event_id": _uuid_ints(chunk.event_ids), "ts": ts, "received_at": ts,
        "site": renderer.site_names[chunk.site].tolist(), "type": renderer.event_types[chunk.kind].tolist(),
        "cookie_id": objects(cookies.cookie_ids(first, stop))[local].tolist(),
        "fp_id": objects(cookies.first_party_ids(first, stop))[local].tolist(),
        "url": renderer.urls(chunk), "host": renderer.hosts_of(chunk), "path": renderer.paths(chunk),
        "referrer_host": renderer.referrer_hosts(chunk),
        "categories": renderer.categories(chunk),
        "device_type": device_type, "os": os, "browser": browser, "is_bot": is_bot,
        "ip": objects(cookies.stored_ips(first, stop))[local].tolist(),
        "engaged_ms": chunk.engaged_ms.tolist(), "props": renderer.props(chunk),
        "source": [SOURCE] * len(chunk),
    }
    columns.update(zip(UTM_FIELDS, renderer.utm_columns(chunk), strict=True))
    columns.update(_consent_columns(cookies.consent[chunk.cookie]))
    return [columns[name] for name in EVENT_COLUMNS]


def _consent_columns(classes: np.ndarray) -> dict[str, list[Any]]:
    columns = {}
    for field in _CONSENT_FIELDS:
        values = objects([_column_value(getattr(c, field)) for c in CONSENT_CLASSES])
        columns["consent_purposes" if field == "purposes" else field] = values[classes].tolist()
    return columns


def _column_value(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value  # one shared list per class, not per row


def _uuid_ints(raw: np.ndarray) -> list[int]:
    """UUID bytes → ints, the cheapest form clickhouse-connect serialises a UUID column from."""
    halves = raw.view(">u8").reshape(len(raw), 2)
    highs, lows = halves[:, 0].tolist(), halves[:, 1].tolist()
    return [(high << 64) | low for high, low in zip(highs, lows, strict=True)]

