"""`crumb activate sync`: each destination's deltas since its checkpoint, delivered.

For each configured destination:
  checkpoint (crumb.sync_checkpoints FINAL) → the succeeded builds after it, in order → per build,
  its deltas for the destination's segments, streamed in keyset-paged chunks, joined in SQL to
  the partner's IDs (crumb.id_matches FINAL): unmatched IDs are counted, not sent; IDs with any
  can_share=0 event (GPC, US-privacy opt-out of sale) get no additions → batches within the
  platform's limits, pushed by `max_concurrency` workers under a rate limit → items that failed
  retryably are retried with capped exponential backoff and full jitter (Retry-After honoured),
  up to `max_attempts`; the rest go to crumb.dead_letters → what the platform took goes to
  crumb.delivered → the checkpoint moves to the build. A crash anywhere leaves the checkpoint on
  the last finished build: the next run re-sends that build's deltas (adds and removals are
  idempotent on every platform), so nothing is lost. One crumb.sync_runs row per destination run.

Erasure: before its builds, each run sends the removals erasures queued for the destination
(activation/removals.py) through the same batching, retries and dead letters; and deltas built
before an ID's erasure are never sent, so a destination whose checkpoint lags cannot re-add it.

The IDs withheld from additions are read once per build's stream, into a table of its own
(`crumb._sync_withheld_*`), dropped when the stream ends; one a stopped process left behind is
dropped by a sync a day later.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import httpx
from clickhouse_connect.driver.client import Client
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from activation.destinations.base import (
    AuthError,
    Batch,
    Change,
    Destination,
    Failure,
    Item,
    PermanentError,
    PushResult,
    RetryableError,
    chunks,
)
from activation.destinations.config import build_destination, load_destinations
from activation.removals import clear_removals, stream_removals
from crumb.progress import Progress
from crumb.runtime import Runtime

DEFAULT_TTL_MINUTES = 30 * 24 * 60
log = logging.getLogger(__name__)
CHUNK_ROWS = 20_000
BASE_DELAY_S = 0.5
MAX_DELAY_S = 60.0
MAX_RETRY_AFTER_S = 900.0

Sleep = Callable[[float], None]


# --- process-level counters for /metrics -------------------------------------------------------

class SyncStats:
    FIELDS = ("sent", "failed", "unmatched", "suppressed", "retried", "requests", "runs", "run_failures")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_destination: dict[str, Counter[str]] = {}
        self.last_duration_s: dict[str, float] = {}

    def record(self, row: dict[str, Any]) -> None:
        with self._lock:
            counts = self.by_destination.setdefault(row["destination"], Counter())
            for name in ("sent", "failed", "unmatched", "suppressed", "retried", "requests"):
                counts[name] += int(row[name])
            counts["runs"] += 1
            counts["run_failures"] += row["status"] == "failed"
            self.last_duration_s[row["destination"]] = float(row["duration_s"])


class SyncStatsExporter(Collector):
    def __init__(self, stats: SyncStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        help_text = {
            "sent": "Deltas a destination accepted", "failed": "Deltas dead-lettered or refused",
            "unmatched": "Deltas without a partner ID match, not sent",
            "suppressed": "Additions withheld for IDs that opted out of sharing (GPC, US privacy)",
            "retried": "Delta retries after retryable errors", "requests": "Requests to destinations",
            "runs": "Destination sync runs", "run_failures": "Destination sync runs that stopped on an error",
        }
        for name in SyncStats.FIELDS:
            family = CounterMetricFamily(f"crumb_sync_{name}", help_text[name], labels=["destination"])
            for destination, counts in sorted(self._stats.by_destination.items()):
                family.add_metric([destination], counts[name])
            yield family
        duration = CounterMetricFamily("crumb_sync_last_duration_seconds", "Duration of the last sync run",
                                       labels=["destination"])
        for destination, seconds in sorted(self._stats.last_duration_s.items()):
            duration.add_metric([destination], seconds)
        yield duration


STATS = SyncStats()


# --- pacing ------------------------------------------------------------------------------------

class RateLimiter:
    """At most `per_s` acquisitions a second across threads; waits through the injected sleep."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic, sleep: Sleep = time.sleep) -> None:
        self._interval = 1.0 / per_s
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


def backoff_s(attempt: int, retry_after_s: float | None, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff, capped; a platform's Retry-After is a floor."""
    delay = rng() * min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (attempt - 1))
    return min(max(delay, retry_after_s or 0.0), MAX_RETRY_AFTER_S)


# --- one destination ---------------------------------------------------------------------------

