"""The Redis segment store against the real redis-server and a private copy of the build tables.

Each test gets its own ClickHouse database (copies of crumb.builds, id_deltas and id_segments,
with the views segment_deltas and segment_members) and its own Redis key prefix, so the shared
warehouse and Redis stay apart.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from clickhouse_connect.driver.client import Client
from redis.lock import Lock

from activation.store import DAY_S, SegmentCatalog, SegmentStore, StoreError
from audiences.definitions import Segment, parse_segment
from audiences.schema import DELTAS_VIEW
from crumb.migrations import Dialect
from tests.conftest import LiveServer

RULE = {"where": [{"field": "type", "op": "eq", "value": "pageview"}]}


def segment(segment_id: int, ttl_days: int = 30, **fields: Any) -> Segment:
    return parse_segment({"id": segment_id, "name": f"Segment {segment_id}", "ttl_days": ttl_days, "rule": RULE,
                          **fields})


CATALOG = SegmentCatalog.of([segment(101, ttl_days=7), segment(102, ttl_days=90), segment(103)])


def new_id() -> str:
    return secrets.token_hex(16)


NOW_MS = int(time.time() * 1000)  # deltas are kept for CRUMB_HISTORY_TTL_DAYS from their build's time


class Builds:
    """Writes builds, deltas and members into a test's own database."""

    def __init__(self, client: Client, db: str) -> None:
        self.client, self.db = client, db

    def build(self, build_id: int, status: str = "succeeded") -> None:
        self.client.insert(f"{self.db}.builds", [[build_id, status, time.time_ns()]],
                           column_names=["build_id", "status", "version"])

    def deltas(self, build_id: int, changes: list[tuple[int, str, str]], id_type: str = "cookie") -> None:
        """What a build changed, as the builder keeps it: a row per ID with the segments it entered
        and exited."""
        moved: dict[str, tuple[list[int], list[int]]] = {}
        for seg, i, change in changes:
            moved.setdefault(i, ([], []))[0 if change == "enter" else 1].append(seg)
        self.client.insert(f"{self.db}.id_deltas",
                           [[build_id, NOW_MS, i, id_type, entered, exited] for i, (entered, exited) in moved.items()],
                           column_names=["build_id", "built_at", "id", "id_type", "entered", "exited"])

    def members(self, build_id: int, members: list[tuple[int, str]], id_type: str = "cookie") -> None:
        """The members after a build, as the builder keeps them: a row per ID with its segments."""
        segments: dict[str, list[int]] = {}
        for seg, i in members:
            segments.setdefault(i, []).append(seg)
        self.client.command(f"TRUNCATE TABLE {self.db}.id_segments")
        self.client.insert(f"{self.db}.id_segments", [[i, id_type, i, segs, build_id] for i, segs in segments.items()],
                           column_names=["id", "id_type", "profile_id", "segments", "build_id"])

    def succeeded(self, build_id: int, changes: list[tuple[int, str, str]], members: list[tuple[int, str]]) -> None:
        """A whole build as the builder leaves it: deltas, the members after it, status."""
        self.deltas(build_id, changes)
        self.members(build_id, members)
        self.build(build_id)


@pytest.fixture
def redis_client(live_server: LiveServer) -> redis.Redis:
    return live_server.crumb.runtime.redis


@pytest.fixture
def builds(warehouse: Client) -> Iterator[Builds]:
    db = f"store_{uuid.uuid4().hex[:10]}"
    warehouse.command(f"CREATE DATABASE {db}")
    for table in ("builds", "id_deltas", "id_segments"):
        warehouse.command(f"CREATE TABLE {db}.{table} AS crumb.{table}")
    warehouse.command(Dialect().render(DELTAS_VIEW).replace("crumb.", f"{db}."))
    warehouse.command(f"CREATE VIEW {db}.segment_members AS SELECT segment_id, id, id_type, profile_id, build_id "
                      f"FROM {db}.id_segments ARRAY JOIN segments AS segment_id")
    yield Builds(warehouse, db)
    warehouse.command(f"DROP DATABASE {db}")


@pytest.fixture
def store(redis_client: redis.Redis, builds: Builds) -> Iterator[SegmentStore]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield SegmentStore(redis_client, catalog=CATALOG, prefix=prefix, database=builds.db)
    for key in redis_client.scan_iter(match=f"{prefix}:*"):
        redis_client.delete(key)


