"""The sync runner end to end: the real warehouse, real HTTP to the local TTD server."""

from __future__ import annotations

import random
import time
import uuid
from contextlib import closing
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client

from activation.destinations import Batch, PushResult
from activation.destinations.config import TTDConfig
from activation.destinations.ttd import TTDDestination
from activation.runner import (
    STATS,
    WITHHELD_PREFIX,
    SyncStatsExporter,
    Target,
    backoff_s,
    drop_stale_withheld,
    read_checkpoint,
    stream_deltas,
    sync_all,
)
from crumb.progress import SILENT
from tests.activation.conformance.ttd import TTDServer
from tests.conftest import LiveServer


class World:
    """This test's own segment, partner and destination names in the shared warehouse."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.segment = random.randint(1_000_000, 2_000_000_000)
        self.partner = f"p-{uuid.uuid4().hex[:8]}"
        self.destination = f"d-{uuid.uuid4().hex[:8]}"
        self.tdid: dict[str, str] = {}

    def build(self, enters: list[str], exits: list[str] = ()) -> int:  # type: ignore[assignment]
        last = self.client.query("SELECT max(build_id) FROM crumb.builds").result_rows[0][0] or 0
        build_id = int(last) + 1
        now = int(time.time() * 1000)
        self.client.insert("crumb.id_deltas", [
            [build_id, now, cookie, "cookie", [self.segment] if change == "enter" else [],
             [self.segment] if change == "exit" else []]
            for change, ids in (("enter", enters), ("exit", exits)) for cookie in ids
        ], column_names=["build_id", "built_at", "id", "id_type", "entered", "exited"])
        self.client.insert("crumb.builds", [[build_id, now, now, now, "succeeded", time.time_ns()]],
                           column_names=["build_id", "started_at", "finished_at", "as_of", "status", "version"])
        return build_id

    def match(self, cookies: list[str]) -> None:
        for cookie in cookies:
            self.tdid[cookie] = str(uuid.uuid4())
        self.client.insert("crumb.id_matches", [
            [self.partner, cookie, self.tdid[cookie], int(time.time() * 1000), time.time_ns()] for cookie in cookies
        ], column_names=["partner", "id", "partner_uid", "matched_at", "version"])

    def opt_out_of_sharing(self, cookie: str) -> None:
        now = int(time.time() * 1000)
        self.client.insert("crumb.events", [[uuid.uuid4(), now, now, "t-sync", "pageview", cookie, 0]],
                           column_names=["event_id", "ts", "received_at", "site", "type", "cookie_id", "can_share"])

    def config(self, **overrides: Any) -> TTDConfig:
        values: dict[str, Any] = dict(
            name=self.destination, type="ttd", advertiser_id="adv1", token_env="TTD_AUTH_TOKEN",
            partner=self.partner, segments={self.segment: "crumb_fans"}, rate_limit_per_s=10_000, max_attempts=3,
        )
        return TTDConfig(**{**values, **overrides})

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.client.query(sql, parameters={"d": self.destination}).result_rows)


@pytest.fixture
def world(warehouse: Client) -> World:
    return World(warehouse)


def cookies(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}-{uuid.uuid4().hex[:6]}" for i in range(n)]


def run(live_server: LiveServer, target: Target, sleeps: list[float] | None = None) -> dict[str, Any]:
    sleeps = [] if sleeps is None else sleeps
    (row,) = sync_all(live_server.crumb.runtime, SILENT, [target], sleep=sleeps.append, rng=lambda: 1.0)
    return row


def ttd_target(world: World, ttd: TTDServer, http: httpx.Client, **overrides: Any) -> Target:
    config = world.config(**overrides)
    return Target(config, TTDDestination(config.name, ttd.url, "adv1", "ttd-secret", http,
                                         items_per_request=config.items_per_request))


def test_deltas_reach_the_platform_unmatched_counted_gpc_withheld(
    live_server: LiveServer, world: World, ttd: TTDServer, http: httpx.Client,
) -> None:
    matched, unmatched, gpc = cookies("m", 40), cookies("u", 5), cookies("g", 1)
    world.match(matched + gpc)
    world.opt_out_of_sharing(gpc[0])
    world.build(enters=matched + unmatched + gpc)
    second = world.build(enters=[], exits=matched[:10])

    row = run(live_server, ttd_target(world, ttd, http, items_per_request=7))

    assert (row["status"], row["sent"], row["unmatched"], row["suppressed"], row["failed"]) == (
        "succeeded", 50, 5, 1, 0)
    assert set(ttd.state) == {(world.tdid[c], "crumb_fans") for c in matched[10:]}
    assert read_checkpoint(world.client, world.destination) == second
    (stored,) = world.rows(
        "SELECT sent, unmatched, status, to_build FROM crumb.sync_runs WHERE destination = {d:String}")
    assert stored == (50, 5, "succeeded", second)
    present = world.rows("SELECT countIf(present = 1), countIf(present = 0) FROM crumb.delivered FINAL "
                         "WHERE destination = {d:String}")
    assert present == [(30, 10)]
    again = run(live_server, ttd_target(world, ttd, http))
    assert (again["sent"], again["from_build"], again["to_build"]) == (0, second, second)


def test_throttling_is_retried_after_retry_after(
    live_server: LiveServer, world: World, ttd: TTDServer, http: httpx.Client,
) -> None:
    ids = cookies("r", 12)
    world.match(ids)
    world.build(enters=ids)
    ttd.faults.fail_next(2, 429, "3")
    sleeps: list[float] = []
    row = run(live_server, ttd_target(world, ttd, http), sleeps)
    assert (row["status"], row["sent"], row["failed"], row["retried"]) == ("succeeded", 12, 0, 24)
    assert sorted(sleeps)[-2:] == [3.0, 3.0]  # Retry-After is the floor of the backoff
    assert len(ttd.state) == 12


def test_refused_and_exhausted_items_are_dead_lettered_and_the_checkpoint_moves(
    live_server: LiveServer, world: World, ttd: TTDServer, http: httpx.Client,
) -> None:
    ids = cookies("x", 6)
    world.match(ids)
    build_id = world.build(enters=ids)
    ttd.failing[world.tdid[ids[0]]] = "UserNotMapped"
    row = run(live_server, ttd_target(world, ttd, http))
    assert (row["status"], row["sent"], row["failed"]) == ("partial", 5, 1)
    assert world.rows("SELECT id, error_code FROM crumb.dead_letters WHERE destination = {d:String}") == [
        (ids[0], "UserNotMapped")]
    assert read_checkpoint(world.client, world.destination) == build_id

    more = cookies("y", 3)
    world.match(more)
    world.build(enters=more)
    ttd.faults.fail_next(10, 503)  # more than max_attempts (3)
    row = run(live_server, ttd_target(world, ttd, http))
    assert (row["sent"], row["failed"], row["retried"]) == (0, 3, 6)
    codes = world.rows("SELECT error_code, count() FROM crumb.dead_letters WHERE destination = {d:String} "
                       "GROUP BY error_code ORDER BY error_code")
    assert codes == [("UserNotMapped", 1), ("http_503", 3)]


class Crashing:
    """The real adapter until the n-th push, then an unexpected exception: a crash mid-build."""

    def __init__(self, inner: TTDDestination, crash_on: int) -> None:
        self.name, self.max_batch_items = inner.name, inner.max_batch_items
        self._inner, self._left = inner, crash_on

    def push(self, batch: Batch) -> PushResult:
        self._left -= 1
        if self._left == 0:
            raise RuntimeError("killed mid-build")
        return self._inner.push(batch)


def test_a_crash_mid_build_loses_nothing(
    live_server: LiveServer, world: World, ttd: TTDServer, http: httpx.Client,
) -> None:
    first_ids, second_ids = cookies("a", 30), cookies("b", 30)
    world.match(first_ids + second_ids)
    first = world.build(enters=first_ids)
    second = world.build(enters=second_ids, exits=first_ids[:5])
    target = ttd_target(world, ttd, http, items_per_request=10)
    crashing = Target(target.config, Crashing(target.destination, crash_on=5))  # 3 batches of build 1, then 2nd

    row = run(live_server, crashing)
    assert row["status"] == "failed" and "killed mid-build" in row["error"]
    assert read_checkpoint(world.client, world.destination) == first  # never past an unfinished build

    row = run(live_server, target)
    assert row["status"] == "succeeded" and row["from_build"] == first and row["to_build"] == second
    assert set(ttd.state) == {(world.tdid[c], "crumb_fans") for c in first_ids[5:] + second_ids}


def test_bad_credentials_stop_the_run_without_dead_letters(
    live_server: LiveServer, world: World, ttd: TTDServer, http: httpx.Client,
) -> None:
    ids = cookies("z", 3)
    world.match(ids)
    world.build(enters=ids)
    config = world.config()
    row = run(live_server, Target(config, TTDDestination(config.name, ttd.url, "adv1", "wrong", http)))
    assert row["status"] == "failed" and "401" in row["error"]
    assert world.rows("SELECT count() FROM crumb.dead_letters WHERE destination = {d:String}") == [(0,)]
    assert read_checkpoint(world.client, world.destination) < max(
        r[0] for r in world.rows("SELECT max(build_id) FROM crumb.builds"))


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert [backoff_s(n, None, lambda: 1.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_s(30, None, lambda: 1.0) == 60.0
    assert backoff_s(1, None, lambda: 0.0) == 0.0 and backoff_s(1, 9.0, lambda: 0.0) == 9.0


def test_metrics_export_per_destination_counters() -> None:
    STATS.record({"destination": "m-test", "sent": 3, "failed": 1, "unmatched": 2, "suppressed": 0, "retried": 4,
                  "requests": 5, "status": "partial", "duration_s": 1.5})
    families = {f.name: f for f in SyncStatsExporter(STATS).collect()}
    sent = {s.labels["destination"]: s.value for s in families["crumb_sync_sent"].samples if s.name.endswith("_total")}
    assert sent["m-test"] == 3


def test_deltas_are_paged_whole_whatever_the_chunk_and_an_ids_rows(warehouse: Client) -> None:
    """Pages end inside an ID's rows too: an ID that entered two of the destination's segments and
    exited one, an ID with two rows in one build (a lookalike's own row), a segment not mapped."""
    build_id = random.randint(10**15, 2 * 10**15)
    mapped, other = random.sample(range(1_000_000, 2_000_000_000), 3), 7
    a, b, c = (f"page-{uuid.uuid4().hex[:8]}" for _ in range(3))
    now = int(time.time() * 1000)  # deltas of 1970 are past the table's TTL
    warehouse.insert("crumb.id_deltas", [
        [build_id, now, a, "cookie", [mapped[0], mapped[1], other], [mapped[2]]],
        [build_id, now, b, "cookie", [mapped[1]], []],
        [build_id, now, b, "cookie", [mapped[2]], [mapped[0]]],
        [build_id, now, c, "cookie", [other], []],
    ], column_names=["build_id", "built_at", "id", "id_type", "entered", "exited"])
    expected = sorted([(mapped[0], a, "enter"), (mapped[1], a, "enter"), (mapped[2], a, "exit"),
                       (mapped[1], b, "enter"), (mapped[2], b, "enter"), (mapped[0], b, "exit")],
                      key=lambda row: (row[1], row[0], row[2] == "exit"))
    for chunk_rows in (1, 2, 4, 100):
        pages = list(stream_deltas(warehouse, "pages", build_id, sorted(mapped), None, 30, chunk_rows=chunk_rows))
        assert [(s, i, change) for page in pages for s, i, change, _, _ in page] == expected
        assert all(len(page) <= chunk_rows for page in pages)
        assert withheld_tables(warehouse) == []  # the stream's set of withheld IDs is dropped at its end
    # Stopped early, closed: dropped too; one a stopped sync left behind goes at the next sync.
    with closing(stream_deltas(warehouse, "pages", build_id, sorted(mapped), None, 30, chunk_rows=1)) as deltas:
        next(deltas)
        assert len(withheld_tables(warehouse)) == 1
        left = withheld_tables(warehouse)[0]
        warehouse.command(f"CREATE TABLE crumb.`{left}_left` (id String) ENGINE = Set SETTINGS persistent = 0")
    assert withheld_tables(warehouse) == [f"{left}_left"]
    drop_stale_withheld(warehouse, older_than_s=0)
    assert withheld_tables(warehouse) == []


def test_every_page_joins_the_matches_and_erasures_of_its_own_ids(warehouse: Client) -> None:
    """A page reads the matches and erasures of its range of IDs only: whatever the chunk, each
    row has its ID's partner ID ('' unmatched), matches of IDs next to it do not leak in, and an
    ID erased after the build sends nothing."""
    build_id = random.randint(10**15, 2 * 10**15)
    segments = sorted(random.sample(range(1_000_000, 2_000_000_000), 2))
    ids = sorted(f"join-{uuid.uuid4().hex[:12]}" for _ in range(6))
    unmatched, erased = ids[2], ids[4]
    now = int(time.time() * 1000)  # a match or a delta of 1970 is past its table's TTL
    warehouse.insert("crumb.id_deltas", [[build_id, now, i, "cookie", segments, []] for i in ids],
                     column_names=["build_id", "built_at", "id", "id_type", "entered", "exited"])
    neighbours = [f"{i}~" for i in ids]  # each sorts right after an ID of the build, in its page's range
    warehouse.insert("crumb.id_matches", [["join-partner", i, f"uid-{i}", now, 1] for i in ids + neighbours
                                          if i != unmatched],
                     column_names=["partner", "id", "partner_uid", "matched_at", "version"])
    warehouse.insert("crumb.erasures", [[uuid.uuid4(), erased, "test", now + 1000, now + 1000, []]],  # after it
                     column_names=["erasure_id", "id", "reason", "requested_at", "completed_at", "tables"])
    expected = [(s, i, "enter", "" if i == unmatched else f"uid-{i}") for i in ids if i != erased for s in segments]
    for chunk_rows in (1, 3, 100):
        pages = list(stream_deltas(warehouse, "joins", build_id, segments, "join-partner", 30, chunk_rows=chunk_rows))
        assert [(s, i, change, uid) for page in pages for s, i, change, uid, _ in page] == expected


def withheld_tables(client: Client) -> list[str]:
    return [r[0] for r in client.query(
        "SELECT name FROM system.tables WHERE database = 'crumb' AND startsWith(name, {p:String})",
        parameters={"p": WITHHELD_PREFIX}).result_rows]