@dataclass
class Target:
    config: Any  # a destinations.config model
    destination: Destination


@dataclass
class _Outcome:
    delivered: list[Item] = field(default_factory=list)
    dead: list[Failure] = field(default_factory=list)
    retried: int = 0
    requests: int = 0
    unattributed: int = 0

    def merge(self, other: _Outcome) -> None:
        self.delivered += other.delivered
        self.dead += other.dead
        self.retried += other.retried
        self.requests += other.requests
        self.unattributed += other.unattributed


class DestinationSync:
    def __init__(
        self, runtime: Runtime, target: Target, progress: Progress, sleep: Sleep, clock: Callable[[], float],
        rng: Callable[[], float], ttl_minutes: dict[int, int],
    ) -> None:
        self.client: Client = runtime.client
        self.config = target.config
        self.destination = target.destination
        self.name = target.config.name
        self.progress = progress
        self.sleep = sleep
        self.rng = rng
        self.limiter = RateLimiter(self.config.rate_limit_per_s, clock, sleep)
        self.ttl_minutes = ttl_minutes
        self.lookback_days = runtime.settings.events_ttl_days
        self.run_id = uuid.uuid4()
        self.counts: Counter[str] = Counter()

    def run(self) -> dict[str, Any]:
        started = time.time()
        checkpoint = read_checkpoint(self.client, self.name)
        to_build, status, error = checkpoint, "succeeded", ""
        try:
            self._send_removals()
            for build_id in pending_builds(self.client, checkpoint):
                self._sync_build(build_id)
                write_checkpoint(self.client, self.name, build_id)
                to_build = build_id
        except Exception as exc:  # noqa: BLE001 — the run's row records it; the next run resumes
            status, error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
        if status == "succeeded" and self.counts["failed"]:
            status = "partial"
        row = self._row(started, time.time(), checkpoint, to_build, status, error)
        STATS.record(row)
        return row

    def _row(self, started: float, finished: float, from_build: int, to_build: int, status: str,
             error: str) -> dict[str, Any]:
        row = {
            "run_id": str(self.run_id), "destination": self.name, "started_at": started, "finished_at": finished,
            "from_build": from_build, "to_build": to_build,
            **{k: self.counts[k] for k in ("sent", "failed", "unmatched", "retried", "requests")},
            "status": status, "error": error,
        }
        values = {**row, "run_id": self.run_id, "started_at": _ms(started), "finished_at": _ms(finished)}
        self.client.insert("crumb.sync_runs", [list(values.values())], column_names=list(values))
        return {**row, "suppressed": self.counts["suppressed"], "duration_s": round(finished - started, 3)}

    def _sync_build(self, build_id: int) -> None:
        segments = self.config.segments
        with closing(stream_deltas(self.client, self.name, build_id, sorted(segments), self._partner(),
                                   self.lookback_days)) as deltas:
            for rows in deltas:
                items = []
                for segment_id, cookie, change, partner_uid, opted_out in rows:
                    if opted_out and change == "enter":
                        self.counts["suppressed"] += 1
                    elif not partner_uid:
                        self.counts["unmatched"] += 1
                    else:
                        ttl = self.config.ttl_minutes or self.ttl_minutes.get(segment_id, DEFAULT_TTL_MINUTES)
                        items.append(Item(cookie, partner_uid, segment_id, segments[segment_id], _change(change), ttl))
                outcome = self._deliver(items)
                self._record(build_id, outcome)
                self.progress.count(f"{self.name}: build {build_id} deltas sent", self.counts["sent"])

    def _send_removals(self) -> None:
        """The removals erasures owe this destination; each row goes once its outcome is recorded."""
        segments = self.config.segments
        for rows in stream_removals(self.client, self.name):
            items = []
            for cookie, segment_id, partner_uid in rows:
                if partner_uid and segment_id in segments:
                    items.append(Item(cookie, partner_uid, segment_id, segments[segment_id], "exit", 0))
                else:  # delivered before the ledger kept partner IDs, or the segment is no longer mapped
                    self.counts["unmatched"] += 1
            self._record(0, self._deliver(items), ledger=False)  # the ID is erased: no ledger row again
            clear_removals(self.client, self.name, [(cookie, segment_id) for cookie, segment_id, _ in rows])
            self.progress.count(f"{self.name}: erasure removals sent", self.counts["sent"])

    def _partner(self) -> str | None:
        return None if self.config.ids == "cookie" else self.config.partner

    def _deliver(self, items: Sequence[Item]) -> _Outcome:
        batches = list(chunks(items, self.destination.max_batch_items))
        outcome = _Outcome()
        if self.config.max_concurrency == 1 or len(batches) < 2:
            for batch in batches:
                outcome.merge(self._push(batch))
            return outcome
        with ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix=f"sync-{self.name}") as pool:
            for part in pool.map(self._push, batches):
                outcome.merge(part)
        return outcome

    def _push(self, items: Sequence[Item]) -> _Outcome:
        """One batch to the platform; retryable items again after backoff, up to max_attempts."""
        outcome, pending, attempt = _Outcome(), list(items), 0
        while pending:
            self.limiter.acquire()
            result = self._attempt(pending)
            attempt += 1
            outcome.delivered += result.delivered
            outcome.requests += result.requests
            outcome.unattributed += result.unattributed
            retry = [f for f in result.failed if f.retryable]
            outcome.dead += [f for f in result.failed if not f.retryable]
            if retry and attempt >= self.config.max_attempts:
                outcome.dead += retry
                retry = []
            pending = [f.item for f in retry]
            if pending:
                outcome.retried += len(pending)
                self.sleep(backoff_s(attempt, result.retry_after_s, self.rng))
        return outcome

    def _attempt(self, items: list[Item]) -> PushResult:
        try:
            return self.destination.push(Batch(items))
        except AuthError:
            raise
        except RetryableError as exc:
            return PushResult(failed=[Failure(i, exc.code, str(exc), True) for i in items], requests=1,
                              retry_after_s=exc.retry_after_s)
        except PermanentError as exc:
            return PushResult(failed=[Failure(i, exc.code, str(exc), False) for i in items], requests=1)

    def _record(self, build_id: int, outcome: _Outcome, ledger: bool = True) -> None:
        now = _ms(time.time())
        if outcome.delivered and ledger:
            self.client.insert("crumb.delivered", [
                [self.name, i.id, i.segment_id, int(i.change == "enter"), build_id, now, i.partner_uid]
                for i in outcome.delivered
            ], column_names=["destination", "id", "segment_id", "present", "build_id", "at", "partner_uid"])
        if outcome.dead:
            self.client.insert("crumb.dead_letters", [
                [self.run_id, self.name, build_id, f.item.segment_id, f.item.id, f.item.partner_uid, f.item.change,
                 f.code, f.message[:1000], now] for f in outcome.dead
            ], column_names=["run_id", "destination", "build_id", "segment_id", "id", "partner_uid", "change",
                             "error_code", "error", "at"])
        self.counts["sent"] += len(outcome.delivered) - outcome.unattributed
        self.counts["failed"] += len(outcome.dead) + outcome.unattributed
        self.counts["retried"] += outcome.retried
        self.counts["requests"] += outcome.requests


