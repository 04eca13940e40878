"""The Redis segment store: which segments each cookie (or first-party) ID is in, for lookups.

Layout (every key hash-tagged, so Redis Cluster keeps each ID's key on one slot):

    crumb:{c:<cookie id>}:s    hash  segment_id → expiry (epoch seconds); `f:` for first-party IDs
    crumb:{store}:build        the last build fully applied
    crumb:{store}:refreshed    when every key was last rewritten (epoch seconds)
    crumb:{store}:lock         one loader at a time, across processes

A membership lives until `now + ttl_days` of its segment, written when it enters and rewritten
by every full reload; a key expires with its longest membership, and readers drop expired
entries. Small hashes of small integers are ziplist/listpack-encoded: a membership costs about
9 bytes beside the key's own ~100 (`bytes_per_membership` measures it).

What a reader sees. Each ID's key changes in one EVALSHA (a Lua script is atomic), so a reader
sees all of one build's changes for that ID or none of them, never a key half-updated. While a
build loads, some IDs already answer from build N and others still from N-1; `crumb:{store}:build`
moves to N only after every delta of N is applied, so it always names a build whose changes are
all in Redis. `load_build` applies a build's deltas only onto the build before it: when the
pointer is missing (an empty or flushed Redis) or names another build (a gap), or when kept
memberships are due to have their expiry refreshed, it does a full reload instead.

A full reload rewrites each member ID's key from `segment_members` (one EVALSHA per key, which
also tags the key with the reload's marker in field 0), then scans the store's keys: a tagged key
loses its tag, an untagged one holds no current member and is deleted. Segment IDs start at 1,
so field 0 never collides with one; readers skip it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from clickhouse_connect.driver.client import Client
from redis.commands.core import Script

from audiences.definitions import Segment, SegmentSet, Status
from collector.optouts import opted_out_async
from crumb.settings import Settings

log = logging.getLogger("crumb.activation.store")

DEFAULT_TTL_DAYS = 30  # a segment whose definition is gone: Segment's own default
BATCH_IDS = 1000  # IDs per pipeline
BUCKET_ROWS = 500_000  # rows per ClickHouse query: each GROUP BY stays small on the server
DAY_S = 86_400
CATALOG_CHECK_S = 1.0  # how often the definitions dir is looked at for changes
CATALOG_RELOAD_S = 60.0  # and reloaded regardless
ID_TYPES = {"cookie": "c", "fp": "f"}
LOAD_LOCK_S = 3600  # the store's lock: held by a load (a full reload of millions takes minutes)
# How long an erasure waits for a running load to end: well within the builds' lock it holds
# (`crumb.privacy.erase`, 600 s), with its DELETEs.
ERASE_WAIT_S = 300.0
MARKER_FIELD = b"0"

# One ID's key. ARGV: now, mode ('d' apply deltas, 'r' replace), marker ('' none), then
# segment/expiry pairs (expiry 0 removes). Drops expired fields, expires the key with its longest membership.
_APPLY = """
local key, now = KEYS[1], tonumber(ARGV[1])
if ARGV[2] == 'r' then redis.call('DEL', key) end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '0' then redis.call('HDEL', key, ARGV[i]) else redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
local flat, top, gone = redis.call('HGETALL', key), 0, {}
for i = 1, #flat, 2 do
  if flat[i] ~= '0' then
    local e = tonumber(flat[i + 1])
    if e <= now then gone[#gone + 1] = flat[i] elseif e > top then top = e end
  end
end
if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
if top == 0 then redis.call('DEL', key) return 0 end
if ARGV[3] ~= '' then redis.call('HSET', key, '0', ARGV[3]) end
redis.call('EXPIREAT', key, top)
return 1
"""

# After a full reload: keep a key the reload wrote (untag it), delete one it did not.
_SWEEP = """
if redis.call('HGET', KEYS[1], '0') == ARGV[1] then redis.call('HDEL', KEYS[1], '0') return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class StoreError(Exception):
    """The store could not be loaded (a concurrent build swapped the members under a reload)."""


@dataclass(frozen=True, slots=True, order=True)
class Membership:
    segment_id: int
    expires_at: int


class SegmentCatalog:
    """Segment definitions as the store and the lookup need them (ttl, name, IAB ID), cached:
    reloaded when the definitions directory changes, and every minute regardless."""

    def __init__(self, directory: Path | None, settings: Settings | None = None) -> None:
        self._directory = directory
        self._settings = settings
        self._segments: dict[int, Segment] = {}
        self._signature: tuple[Any, ...] = ()
        self._checked = self._loaded = float("-inf")

    @classmethod
    def of(cls, segments: Iterable[Segment]) -> SegmentCatalog:
        """A fixed catalog (tests, tools): never reloaded."""
        catalog = cls(None)
        catalog._segments = {s.id: s for s in segments}
        catalog._checked = catalog._loaded = float("inf")
        return catalog

    @classmethod
    def from_settings(cls, settings: Settings) -> SegmentCatalog:
        return cls(settings.segments_dir, settings)

    def segments(self) -> Mapping[int, Segment]:
        now = time.monotonic()
        if now - self._checked >= CATALOG_CHECK_S:
            self._checked = now
            signature = self._dir_signature()
            if signature != self._signature or now - self._loaded >= CATALOG_RELOAD_S:
                self._reload(signature, now)
        return self._segments

    def active(self, segment_id: int) -> Segment | None:
        segment = self.segments().get(segment_id)
        return segment if segment is not None and segment.status is Status.ACTIVE else None

    def ttl_days(self, segment_id: int) -> int:
        segment = self.segments().get(segment_id)
        return segment.ttl_days if segment is not None else DEFAULT_TTL_DAYS

    def _dir_signature(self) -> tuple[Any, ...]:
        if self._directory is None or not self._directory.is_dir():
            return ()
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                            for p in self._directory.iterdir() if p.suffix in (".yaml", ".yml")))

    def _reload(self, signature: tuple[Any, ...], now: float) -> None:
        from audiences.jobs import load_definitions

        settings = self._settings or Settings.model_validate({})
        try:
            loaded = load_definitions(self._directory, settings) if signature else SegmentSet([])
        except Exception as exc:  # a broken edit must not take lookups down: keep what we had
            log.warning("segment definitions not reloaded: %s", exc)
            return
        self._segments, self._signature, self._loaded = dict(loaded.by_id), signature, now


