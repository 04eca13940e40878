"""The encoder: hits → enriched rows → one insert payload, in a process of its own.

    drain thread ──marshal'd hits──▶ encoder process ──payload (Arrow stream)──▶ drain thread
                                     (enrich, encode)

Enrichment and encoding are Python for every row (~10 µs a row). In the server process they held
the GIL a sixth of the time, and the event loop waited for it; in the encoder process they run on
another core. The server's share is marshalling the hits (~0.7 µs a row, pickle took 2).

The server keeps a batch's hits until its payload comes back: an encoder that dies or hangs is
replaced and the batch sent again, and a batch that fails twice, or that the encoder reports it
cannot encode, is encoded in the server process. No batch is lost to the encoder.
"""

from __future__ import annotations

import gc
import logging
import marshal
import multiprocessing
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from collector.metrics import CollectorStats
from collector.payload import encode_rows
from collector.rows import Enricher

log = logging.getLogger("crumb.collector.encoder")

Hits = list[tuple[Any, ...]]  # collector.hits.Hit fields as plain tuples (marshal takes no NamedTuple)

CHUNK_HITS = 2_000  # marshalled a chunk at a time: the event loop gets the GIL between chunks
TIMEOUT_S = 30.0  # 10,000 hits take ~0.1 s (0.3 s with cold caches); past this the encoder is taken as hung
START_TIMEOUT_S = 60.0  # a new encoder imports and unpickles its enricher first (~1 s)
ATTEMPTS = 2  # encoder processes tried per batch before the server encodes it itself

_READY, _OK, _FAILED = b"ready", b"ok", b"failed"


def encode_hits(enricher: Enricher, hits: Hits) -> bytes:
    return encode_rows([enricher.row(hit) for hit in hits])


class EncoderFailed(Exception):
    """The encoder process died, hung, or could not be reached."""


class EncoderProcess:
    """Encodes batches in a child process; `encode` is called from one thread at a time."""

    def __init__(self, enricher: Enricher, stats: CollectorStats, timeout_s: float = TIMEOUT_S) -> None:
        self._enricher = enricher
        self._stats = stats
        self._timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")  # never fork: chdb's threads live here
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False  # the new encoder's greeting has not been read yet

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=serve, args=(child_end, self._enricher), name="crumb-encoder",
                                        daemon=True)  # daemon: ended by multiprocessing at exit, if still up
        try:
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()  # the child's end lives in the child only: its death reads as EOF here
        self._process, self._conn, self._ready = process, parent_end, False

    def encode(self, hits: Hits) -> bytes:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._round_trip(hits)
            except EncoderFailed as failure:
                then = "sending the batch again" if attempt < ATTEMPTS else "encoding the batch here"
                log.warning("encoder process failed (%s): restarting it, %s", failure, then)
                self._restart()
            except _EncodingError as error:
                log.error("encoder could not encode a batch (%s): encoding it in the server process", error)
                break
        return encode_hits(self._enricher, hits)

    def close(self, timeout_s: float = 10.0) -> None:
        """The encoder exits when its end of the pipe closes; forced past the timeout."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.join(timeout_s)
            if process.is_alive():
                process.kill()
                process.join()

    def _restart(self) -> None:
        self._stats.encoder_restarts += 1
        if self._process is not None:
            self._process.kill()  # a hung one; a dead one is only reaped
        self.close()
        try:
            self.start()
        except OSError as error:  # no process to be had now: batches are encoded here meanwhile
            log.error("cannot start an encoder process: %s", error)

    def _round_trip(self, hits: Hits) -> bytes:
        if self._conn is None or self._process is None or not self._process.is_alive():
            raise EncoderFailed("not running")
        try:
            if not self._ready:  # read here, not in start(): the server need not wait for it
                self._ready = self._answer(START_TIMEOUT_S) == _READY
            for start in range(0, len(hits), CHUNK_HITS):
                self._conn.send_bytes(marshal.dumps(hits[start:start + CHUNK_HITS]))
            self._conn.send_bytes(b"")  # end of batch
            status = self._answer(self._timeout_s)
            if status == _FAILED:
                raise _EncodingError(self._conn.recv_bytes().decode(errors="replace"))
            return self._conn.recv_bytes()
        except (OSError, EOFError) as error:  # a broken pipe or EOF: the encoder is gone
            raise EncoderFailed(repr(error)) from error

    def _answer(self, timeout_s: float) -> bytes:
        assert self._conn is not None
        if not self._conn.poll(timeout_s):
            raise EncoderFailed(f"no answer in {timeout_s:g} s")
        return self._conn.recv_bytes()


class _EncodingError(Exception):
    """The encoder raised on a batch: the same batch would fail in a new one."""


def serve(conn: Connection, enricher: Enricher) -> None:
    """The encoder process: one batch at a time until the server closes its end of the pipe."""
    # Ctrl-C and a group SIGTERM reach this process too: the server decides when it stops, after
    # its last batch, so the signals are ignored here; its closed pipe (or its death) ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # What is alive now (modules, user-agent patterns, the rules) lives as long as the process: out
    # of every collection. Full collections walked it all: a quarter of the encoder's time a row.
    gc.freeze()
    conn.send_bytes(_READY)
    while True:
        try:
            hits = _receive_batch(conn)
        except (EOFError, OSError):
            return
        try:
            payload = encode_hits(enricher, hits)
        except Exception as error:  # reported, not fatal: the server encodes this batch itself
            conn.send_bytes(_FAILED)
            conn.send_bytes(repr(error).encode())
            continue
        conn.send_bytes(_OK)
        conn.send_bytes(payload)


def _receive_batch(conn: Connection) -> list[tuple[Any, ...]]:
    hits: list[tuple[Any, ...]] = []
    while chunk := conn.recv_bytes():
        hits.extend(marshal.loads(chunk))
    return hits
