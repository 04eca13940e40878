"""The event writer: buffered, columnar, and nothing lost.

    request path ──add()──▶ buffer ──drain thread──▶ pending queue ──insert thread──▶ ClickHouse
                                        │ (dedup)  ▲          │ full                  │ fails
                                        ▼          │          └──────▶ spool (disk) ◀─┘
                                  encoder (enrich, encode)            └── replayed when ClickHouse is back

`add` only appends to a list. The drain thread swaps the list out every interval (or at the row
threshold), drops retried event IDs, has the rest enriched and encoded into one payload (by the
encoder process, see collector.encoder), and queues the batch, or spools it when the insert
thread is behind, so memory stays bounded whatever ClickHouse does. The insert thread writes
batches with their token; a failure spools the batch, and spooled batches are replayed with the
same token once inserts work again, so each accepted event lands exactly once.

Deduplication stays in this process: its memory of event IDs survives an encoder restart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from collector.hits import Hit
from collector.metrics import CollectorStats
from collector.spool import Batch, Spool

log = logging.getLogger("crumb.collector.writer")

MAX_BACKOFF_S = 30.0


class BatchSink(Protocol):
    def insert(self, batch: Batch) -> int:
        """Store the batch (idempotently, by its token); return the rows stored. Raise on failure."""


# Hits (as plain tuples) → the batch's insert payload: collector.encoder's process, or in-process.
Encode = Callable[[list[tuple[Any, ...]]], bytes]


class RecentEventIds:
    """Event IDs seen in about the last `window_s`, in two generations to bound memory.

    The generations are dicts of ints, not sets: the garbage collector never tracks a dict that
    holds only ints, while every full collection walked each entry of a set (~10 ms per million
    IDs, a pause of the event loop too)."""

    def __init__(self, window_s: float, max_ids: int = 2_000_000) -> None:
        self._half_window_s = window_s / 2
        self._max_per_generation = max_ids // 2
        self._current: dict[int, None] = {}
        self._previous: dict[int, None] = {}
        self._started = time.monotonic()

    def remember(self, event_ids: list[str]) -> None:
        self._current.update(dict.fromkeys(hash(e) for e in event_ids))

    def first_time(self, event_id: str) -> bool:
        key = hash(event_id)  # 64-bit: collisions are negligible at this size, and ints are small
        if key in self._current or key in self._previous:
            return False
        self._current[key] = None
        return True

    def rotate_if_due(self) -> None:
        now = time.monotonic()
        if now - self._started >= self._half_window_s or len(self._current) >= self._max_per_generation:
            self._previous, self._current, self._started = self._current, {}, now


class EventWriter:
    def __init__(
        self,
        sink: BatchSink,
        spool: Spool,
        encode: Encode,
        stats: CollectorStats,
        *,
        flush_rows: int = 10_000,
        flush_interval_s: float = 1.0,
        max_pending_batches: int = 20,
        dedup_window_s: float = 900,
        observe_flush: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._sink = sink
        self._spool = spool
        self._encode = encode
        self.stats = stats
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        self._buffer: list[tuple[Any, ...]] = []
        self._wake = threading.Event()
        self._pending: queue.Queue[Batch | None] = queue.Queue(maxsize=max_pending_batches)
        self._recent = RecentEventIds(dedup_window_s)
        self._observe_flush = observe_flush
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0  # batches swapped out of the buffer, not yet stored or spooled
        self._spool_has_batches = spool.depth() > 0  # left by an earlier run: replay them
        self._drain_thread = threading.Thread(target=self._drain_loop, name="crumb-drain", daemon=True)
        self._insert_thread = threading.Thread(target=self._insert_loop, name="crumb-insert", daemon=True)

    # -- request path -------------------------------------------------------------------------

    def add(self, hit: Hit) -> None:
        self._buffer.append(tuple(hit))  # a plain tuple of plain values: untracked by the GC
        self.stats.accepted += 1
        if len(self._buffer) >= self._flush_rows:
            self._wake.set()

    def buffer_depth(self) -> int:
        return len(self._buffer) + self._pending.qsize() * self._flush_rows

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, recent_event_ids: Sequence[str] = ()) -> None:
        """Start the threads; `recent_event_ids` (stored before a restart) keep deduplicating retries."""
        self._recent.remember(list(recent_event_ids))
        self._drain_thread.start()
        self._insert_thread.start()

    def close(self, timeout_s: float = 60.0) -> None:
        """Flush everything: to ClickHouse, or to the spool if it will not take it."""
        self._stopping.set()
        self._wake.set()
        self._drain_thread.join(timeout_s)
        self._pending.put(None)
        self._insert_thread.join(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Block until what was added before this call is stored (or spooled). For tests, the demo."""
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        with self._idle:
            return self._idle.wait_for(
                lambda: not self._buffer and self._pending.empty() and self._in_flight == 0,
                timeout=max(0.0, deadline - time.monotonic()),
            )

    # -- drain thread -------------------------------------------------------------------------

    def _drain_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            self._drain_once()
        self._drain_once()

    def _drain_once(self) -> None:
        with self._idle:  # swap and count under one lock, so flush() never sees a gap
            hits, self._buffer = self._buffer, []
            self._in_flight += 1 if hits else 0
        self._recent.rotate_if_due()
        if not hits:
            self._notify_idle()
            return
        first_time = self._recent.first_time
        fresh = [hit for hit in hits if first_time(hit[0])]  # hit[0]: the event_id
        self.stats.duplicates += len(hits) - len(fresh)
        if fresh:
            batch = Batch(token=uuid.uuid4().hex, payload=self._encode(fresh), rows=len(fresh))
            self._enqueue(batch)  # the insert thread settles it
        else:
            self._settled()

    def _enqueue(self, batch: Batch) -> None:
        try:
            self._pending.put_nowait(batch)
        except queue.Full:  # inserts are behind: keep memory bounded, disk takes the batch
            self._spool_batch(batch)
            self._settled()

    # -- insert thread ------------------------------------------------------------------------

    def _insert_loop(self) -> None:
        backoff_s = 0.0
        while True:
            try:
                batch = self._pending.get(timeout=max(backoff_s, self._flush_interval_s))
            except queue.Empty:
                batch = False  # type: ignore[assignment]
            if batch is None:  # closing: what is still queued goes to ClickHouse or the spool
                self._drain_pending_on_close()
                return
            ok = True
            if batch:
                ok = self._insert(batch)
                self._settled()
            if ok and self._spool_has_batches and not self._stopping.is_set():
                ok = self._replay_spool()
            backoff_s = 0.0 if ok else min(MAX_BACKOFF_S, max(0.5, backoff_s * 2))

    def _insert(self, batch: Batch) -> bool:
        started = time.monotonic()
        try:
            stored = self._sink.insert(batch)
        except Exception as exc:  # any failure: the batch is safe on disk and retried
            log.warning("insert failed, spooling %d rows: %s", batch.rows, exc)
            self.stats.insert_failures += 1
            self._spool_batch(batch)
            return False
        self._observe_flush(time.monotonic() - started)
        self._count_stored(batch, stored)
        return True

    def _replay_spool(self) -> bool:
        """Replay spooled batches while inserts succeed; False if one failed."""
        self._spool_has_batches = False
        for path in self._spool.pending():
            batch = self._spool.read(path)
            try:
                stored = self._sink.insert(batch)
            except Exception as exc:
                log.warning("spool replay failed, will retry: %s", exc)
                self.stats.insert_failures += 1
                self._spool_has_batches = True
                return False
            self._spool.remove(path)
            self.stats.replayed_batches += 1
            self._count_stored(batch, stored)
        return True

    def _drain_pending_on_close(self) -> None:
        while True:
            try:
                batch = self._pending.get_nowait()
            except queue.Empty:
                break
            if batch:
                self._insert(batch)
                self._settled()
        if self._spool_has_batches:
            self._replay_spool()

    def _count_stored(self, batch: Batch, stored: int) -> None:
        self.stats.flushed_batches += 1
        self.stats.flushed_rows += stored
        self.stats.opted_out_dropped += batch.rows - stored

    def _spool_batch(self, batch: Batch) -> None:
        self._spool.write(batch)
        self._spool_has_batches = True
        self.stats.spooled_batches += 1
        self.stats.spooled_rows += batch.rows

    def _settled(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()