@dataclass
class LoadStats:
    build_id: int
    mode: str  # 'deltas', 'full', or 'skipped'
    ids: int = 0
    changes: int = 0
    deleted_keys: int = 0
    seconds: float = 0.0
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"build_id": self.build_id, "mode": self.mode, "loaded": self.changes, "ids": self.ids,
                "deleted_keys": self.deleted_keys, "seconds": round(self.seconds, 3), "reason": self.reason}


class SegmentStore:
    def __init__(
        self, redis_client: redis.Redis, *, catalog: SegmentCatalog | None = None, prefix: str = "crumb",
        database: str = "crumb", batch_ids: int = BATCH_IDS,
    ) -> None:
        self._redis = redis_client
        self.catalog = catalog  # None: every segment gets DEFAULT_TTL_DAYS
        self._prefix = prefix
        self._db = database
        self._batch_ids = batch_ids
        self.build_key = f"{prefix}:{{store}}:build"
        self._refreshed_key = f"{prefix}:{{store}}:refreshed"
        self._lock_key = f"{prefix}:{{store}}:lock"
        self._apply = redis_client.register_script(_APPLY)
        self._sweep = redis_client.register_script(_SWEEP)
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None

    def key(self, member_id: str, id_type: str = "cookie") -> str:
        return f"{self._prefix}:{{{ID_TYPES[id_type]}:{member_id}}}:s"

    # -- reading

    def segments_of(self, cookie_id: str, id_type: str = "cookie") -> list[int]:
        return live_segments(self._redis.hgetall(self.key(cookie_id, id_type)), time.time())

    def active_segments_of(self, member_id: str, id_type: str = "cookie") -> list[int]:
        """Its segments that are active in the catalog: what a lookup answers."""
        return [s.id for s in self.active(self.segments_of(member_id, id_type))]

    def active(self, segment_ids: Iterable[int]) -> list[Segment]:
        """Those of the segments the catalog has active. A segment paused or removed keeps its
        memberships until the next build exits them; no catalog, none."""
        catalog = self.catalog or SegmentCatalog.of([])
        return [s for s in map(catalog.active, segment_ids) if s is not None]

    def memberships(self, member_id: str, id_type: str = "cookie") -> list[Membership]:
        raw = self._redis.hgetall(self.key(member_id, id_type))
        return sorted(Membership(int(s), int(e)) for s, e in raw.items() if s != MARKER_FIELD)

    async def segments_of_async(self, member_id: str, id_type: str = "cookie") -> list[int]:
        """The same read on the event loop: one HGETALL through redis.asyncio."""
        raw = await self._async_client().hgetall(self.key(member_id, id_type))
        return live_segments(raw, time.time())

    async def opted_out_async(self, member_id: str) -> bool:
        """Whether the ID is in the collector's opt-out set, through the store's event-loop client."""
        return await opted_out_async(self._async_client(), member_id)

    def applied_build(self) -> int | None:
        value = self._redis.get(self.build_key)
        return int(value) if value is not None else None

    async def applied_build_async(self) -> int | None:
        value = await self._async_client().get(self.build_key)
        return int(value) if value is not None else None

    def _async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:  # connections belong to one loop
            self._async = (loop, async_twin(self._redis))
        return self._async[1]

    # -- writing

    def load_build(self, client: Client, build_id: int, *, force_full: bool = False) -> dict[str, Any]:
        """Apply a succeeded build: its deltas onto the build before it, else a full reload."""
        started = time.monotonic()
        if self._status(client, build_id) != "succeeded":
            return LoadStats(build_id, "skipped", reason="build did not succeed").as_dict()
        with self._redis.lock(self._lock_key, timeout=LOAD_LOCK_S, blocking_timeout=LOAD_LOCK_S):
            stats = self._load_locked(client, build_id, force_full)
        stats.seconds = time.monotonic() - started
        log.info("segment store: %s", stats.as_dict())
        return stats.as_dict()

    def _load_locked(self, client: Client, build_id: int, force_full: bool) -> LoadStats:
        applied = self.applied_build()
        if applied is not None and applied >= build_id:
            return LoadStats(build_id, "skipped", reason=f"build {applied} already applied")
        previous = self._previous_succeeded(client, build_id)
        if previous is None and applied is None and not force_full:
            stats = self._apply_deltas(client, build_id)  # the first build ever: its deltas are everything
            self._redis.set(self._refreshed_key, int(time.time()))
            return stats
        if force_full or applied != previous:
            return self._reload_locked(client, "forced" if force_full else
                                       f"store at build {applied}, build {build_id} follows {previous}")
        if self._refresh_due():
            return self._reload_locked(client, "kept memberships due for an expiry refresh")
        return self._apply_deltas(client, build_id)

    def restore(self, client: Client) -> dict[str, Any] | None:
        """At a server's start: a store that holds no build while the warehouse has a successful
        one (its Redis flushed, or restarted without its data) is reloaded whole. Lookups answered
        nothing until the next build loaded it, an interval later."""
        if self.applied_build() is not None or self._latest_succeeded(client) is None:
            return None
        return self.full_reload(client)

    def full_reload(self, client: Client) -> dict[str, Any]:
        """Rebuild every key from `segment_members`: recovers an empty or stale Redis."""
        started = time.monotonic()
        with self._redis.lock(self._lock_key, timeout=LOAD_LOCK_S, blocking_timeout=LOAD_LOCK_S):
            stats = self._reload_locked(client, "requested")
        stats.seconds = time.monotonic() - started
        return stats.as_dict()

    def put(self, members: Iterable[tuple[str, Iterable[int]]], id_type: str = "cookie") -> int:
        """Set IDs' memberships outright (seeding for tests and benchmarks; builds use load_build)."""
        stats = LoadStats(0, "put")
        listed = ((member_id, list(segment_ids)) for member_id, segment_ids in members)
        rows = ((member_id, id_type, segment_ids, [1] * len(segment_ids)) for member_id, segment_ids in listed)
        for batch in _batches(rows, self._batch_ids):
            self._write(batch, int(time.time()), "r", "", stats)
        return stats.ids

    def erase(self, ids: Iterable[str], wait_s: float = ERASE_WAIT_S) -> None:
        """Forget IDs (erasure): both kinds, since an ID's form does not say which it is. Between
        loads: a load that read the IDs' rows before they were erased from the warehouse would
        write their keys again after this deleted them. The warehouse's rows go first
        (`crumb.privacy.ERASERS`), so a load that starts after this reads none."""
        keys = [self.key(i, t) for i in ids for t in ID_TYPES]
        lock = self._redis.lock(self._lock_key, timeout=LOAD_LOCK_S, blocking_timeout=wait_s)
        if not lock.acquire():
            raise StoreError(f"a segment store load kept running for {wait_s:.0f}s; erase again later")
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(key)  # one key per command: keys of different IDs sit on different slots
                pipe.execute()
        finally:
            lock.release()

    def _apply_deltas(self, client: Client, build_id: int) -> LoadStats:
        stats = LoadStats(build_id, "deltas")
        now = int(time.time())
        # Read per ID, as the builder writes them (`id_deltas`); grouped, as an ID may have several rows.
        sql = (f"SELECT id, id_type, groupArrayArray(arrayConcat(entered, exited)), "
               "groupArrayArray(arrayConcat(arrayMap(s -> toInt8(1), entered), arrayMap(s -> toInt8(0), exited))) "
               f"FROM {self._db}.id_deltas WHERE build_id = {{build_id:UInt64}} AND {{bucket}} "
               "GROUP BY id, id_type")
        count_sql = (f"SELECT sum(length(entered) + length(exited)) FROM {self._db}.id_deltas "
                     "WHERE build_id = {build_id:UInt64}")
        rows = _bucketed(client, sql, count_sql, {"build_id": build_id})
        for batch in _batches(rows, self._batch_ids):
            self._write(batch, now, "d", "", stats)
        self._redis.set(self.build_key, build_id)
        return stats

    def _reload_locked(self, client: Client, reason: str) -> LoadStats:
        for _attempt in range(3):
            before = self._latest_succeeded(client)
            stats = LoadStats(before or 0, "full", reason=reason)
            marker = secrets.token_hex(4)
            now = int(time.time())
            sql = (f"SELECT id, id_type, groupArray(segment_id), groupArray(toInt8(1)) "
                   f"FROM {self._db}.segment_members WHERE {{bucket}} GROUP BY id, id_type")
            rows = _bucketed(client, sql, f"SELECT count() FROM {self._db}.segment_members", {})
            for batch in _batches(rows, self._batch_ids):
                self._write(batch, now, "r", marker, stats)
            stats.deleted_keys = self._sweep_unmarked(marker)
            if self._latest_succeeded(client) == before:  # no build swapped the members meanwhile
                with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(self.build_key, before or 0)
                    pipe.set(self._refreshed_key, now)
                    pipe.execute()
                return stats
        raise StoreError("builds kept replacing segment_members during the full reload")

    def _write(self, batch: list[tuple[Any, ...]], now: int, mode: str, marker: str, stats: LoadStats) -> None:
        calls = []
        for member_id, id_type, segment_ids, enters in batch:
            args: list[Any] = [now, mode, marker]
            for segment_id, enter in zip(segment_ids, enters, strict=True):
                args += [segment_id, now + self._ttl_s(segment_id) if enter else 0]
            calls.append((self.key(member_id, id_type), args))
            stats.changes += len(segment_ids)
        self._scripted(self._apply, calls)
        stats.ids += len(batch)

    def _scripted(self, script: Script, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """`script` once per (key, args), pipelined; the replies in order. A cluster client's
        pipeline refuses scripts (EVALSHA), so there each node's own client pipelines the calls
        of the keys it serves: each call names one key."""
        if not isinstance(self._redis, redis.RedisCluster):
            return _pipelined(self._redis, script, calls)
        by_node: dict[str, tuple[redis.Redis, list[int]]] = {}
        for index, (key, _args) in enumerate(calls):
            node = self._redis.get_node_from_key(key)
            by_node.setdefault(node.name, (node.redis_connection, []))[1].append(index)
        replies: list[Any] = [None] * len(calls)
        for client, indexes in by_node.values():
            for index, reply in zip(indexes, _pipelined(client, script, [calls[i] for i in indexes]), strict=True):
                replies[index] = reply
        return replies

    def _ttl_s(self, segment_id: int) -> int:
        return (self.catalog.ttl_days(segment_id) if self.catalog else DEFAULT_TTL_DAYS) * DAY_S

    def _sweep_unmarked(self, marker: str) -> int:
        deleted = 0
        for kind in ID_TYPES.values():
            keys = self._redis.scan_iter(match=f"{self._prefix}:{{{kind}:*}}:s", count=1000)
            for batch in _batches(keys, self._batch_ids):
                deleted += sum(self._scripted(self._sweep, [(key, [marker]) for key in batch]))
        return deleted

    def _refresh_due(self) -> bool:
        """Kept memberships are rewritten (a full reload) before half the shortest TTL has passed."""
        refreshed = self._redis.get(self._refreshed_key)
        shortest = min((s.ttl_days for s in self.catalog.segments().values()), default=DEFAULT_TTL_DAYS) \
            if self.catalog else DEFAULT_TTL_DAYS
        return refreshed is None or time.time() - int(refreshed) > shortest * DAY_S / 2

    def _status(self, client: Client, build_id: int) -> str:
        rows = client.query(f"SELECT status FROM {self._db}.builds FINAL WHERE build_id = {{b:UInt64}}",
                            parameters={"b": build_id}).result_rows
        return str(rows[0][0]) if rows else ""

    def _previous_succeeded(self, client: Client, build_id: int) -> int | None:
        rows = client.query(
            f"SELECT max(build_id), count() FROM {self._db}.builds FINAL "
            "WHERE status = 'succeeded' AND build_id < {b:UInt64}", parameters={"b": build_id}).result_rows
        return int(rows[0][0]) if rows[0][1] else None

    def _latest_succeeded(self, client: Client) -> int | None:
        rows = client.query(f"SELECT max(build_id), count() FROM {self._db}.builds FINAL "
                            "WHERE status = 'succeeded'").result_rows
        return int(rows[0][0]) if rows[0][1] else None

    def bytes_per_membership(self, sample: int = 1000) -> dict[str, float]:
        """MEMORY USAGE over up to `sample` keys: bytes per key and per membership."""
        keys = []
        for kind in ID_TYPES.values():
            for key in self._redis.scan_iter(match=f"{self._prefix}:{{{kind}:*}}:s", count=1000):
                keys.append(key)
                if len(keys) >= sample:
                    break
        with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
                pipe.hlen(key)
            replies = pipe.execute()
        total, members = sum(replies[0::2]), sum(replies[1::2])
        return {"keys": len(keys), "memberships": members, "bytes_per_key": total / max(len(keys), 1),
                "bytes_per_membership": total / max(members, 1)}


def live_segments(raw: Mapping[Any, Any], now: float) -> list[int]:
    """Segment IDs of an HGETALL reply whose expiry has not passed (the marker field skipped)."""
    return sorted(int(s) for s, e in raw.items() if s != MARKER_FIELD and int(e) > now)


def async_twin(client: redis.Redis) -> redis.asyncio.Redis:
    """A redis.asyncio client to the same server as a sync one: the same options, and for a
    cluster its credentials and TLS."""
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()
        pool = node.redis_connection.connection_pool
        options = pool.connection_kwargs  # a password-protected cluster's credentials, TLS
        return redis.asyncio.RedisCluster(  # type: ignore[return-value]
            host=node.host, port=node.port, username=options.get("username"), password=options.get("password"),
            ssl=issubclass(pool.connection_class, redis.SSLConnection))
    kwargs = dict(client.connection_pool.connection_kwargs)
    if "path" in kwargs:
        kwargs["connection_class"] = redis.asyncio.UnixDomainSocketConnection
    elif client.connection_pool.connection_class is redis.SSLConnection:
        kwargs["connection_class"] = redis.asyncio.SSLConnection
    kwargs.pop("health_check_interval", None)
    return redis.asyncio.Redis(connection_pool=redis.asyncio.ConnectionPool(**kwargs))


def _pipelined(client: redis.Redis, script: Script, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for key, args in calls:
            script(keys=[key], args=args, client=pipe)
        return pipe.execute()


def _bucketed(client: Client, sql: str, count_sql: str, params: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """Rows of `sql` grouped per ID, one hash bucket of IDs per query, streamed in blocks."""
    total = int(client.query(count_sql, parameters=params).result_rows[0][0])
    buckets = max(1, -(-total // BUCKET_ROWS))
    for bucket in range(buckets):
        query = sql.replace("{bucket}", "cityHash64(id) % {n:UInt32} = {i:UInt32}")
        with client.query_row_block_stream(query, parameters={**params, "n": buckets, "i": bucket}) as stream:
            for block in stream:
                yield from block


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