def test_first_build_enters_with_each_segments_ttl(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a, b = new_id(), new_id()
    builds.succeeded(1, [(101, a, "enter"), (102, a, "enter"), (103, b, "enter")], [(101, a), (102, a), (103, b)])
    loaded = store.load_build(warehouse, 1)
    assert loaded["mode"] == "deltas" and loaded["loaded"] == 3 and loaded["ids"] == 2
    assert store.segments_of(a) == [101, 102] and store.segments_of(b) == [103]
    now = time.time()
    expiries = {m.segment_id: m.expires_at - now for m in store.memberships(a)}
    assert expiries[101] == pytest.approx(7 * DAY_S, abs=60) and expiries[102] == pytest.approx(90 * DAY_S, abs=60)
    assert store._redis.ttl(store.key(a)) == pytest.approx(90 * DAY_S, abs=60)  # its longest membership
    assert store.applied_build() == 1


def test_next_build_applies_enters_and_exits(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a, b = new_id(), new_id()
    builds.succeeded(1, [(101, a, "enter"), (102, a, "enter"), (101, b, "enter")], [(101, a), (102, a), (101, b)])
    store.load_build(warehouse, 1)
    builds.succeeded(2, [(101, a, "exit"), (103, a, "enter"), (101, b, "exit")], [(102, a), (103, a)])
    loaded = store.load_build(warehouse, 2)
    assert loaded["mode"] == "deltas"
    assert store.segments_of(a) == [102, 103]
    assert store.segments_of(b) == [] and not store._redis.exists(store.key(b))  # no membership left: no key
    assert store.applied_build() == 2
    assert store.load_build(warehouse, 2)["mode"] == "skipped"  # applied already


def test_builds_that_did_not_succeed_are_not_loaded(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a = new_id()
    builds.deltas(1, [(101, a, "enter")])
    builds.build(1, "failed")
    assert store.load_build(warehouse, 1)["mode"] == "skipped"
    assert store.load_build(warehouse, 99)["mode"] == "skipped"  # unknown
    assert store.segments_of(a) == [] and store.applied_build() is None


def test_expired_memberships_are_not_read_and_are_dropped(store: SegmentStore, builds: Builds,
                                                          warehouse: Client) -> None:
    a = new_id()
    builds.succeeded(1, [(101, a, "enter")], [(101, a)])
    store.load_build(warehouse, 1)
    store._redis.hset(store.key(a), "102", int(time.time()) - 1)  # a membership past its expiry
    assert store.segments_of(a) == [101]
    builds.succeeded(2, [(103, a, "enter")], [(101, a), (103, a)])
    store.load_build(warehouse, 2)
    assert sorted(store._redis.hkeys(store.key(a))) == [b"101", b"103"]  # the next write drops it


def test_first_party_ids_have_their_own_keys(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a = new_id()
    builds.deltas(1, [(101, a, "enter")], id_type="fp")
    builds.build(1)
    store.load_build(warehouse, 1)
    assert store.segments_of(a, "fp") == [101] and store.segments_of(a) == []
    assert store.key(a, "fp").endswith(f"{{f:{a}}}:s")


def test_a_gap_in_builds_means_a_full_reload(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a, b, c = new_id(), new_id(), new_id()
    builds.succeeded(1, [(101, a, "enter"), (101, b, "enter")], [(101, a), (101, b)])
    store.load_build(warehouse, 1)
    builds.succeeded(2, [(101, b, "exit"), (102, c, "enter")], [(101, a), (102, c)])  # never loaded
    builds.succeeded(3, [(103, a, "enter")], [(101, a), (103, a), (102, c)])
    loaded = store.load_build(warehouse, 3)
    assert loaded["mode"] == "full" and "follows 2" in loaded["reason"]
    assert (store.segments_of(a), store.segments_of(b), store.segments_of(c)) == ([101, 103], [], [102])
    assert loaded["deleted_keys"] == 1  # b: in Redis, no longer a member of anything
    assert store._redis.hget(store.key(a), "0") is None  # the reload's marker is gone
    assert store.applied_build() == 3


def test_full_reload_recovers_an_emptied_redis(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a = new_id()
    builds.succeeded(1, [(101, a, "enter")], [(101, a)])
    store.load_build(warehouse, 1)
    for key in store._redis.scan_iter(match=f"{store._prefix}:*"):  # FLUSHDB, for this store's keys only
        store._redis.delete(key)
    builds.succeeded(2, [(102, a, "enter")], [(101, a), (102, a)])
    loaded = store.load_build(warehouse, 2)
    assert loaded["mode"] == "full" and loaded["ids"] == 1
    assert store.segments_of(a) == [101, 102] and store.applied_build() == 2


def test_a_server_start_restores_a_store_that_lost_everything(
        store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    # Lookups answered nothing until the next build loaded it, an interval later.
    assert store.restore(warehouse) is None  # no build succeeded yet: nothing to restore
    a = new_id()
    builds.succeeded(1, [(101, a, "enter")], [(101, a)])
    store.load_build(warehouse, 1)
    assert store.restore(warehouse) is None  # it holds the build
    for key in store._redis.scan_iter(match=f"{store._prefix}:*"):  # FLUSHDB, for this store's keys only
        store._redis.delete(key)
    restored = store.restore(warehouse)
    assert restored is not None and restored["mode"] == "full"
    assert store.segments_of(a) == [101] and store.applied_build() == 1


def test_kept_memberships_get_fresh_expiries_from_a_periodic_full_reload(
    store: SegmentStore, builds: Builds, warehouse: Client,
) -> None:
    a = new_id()
    builds.succeeded(1, [(101, a, "enter")], [(101, a)])
    store.load_build(warehouse, 1)
    store._redis.hset(store.key(a), "101", int(time.time()) + 60)  # about to lapse, though still a member
    store._redis.set(store._refreshed_key, int(time.time()) - 4 * DAY_S)  # past half of 101's 7 days
    builds.succeeded(2, [], [(101, a)])
    assert store.load_build(warehouse, 2)["mode"] == "full"
    assert store.memberships(a)[0].expires_at == pytest.approx(time.time() + 7 * DAY_S, abs=60)


def test_a_reader_never_sees_half_a_build(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    ids = [new_id() for _ in range(60)]
    builds.succeeded(1, [(s, i, "enter") for i in ids for s in (101, 102)], [(s, i) for i in ids for s in (101, 102)])
    store.load_build(warehouse, 1)
    builds.succeeded(2, [c for i in ids for c in ((101, i, "exit"), (102, i, "exit"), (103, i, "enter"))],
                     [(103, i) for i in ids])
    store._batch_ids = 5  # many pipelines: readers get to look between them
    seen: set[tuple[int, ...]] = set()
    pointers_while_loading: set[int | None] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for i in ids:
                seen.add(tuple(store.segments_of(i)))

    write = store._write

    def watched_write(*args: Any) -> None:
        pointers_while_loading.add(store.applied_build())
        write(*args)

    store._write = watched_write  # type: ignore[method-assign]
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert store.load_build(warehouse, 2)["mode"] == "deltas"
    finally:
        done.set()
        thread.join()
    assert seen <= {(101, 102), (103,)}  # whole before or whole after, per ID
    assert pointers_while_loading == {1} and store.applied_build() == 2


def test_erase_removes_both_kinds_of_key(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    a = new_id()
    builds.succeeded(1, [(101, a, "enter")], [(101, a)])
    store.load_build(warehouse, 1)
    store.erase([a])
    assert store.segments_of(a) == []


class ProbedLocks(redis.Redis):
    """The same Redis, whose locks tell when an attempt to take one found it held."""

    def __init__(self, client: redis.Redis, found_held: threading.Event) -> None:
        super().__init__(connection_pool=client.connection_pool)
        self.found_held = found_held

    def lock(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        probe = self.found_held

        class Probed(Lock):
            def do_acquire(self, token: Any) -> bool:
                acquired = super().do_acquire(token)
                if not acquired:
                    probe.set()
                return acquired

        return super().lock(name, *args, lock_class=Probed, **kwargs)


def test_an_erasure_waits_for_a_running_load_instead_of_being_undone_by_it(
        store: SegmentStore, builds: Builds, warehouse: Client, redis_client: redis.Redis) -> None:
    a = new_id()
    builds.succeeded(1, [(101, a, "enter")], [(101, a)])
    read, erasing = threading.Event(), threading.Event()
    write = store._write

    def write_after_the_erasure_started(*args: Any) -> None:
        read.set()  # the load has read the ID's rows
        assert erasing.wait(30)  # the erasure found the store's lock held, or (without it) is done
        write(*args)

    store._write = write_after_the_erasure_started  # type: ignore[method-assign]
    loading = threading.Thread(target=store.full_reload, args=(warehouse,))
    loading.start()
    assert read.wait(30)
    eraser = SegmentStore(ProbedLocks(redis_client, erasing), prefix=store._prefix, database=builds.db)
    erasure = threading.Thread(target=lambda: (eraser.erase([a]), erasing.set()))
    erasure.start()
    loading.join()
    erasure.join()
    assert store.segments_of(a) == []  # the load's write came first, then the erasure


def test_an_erasure_gives_up_when_a_load_keeps_running(store: SegmentStore, redis_client: redis.Redis) -> None:
    a = new_id()
    store.put([(a, [101])])
    running_load = redis_client.lock(store._lock_key, timeout=60)
    assert running_load.acquire(blocking=False)
    try:
        with pytest.raises(StoreError, match="erase again later"):
            store.erase([a], wait_s=0)
    finally:
        running_load.release()
    assert store.segments_of(a) == [101]


def test_bytes_per_membership(store: SegmentStore, builds: Builds, warehouse: Client) -> None:
    ids = [new_id() for _ in range(300)]
    builds.succeeded(1, [(s, i, "enter") for i in ids for s in (101, 102, 103)], [])
    store.load_build(warehouse, 1)
    measured = store.bytes_per_membership()
    print(f"\nsegment store: {measured}")
    assert measured["memberships"] == 900
    assert measured["bytes_per_membership"] < 60  # ~130 B a key of three memberships


def test_catalog_reloads_when_the_definitions_change(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from activation import store as store_module

    monkeypatch.setattr(store_module, "CATALOG_CHECK_S", 0)
    (tmp_path / "a.yaml").write_text("id: 101\nname: One\nttl_days: 5\nrule: {where: []}\n")
    catalog = SegmentCatalog(tmp_path)
    assert catalog.ttl_days(101) == 5 and catalog.ttl_days(999) == 30
    (tmp_path / "a.yaml").write_text("id: 101\nname: One\nttl_days: 12\nrule: {where: []}\n")
    assert catalog.ttl_days(101) == 12
    (tmp_path / "a.yaml").write_text("id: 101\nname: [broken\n")
    assert catalog.ttl_days(101) == 12  # a broken edit keeps the last good definitions