# --- warehouse ---------------------------------------------------------------------------------

def read_checkpoint(client: Client, destination: str) -> int:
    rows = client.query(
        "SELECT build_id FROM crumb.sync_checkpoints FINAL WHERE destination = {d:String}",
        parameters={"d": destination},
    ).result_rows
    return int(rows[0][0]) if rows else 0


def write_checkpoint(client: Client, destination: str, build_id: int) -> None:
    client.insert("crumb.sync_checkpoints", [[destination, build_id, _ms(time.time()), time.time_ns()]],
                  column_names=["destination", "build_id", "updated_at", "version"])


def pending_builds(client: Client, after: int) -> list[int]:
    rows = client.query(
        "SELECT build_id FROM crumb.builds FINAL WHERE status = 'succeeded' AND build_id > {after:UInt64} "
        "ORDER BY build_id", parameters={"after": after},
    ).result_rows
    return [int(r[0]) for r in rows]


# A chunk: the next `limit` rows of the destination's segments that IDs entered or exited, keyset-
# paged on (id, segment_id, change_order). The table is ordered by (build_id, id): a chunk reads
# the build's rows from the last ID sent on up to `until` (`_chunk`), and stops at `limit` before
# the joins.
_CHUNK = """
SELECT built_at, id, moved.1 AS segment_id, moved.2 AS change_order,
       CAST(moved.2 AS Enum8('enter' = 1, 'exit' = 2)) AS change
FROM crumb.id_deltas
ARRAY JOIN arrayConcat(
    arrayMap(s -> (s, 1), arrayFilter(s -> has({segments:Array(UInt32)}, s), entered)),
    arrayMap(s -> (s, 2), arrayFilter(s -> has({segments:Array(UInt32)}, s), exited))) AS moved
WHERE build_id = {build:UInt64} AND id >= {after_id:String} AND id <= {until}
  AND (hasAny(entered, {segments:Array(UInt32)}) OR hasAny(exited, {segments:Array(UInt32)}))
  AND (id, segment_id, change_order) > ({after_id:String}, {after_segment:UInt32}, {after_change:Int8})
ORDER BY id, segment_id, change_order
LIMIT {limit:UInt32}
"""
# Where the chunk ends at the latest: each of the build's rows after `after_id` gives it at least
# one row (a row is an ID's deltas), so `limit` of them fill it. (The rows of `after_id` may give
# none: the chunk before sent them.) Read from the index order, IDs only. Without it a chunk read
# every row from `after_id` to the end of the build: 0.15-0.18 s against 0.06-0.09 s for the first
# chunk of 2M deltas, and a stream's chunks read the build quadratically.
_CHUNK_BOUND = """(
    SELECT greatest({after_id:String}, max(id)) FROM (
        SELECT id FROM crumb.id_deltas
        WHERE build_id = {build:UInt64} AND id > {after_id:String}
          AND (hasAny(entered, {segments:Array(UInt32)}) OR hasAny(exited, {segments:Array(UInt32)}))
        ORDER BY id LIMIT {limit:UInt32}))"""


