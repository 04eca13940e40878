"""Erasure: remove an ID from everything we hold, and record that we did.

Each package registers what it holds (an `Eraser` per table or key space); `erase` runs them
all and writes the ledger. Opt-outs queue their IDs here, and the server's privacy worker
erases them in batches off the request path.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from clickhouse_connect.driver.client import Client

from crumb.errors import CrumbError
from crumb.warehouse import on_cluster

log = logging.getLogger("crumb.privacy")

ERASE_QUEUE_KEY = "crumb:{privacy}:erase"
ERASE_LOCK_KEY = "crumb:{privacy}:erase-lock"  # one worker at a time, across replicas
# Held by a segment build from start to end (`audiences.jobs`), and by an erasure: a build reads
# the events, the rollup and the last build's profiles at different moments, and an erasure
# between two of those reads would leave it with half an ID, or see its rows put back by the
# build's swap.
BUILD_LOCK_KEY = "crumb:{audiences}:build-lock"
BUILD_WAIT_S = 600.0  # how long a requested erasure waits for a running build to end
# The lock's lease: renewed by its holder every third of it. A holder that stops without releasing
# it (kill -9, out of memory, a server stopped mid-build) frees it within a lease. Held for a
# build's longest run instead (6 h), it kept every build and erasure out for that long, and an
# embedded Redis saved it across the restart.
BUILD_LOCK_LEASE_S = 60.0


@contextmanager
def build_lock(redis_client: redis.Redis, wait_s: float, busy: CrumbError,
               lease_s: float = BUILD_LOCK_LEASE_S) -> Iterator[None]:
    """Held while nothing else that takes it runs, anywhere: a segment build, an erasure, pending
    migrations. Waits up to `wait_s` for it, then raises `busy`; renewed while held, it expires
    `lease_s` after its holder stops renewing it."""
    # Not thread-local: its token is the renewing thread's too.
    lock = redis_client.lock(BUILD_LOCK_KEY, timeout=lease_s, blocking=wait_s > 0, blocking_timeout=wait_s or None,
                             thread_local=False)
    if not lock.acquire():
        raise busy
    released = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, lease_s / 3, released), name="crumb-build-lock",
                               daemon=True)
    renewer.start()
    try:
        yield
    finally:
        released.set()
        renewer.join()
        try:
            lock.release()
        except redis.exceptions.LockNotOwnedError:  # lost while held (`_renew` said so): the work is done
            log.error("the build lock had expired when released")


def _renew(lock: redis.lock.Lock, every_s: float, released: threading.Event) -> None:
    while not released.wait(every_s):
        try:
            lock.reacquire()  # its time to live back to the whole lease
        except redis.exceptions.LockNotOwnedError:
            log.error("the build lock expired while held: another build or erasure may run beside this one")
            return
        except redis.RedisError:  # Redis away for a moment: the next renewal may reach it in time
            log.warning("could not renew the build lock", exc_info=True)


class ErasureDeferred(CrumbError):
    """A segment build kept running: the erasure did not start, and can be asked again."""

    code = "erasure_deferred"


@dataclass(frozen=True)
class Eraser:
    name: str  # what it erases from, as the ledger records it, e.g. "crumb.events"
    erase: Callable[[Client, redis.Redis, list[str]], None]


# What builds recorded of the IDs' events (their counts and digests per hour and day), taken out.
BUILDS_RECORDS = "crumb.segment_build_state, segment_rollup_days"


def _typed(ids: Sequence[str]) -> list[str]:
    """The IDs as profiles, rolled-up rows and scores key them: each as a cookie and as a first-party ID."""
    return [f"{kind}:{i}" for i in ids for kind in ("c", "f")]


def _note_for_builds(client: Client, ids: list[str]) -> Callable[[], None]:
    """Before the erasers: read what the builds counted of the IDs; returns what to record once
    they all succeeded, so that the next build recomputes only the IDs' profiles and rolls up again
    only the rows that held them (`audiences.incremental`, `audiences.rollup`). Not recorded (an
    eraser failed), the next build finds events gone and recomputes everything."""
    from audiences import incremental, rollup

    records = [incremental.note_erasure(client, ids, _typed(ids)), rollup.note_erasure(client, ids)]

    def record() -> None:
        for each in records:
            each()
    return record


def _erase_events(client: Client, _redis: redis.Redis, ids: list[str]) -> None:
    client.command(
        f"DELETE FROM crumb.events {on_cluster(client)} "
        "WHERE cookie_id IN {ids:Array(String)} OR fp_id IN {ids:Array(String)}",
        parameters={"ids": ids},
    )


def _queue_removals(client: Client, _redis: redis.Redis, ids: list[str]) -> None:
    from activation.removals import queue_removals

    queue_removals(client, ids)


def _erase_scores(client: Client, _redis: redis.Redis, ids: list[str]) -> None:
    typed = _typed(ids)
    client.command("DELETE FROM crumb.lookalike_scores WHERE profile IN {ids:Array(String)}", parameters={"ids": typed})


def _erase_memberships(client: Client, _redis: redis.Redis, ids: list[str]) -> None:
    # The current members (what a full reload of the Redis store reads), what each build changed
    # and the membership intervals. Destinations that got the ID learn of it from the removals.
    # The `_next` tables hold the build before the last one's rows after a swap, until the next
    # build empties them.
    for table in ("id_segments", "id_segments_next", "id_deltas", "segment_history_closed"):
        client.command(f"DELETE FROM crumb.{table} {on_cluster(client)} WHERE id IN {{ids:Array(String)}}",
                       parameters={"ids": ids})
    # The last build's profiles, by typed ID.
    for table in ("segment_profiles", "segment_profiles_next"):
        client.command(f"DELETE FROM crumb.{table} {on_cluster(client)} WHERE id IN {{typed:Array(String)}}",
                       parameters={"typed": _typed(ids)})


def _erase_rollup(client: Client, _redis: redis.Redis, ids: list[str]) -> None:
    # The build's rolled-up hours and their totals per ID (audiences.rollup): the IDs' own, and
    # the cookies' that held a first-party ID among them (in their links, and in their counts).
    from audiences.rollup import forget_ids

    forget_ids(client, ids, _typed(ids))


def _erase_matches(client: Client, redis_client: redis.Redis, ids: list[str]) -> None:
    from activation.idsync import erase_matches

    erase_matches(client, redis_client, ids)


def _erase_from_store(_client: Client, redis_client: redis.Redis, ids: list[str]) -> None:
    from activation.store import SegmentStore

    SegmentStore(redis_client).erase(ids)


ERASERS: list[Eraser] = [
    Eraser("crumb.events", _erase_events),
    Eraser("crumb.id_matches", _erase_matches),
    Eraser("crumb.lookalike_scores", _erase_scores),
    Eraser("crumb.id_segments(_next), segment_profiles(_next), id_deltas, segment_history_closed",
           _erase_memberships),
    Eraser("crumb.segment_rollup, segment_rollup_totals", _erase_rollup),
    # After the memberships and deltas it loads from: a load that starts later finds none of the
    # IDs, and one that is running ends before the store forgets them (`SegmentStore.erase`).
    Eraser("redis segment store", _erase_from_store),
    # What destinations received moves to the removals the next `crumb activate sync` sends.
    Eraser("crumb.delivered (removals queued for destinations)", _queue_removals),
]


def erase(client: Client, redis_client: redis.Redis, ids: Sequence[str], reason: str,
          wait_s: float = BUILD_WAIT_S, before: Callable[[list[str]], None] = lambda ids: None) -> list[str]:
    """Erase the IDs everywhere; returns the tables and key spaces erased from. Never while a
    segment build runs: it waits up to `wait_s` for one to end, then raises ErasureDeferred.
    `before` runs first, once no build can start (the opt-out worker records its IDs there)."""
    ids = sorted({i for i in ids if i})
    if not ids:
        return []
    requested_ms = int(time.time() * 1000)
    deferred = ErasureDeferred(f"a segment build is still running after {wait_s:.0f}s; erase again later")
    with build_lock(redis_client, wait_s, busy=deferred):
        before(ids)
        record_for_builds = _note_for_builds(client, ids)
        for eraser in ERASERS:
            eraser.erase(client, redis_client, ids)
        record_for_builds()
    names = [eraser.name for eraser in ERASERS] + [BUILDS_RECORDS]
    completed_ms = int(time.time() * 1000)
    client.insert(
        "crumb.erasures",
        [[str(uuid.uuid4()), i, reason, requested_ms, completed_ms, names] for i in ids],
        column_names=["erasure_id", "id", "reason", "requested_at", "completed_at", "tables"],
    )
    return names


# -- export: what Crumb holds about one ID (a data subject's access request) ----------------------


@dataclass(frozen=True)
class Exporter:
    name: str  # what it reads, as the export names it, e.g. "crumb.events"
    export: Callable[[Client, redis.Redis, str], list[dict[str, Any]]]


def _rows(sql: str) -> Callable[[Client, redis.Redis, str], list[dict[str, Any]]]:
    """An exporter of the rows `sql` selects, with the ID as `{id:String}` and its typed forms
    (cookie and first-party, as profiles and scores key them) as `{typed:Array(String)}`."""
    def export(client: Client, _redis: redis.Redis, member_id: str) -> list[dict[str, Any]]:
        result = client.query(sql, parameters={"id": member_id, "typed": _typed([member_id])})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    return export


def _export_from_store(_client: Client, redis_client: redis.Redis, member_id: str) -> list[dict[str, Any]]:
    from activation.store import SegmentStore

    store = SegmentStore(redis_client)
    return [{"id_type": id_type, "segment_id": m.segment_id, "expires_at": m.expires_at}
            for id_type in ("cookie", "fp") for m in store.memberships(member_id, id_type)]


EXPORTERS: list[Exporter] = [
    Exporter("crumb.events", _rows(
        "SELECT * FROM crumb.events WHERE cookie_id = {id:String} OR fp_id = {id:String} ORDER BY ts")),
    Exporter("crumb.optouts", _rows("SELECT * FROM crumb.optouts FINAL WHERE id = {id:String}")),
    Exporter("crumb.erasures", _rows("SELECT * FROM crumb.erasures WHERE id = {id:String} ORDER BY requested_at")),
    Exporter("crumb.segment_members", _rows(
        "SELECT * FROM crumb.segment_members WHERE id = {id:String} ORDER BY segment_id, id_type")),
    Exporter("crumb.segment_history", _rows(
        "SELECT * FROM crumb.segment_history WHERE id = {id:String} ORDER BY segment_id, entered_at")),
    # The tables, not their views: `segment_deltas` and `segment_history` show succeeded builds'
    # rows only, and an export is of everything held, a failed build's leftovers too.
    Exporter("crumb.id_deltas", _rows("SELECT * FROM crumb.id_deltas WHERE id = {id:String} ORDER BY build_id")),
    Exporter("crumb.segment_history_closed", _rows(
        "SELECT * FROM crumb.segment_history_closed WHERE id = {id:String} ORDER BY segment_id, entered_at")),
    Exporter("crumb.segment_profiles", _rows(
        "SELECT * FROM crumb.segment_profiles WHERE id IN {typed:Array(String)} ORDER BY id")),
    Exporter("crumb.lookalike_scores", _rows(
        "SELECT * FROM crumb.lookalike_scores WHERE profile IN {typed:Array(String)} ORDER BY segment_id, run_id")),
    Exporter("crumb.id_matches", _rows("SELECT * FROM crumb.id_matches FINAL WHERE id = {id:String}")),
    Exporter("crumb.delivered", _rows("SELECT * FROM crumb.delivered FINAL WHERE id = {id:String}")),
    Exporter("crumb.pending_removals", _rows("SELECT * FROM crumb.pending_removals FINAL WHERE id = {id:String}")),
    Exporter("crumb.dead_letters", _rows("SELECT * FROM crumb.dead_letters WHERE id = {id:String}")),
    Exporter("redis segment store", _export_from_store),
]


def export(client: Client, redis_client: redis.Redis, member_id: str) -> dict[str, Any]:
    """Everything Crumb holds about the ID (as a cookie or a first-party ID), by where it is held:
    rows as the warehouse returns them (the CLI and the control endpoint write times and UUIDs as
    text, as for every command)."""
    return {"id": member_id, "exported_at": dt.datetime.now(dt.UTC),
            "held": {exporter.name: exporter.export(client, redis_client, member_id) for exporter in EXPORTERS}}


def queue_erasure(redis_client: redis.Redis, ids: Sequence[str]) -> None:
    if ids:
        redis_client.rpush(ERASE_QUEUE_KEY, *ids)


class ErasureWorker:
    """Erases queued IDs in batches. Runs inside `crumb serve`; the queue survives restarts."""

    def __init__(
        self, client: Client, redis_client: redis.Redis, interval_s: float = 1.0,
        before_erase: Callable[[list[str]], None] = lambda ids: None,
    ) -> None:
        self._client = client
        self._redis = redis_client
        self._interval_s = interval_s
        self._before_erase = before_erase
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crumb-erasure", daemon=True)
        self.erased = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def run_once(self, limit: int = 1000) -> int:
        # Read, erase, then trim: a crash in between erases again, never skips. The lock keeps a
        # second replica from trimming IDs it has not read.
        lock = self._redis.lock(ERASE_LOCK_KEY, timeout=600, blocking=False)
        if not lock.acquire():
            return 0
        try:
            ids = [i.decode() if isinstance(i, bytes) else i for i in self._redis.lrange(ERASE_QUEUE_KEY, 0, limit - 1)]
            if ids:
                try:  # without waiting: this lock expires, and the queue keeps the IDs meanwhile
                    erase(self._client, self._redis, ids, reason="optout", wait_s=0, before=self._before_erase)
                except ErasureDeferred:
                    return 0  # a build is running (the IDs' events are dropped at ingest already)
                self._redis.ltrim(ERASE_QUEUE_KEY, len(ids), -1)
        finally:
            lock.release()
        self.erased += len(ids)
        return len(ids)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                while self.run_once():
                    pass
            except Exception:  # keep the worker alive; the queue keeps the IDs
                log.exception("erasure failed; will retry")
