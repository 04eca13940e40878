"""The writer against the real warehouse: faults, the spool, exactly-once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import redis

from collector.optouts import OptoutSet
from collector.payload import encode_rows, ids_in, read_payload, without_ids
from collector.schema import EVENT_COLUMNS
from collector.sink import WarehouseSink
from collector.spool import Batch, Spool
from collector.writer import RecentEventIds
from tests.conftest import LiveServer

# Now, not a fixed date: a row older than the events TTL (180 days) may be dropped by any merge.
NOW_MS = int(time.time() * 1000)
_DEFAULTS: dict[str, object] = {"ts": NOW_MS, "received_at": NOW_MS, "categories": (),
                                "is_bot": 0, "engaged_ms": 0, "props": (), "consent_purposes": (), "gdpr_applies": 0,
                                "vendor_consent": 0, "can_profile": 1, "can_share": 1, "gpc": 0}


def _row(**values: object) -> tuple[object, ...]:
    """A crumb.events row in EVENT_COLUMNS order: the given values, plain defaults elsewhere."""
    return tuple(values.get(name, _DEFAULTS.get(name, "")) for name in EVENT_COLUMNS)


def test_clickhouse_down_spools_then_replays_every_event_exactly_once(live_server: LiveServer, site: str) -> None:
    stats = live_server.stats
    spooled_before = stats.spooled_rows
    sent: list[str] = []
    live_server.client.command("DETACH TABLE crumb.events")
    try:
        with httpx.Client(base_url=live_server.url) as http:
            for _ in range(30):
                events = [{"event_id": str(uuid.uuid4()), "type": "pageview"} for _ in range(10)]
                assert http.post("/e", json={"site": site, "events": events}).status_code == 204
                sent += [e["event_id"] for e in events]
        live_server.flush()  # everything accepted is now stored or spooled
        assert stats.spooled_rows - spooled_before == len(sent)
        assert live_server.crumb.spool.depth() > 0
    finally:
        live_server.client.command("ATTACH TABLE crumb.events")
    deadline = time.monotonic() + 60
    while live_server.crumb.spool.depth() and time.monotonic() < deadline:
        time.sleep(0.1)  # the insert thread retries with backoff; we wait for the replay, bounded
    assert live_server.crumb.spool.depth() == 0
    stored = live_server.query(
        "SELECT toString(event_id), count() FROM crumb.events WHERE site = {s:String} GROUP BY event_id",
        {"s": site})
    assert sorted(e for e, _ in stored) == sorted(sent)
    assert {n for _, n in stored} == {1}


def test_a_replayed_batch_is_dropped_by_its_token(live_server: LiveServer, tmp_path: Path, site: str) -> None:
    """A crash after the insert but before the spool file is removed: the replay must not double-count."""
    from collector.consent import NO_GDPR
    from collector.hits import Hit, consent_columns

    now_ms = int(time.time() * 1000)
    hits = [Hit(str(uuid.uuid4()), now_ms, now_ms, site, "pageview", uuid.uuid4().hex, "",
                "https://x.example/", "", (), 0, (), "203.0.113.0", "ua", consent_columns(NO_GDPR), "test")
            for _ in range(5)]
    payload = live_server.crumb.encoder.encode([tuple(h) for h in hits])
    batch = Batch(token=uuid.uuid4().hex, payload=payload, rows=len(hits))
    spool = Spool(tmp_path)
    spool.write(batch)
    sink = WarehouseSink(live_server.client, OptoutSet(live_server.crumb.runtime.redis))
    assert sink.insert(batch) == 5
    (path,) = list(spool.pending())
    assert sink.insert(spool.read(path)) == 5  # the replay after a crash
    assert live_server.query("SELECT count() FROM crumb.events WHERE site = {s:String}", {"s": site}) == [(5,)]


def test_spool_files_are_whole_or_absent(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "half-written.tmp").write_bytes(b"\xff\xff")
    spool = Spool(tmp_path)  # a restart clears writes a crash cut short
    assert not list(tmp_path.glob("*.tmp"))
    batch = Batch(token="abc", payload=encode_rows([_row(event_id=str(uuid.uuid4()))]), rows=1)
    spool.write(batch)
    assert spool.read(next(spool.pending())) == batch


def test_recent_event_ids_forget_after_two_generations() -> None:
    recent = RecentEventIds(window_s=0)
    assert recent.first_time("a") and not recent.first_time("a")
    recent.rotate_if_due()
    assert not recent.first_time("a")  # still remembered one generation later
    recent.rotate_if_due()
    recent.rotate_if_due()
    assert recent.first_time("a")


def test_recent_event_ids_cost_the_garbage_collector_nothing() -> None:
    import gc

    recent = RecentEventIds(window_s=900)
    recent.remember([str(uuid.uuid4()) for _ in range(100)])
    assert recent.first_time("b") and not recent.first_time("b")
    assert not gc.is_tracked(recent._current)


def test_opted_out_ids_are_filtered_in_bulk(live_server: LiveServer) -> None:
    client: redis.Redis = live_server.crumb.runtime.redis
    optouts = OptoutSet(client)
    gone, kept = uuid.uuid4().hex, uuid.uuid4().hex
    optouts.add([gone])
    rows = [_row(cookie_id=kept, fp_id=""), _row(cookie_id="", fp_id=gone), _row(cookie_id=gone, fp_id=kept)]
    table = read_payload(encode_rows(rows))
    assert sorted(ids_in(table)) == sorted([kept, gone])
    opted_out = optouts.opted_out(ids_in(table))
    assert opted_out == [gone]
    assert without_ids(table, opted_out).column("cookie_id").to_pylist() == [kept]


def test_add_enriches_each_hit_once_and_drops_its_retries(live_server: LiveServer, site: str) -> None:
    from collector.consent import NO_GDPR
    from collector.hits import Hit, consent_columns

    writer, stats = live_server.crumb.writer, live_server.stats
    accepted, duplicates = stats.accepted, stats.duplicates
    now_ms = int(time.time() * 1000)
    hit = Hit(str(uuid.uuid4()), now_ms, now_ms, site, "pageview", uuid.uuid4().hex, "",
              "https://X.example/p?email=a@b.co", "", (), 0, (), "203.0.113.0", "ua", consent_columns(NO_GDPR), "test")
    writer.add(hit)
    writer.add(hit)  # a retry
    live_server.flush()
    assert (stats.accepted - accepted, stats.duplicates - duplicates) == (2, 1)
    assert live_server.query("SELECT host, url FROM crumb.events WHERE site = {s:String}", {"s": site}) == [
        ("x.example", "https://X.example/p")]


def test_a_spool_of_json_rows_left_by_an_earlier_version_is_replayed(live_server: LiveServer, tmp_path: Path,
                                                                     site: str) -> None:
    import json

    event_id = str(uuid.uuid4())
    row = _row(event_id=event_id, site=site, cookie_id=uuid.uuid4().hex, url="https://x.example/a",
               categories=("483",), props=(("plan", "pro"),), consent_purposes=(1, 3))
    (tmp_path / "0123abcd.json").write_text(json.dumps([row]))  # tuples as arrays, as that version wrote them
    spool = Spool(tmp_path)
    (path,) = list(spool.pending())
    batch = spool.read(path)
    assert (batch.token, batch.rows) == ("0123abcd", 1)
    sink = WarehouseSink(live_server.client, OptoutSet(live_server.crumb.runtime.redis))
    assert sink.insert(batch) == 1
    assert live_server.query(
        "SELECT toString(event_id), url, categories, props, consent_purposes FROM crumb.events WHERE site = {s:String}",
        {"s": site}) == [(event_id, "https://x.example/a", ["483"], {"plan": "pro"}, [1, 3])]