def _chunk(until: str) -> str:
    return _CHUNK.replace("{until}", until)


# The chunk's last ID, read before the chunk with its joins: their right sides (the partner's
# matches, the erasures, what the destination holds of erased IDs) are read from `after_id` to it
# only. Each is ordered by ID (after the partner or the destination), so that is a range of its
# index, and a build's chunks read about one pass of each between them. Read whole per chunk, a
# partner's 3M matches the build did not touch made the stream of 200k deltas (10 chunks) take
# 15.6-16.5 s against 3.7-4.7 s (bench/activation_sync's data, the stream alone).
_CHUNK_END = f"SELECT max(id) FROM ({_chunk(_CHUNK_BOUND)})"
_IN_CHUNK = "id >= {after_id:String} AND id <= {chunk_end:String}"
# Whether a row may be sent is a column (`sendable`), not a filter: the chunk stays `limit` rows,
# so its last row is where the next one starts.
_DELTAS = """
SELECT d.segment_id, d.id, toString(d.change) AS change, {uid} AS partner_uid, d.id IN {withheld} AS opted_out,
       -- An erased ID (erased_at is the epoch for the others): nothing built before its erasure, and
       -- after it only additions, and removals of what the destination holds again since.
       e.erased_at = 0 OR (d.built_at > e.erased_at AND (d.change = 'enter' OR h.held = 1)) AS sendable
FROM ({chunk}) AS d
{join}
LEFT JOIN (SELECT id, max(completed_at) AS erased_at FROM crumb.erasures WHERE {in_chunk} GROUP BY id) AS e
  ON e.id = d.id
LEFT JOIN (SELECT DISTINCT id, segment_id, 1 AS held FROM crumb.delivered  -- no FINAL: a stale row costs
           -- only a redundant removal, and the key (destination, id) keeps this an index lookup
           WHERE destination = {{destination:String}} AND present = 1
             AND id IN (SELECT id FROM crumb.erasures WHERE {in_chunk})
          ) AS h ON h.id = d.id AND h.segment_id = d.segment_id
ORDER BY d.id, d.segment_id, d.change_order
"""
# The IDs with any can_share=0 event in the lookback: gathered once per stream of a build's deltas,
# not once per chunk (a scan of the lookback's events: 0.76 s of a 0.81 s chunk over the segments
# benchmark's 10M events, and a first build's deltas are hundreds of chunks). Kept on disk too:
# a server that restarts while a stream waits on a destination must not come back with it empty
# (which would send additions it withholds).
_WITHHELD = """
CREATE TABLE {table} ENGINE = Set AS
SELECT cookie_id AS id FROM crumb.events
WHERE can_share = 0 AND ts >= now() - INTERVAL {{lookback:UInt32}} DAY AND cookie_id != ''
UNION ALL
SELECT fp_id FROM crumb.events WHERE can_share = 0 AND ts >= now() - INTERVAL {{lookback:UInt32}} DAY AND fp_id != ''
"""
WITHHELD_PREFIX = "_sync_withheld_"
_MATCH_JOIN = """LEFT JOIN (SELECT id, partner_uid FROM crumb.id_matches FINAL
           WHERE partner = {{partner:String}} AND {in_chunk}) AS m ON m.id = d.id"""


def stream_deltas(
    client: Client, destination: str, build_id: int, segments: Sequence[int], partner: str | None,
    lookback_days: int, chunk_rows: int = CHUNK_ROWS,
) -> Iterator[list[tuple[int, str, str, str, bool]]]:
    """The destination's deltas of a build: (segment_id, id, change, partner_uid or '' when
    unmatched, opted_out) in chunks. Which IDs are opted out is read once, as the stream starts.
    Close it when stopping early (`contextlib.closing`): it drops the table of them it made (a
    process that stops leaves it to `drop_stale_withheld`)."""
    withheld = f"crumb.{WITHHELD_PREFIX}{uuid.uuid4().hex[:12]}"
    join = _MATCH_JOIN.format(in_chunk=_IN_CHUNK) if partner else ""
    sql = _DELTAS.format(uid="m.partner_uid" if partner else "d.id", chunk=_chunk("{chunk_end:String}"), join=join,
                         withheld=withheld, in_chunk=_IN_CHUNK)
    client.command(_WITHHELD.format(table=withheld), parameters={"lookback": lookback_days})
    try:
        after: tuple[int, str, int] = (0, "", 0)
        while True:
            params = {"build": build_id, "segments": list(segments), "after_segment": after[0], "after_id": after[1],
                      "after_change": after[2], "limit": chunk_rows}
            chunk_end = client.query(_CHUNK_END, parameters=params).result_rows[0][0]
            rows = client.query(sql, parameters={
                **params, "destination": destination, "partner": partner or "", "chunk_end": chunk_end,
            }).result_rows
            if not rows:
                return
            sendable = [(int(s), str(i), str(c), str(u or ""), bool(o)) for s, i, c, u, o, ok in rows if ok]
            if sendable:
                yield sendable
            last = rows[-1]
            after = (int(last[0]), str(last[1]), 1 if last[2] == "enter" else 2)
            if len(rows) < chunk_rows:
                return
    finally:
        _drop_quietly(client, withheld)


def drop_stale_withheld(client: Client, older_than_s: int = 86_400) -> None:
    """The tables of withheld IDs syncs that stopped left behind: older than a day, so not a
    running stream's (one would have to wait on its destination for a day)."""
    try:
        names = [name for (name,) in client.query(
            "SELECT name FROM system.tables WHERE database = 'crumb' AND startsWith(name, {prefix:String}) "
            "AND metadata_modification_time <= now() - {age:UInt32}",
            parameters={"prefix": WITHHELD_PREFIX, "age": older_than_s}).result_rows]
    except Exception:  # noqa: BLE001 — a cleanup: the next sync tries again
        log.warning("could not list stale tables of withheld IDs", exc_info=True)
        return
    for name in names:
        _drop_quietly(client, f"crumb.`{name}`")


def _drop_quietly(client: Client, table: str) -> None:
    """Dropped now (SYNC: an Atomic database keeps a dropped table's memory for minutes otherwise).
    A failure here fails nothing: a stream whose deltas all went out still moves its checkpoint."""
    try:
        client.command(f"DROP TABLE IF EXISTS {table} SYNC")
    except Exception:  # noqa: BLE001 — `drop_stale_withheld` drops it a day later
        log.warning("could not drop %s", table, exc_info=True)


def _change(value: str) -> Change:
    return "exit" if value == "exit" else "enter"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


# --- entry point -------------------------------------------------------------------------------

def sync_all(
    runtime: Runtime, progress: Progress, targets: list[Target] | None = None, *, sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random,
) -> list[dict[str, Any]]:
    """Sync every enabled server-side destination; one result dict (and sync_runs row) each."""
    client: httpx.Client | None = None
    if targets is None:
        configs = [c for c in load_destinations(runtime.settings.destinations_dir) if c.enabled and c.type != "url"]
        client = httpx.Client(timeout=max((c.timeout_s for c in configs), default=30.0))
        targets = [Target(c, build_destination(c, client)) for c in configs]
    ttl = _segment_ttls(runtime)
    try:
        drop_stale_withheld(runtime.client)
        results = []
        for target in targets:
            progress.note(f"sync {target.config.name}")
            results.append(DestinationSync(runtime, target, progress, sleep, clock, rng, ttl).run())
        return results
    finally:
        if client is not None:
            client.close()


def _segment_ttls(runtime: Runtime) -> dict[int, int]:
    """Minutes each defined segment's membership lives (its ttl_days); empty without definitions."""
    directory = runtime.settings.segments_dir
    if directory is None:
        return {}
    from audiences.definitions import load_segments
    from audiences.errors import DefinitionError

    try:
        return {sid: s.ttl_days * 24 * 60 for sid, s in load_segments(directory).by_id.items()}
    except (DefinitionError, OSError):
        return {}
