"""The collector's counters, exported at /metrics.

The request path bumps plain ints and dict entries (no locks, no label lookups); a Prometheus
collector reads them at scrape time. Flush latency is observed off the request path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class CollectorStats:
    def __init__(self) -> None:
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.cookies_replaced = 0
        self.opted_out_dropped = 0
        self.spooled_batches = 0
        self.spooled_rows = 0
        self.replayed_batches = 0
        self.flushed_rows = 0
        self.flushed_batches = 0
        self.insert_failures = 0
        self.encoder_restarts = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1


class StatsExporter(Collector):
    def __init__(self, stats: CollectorStats, buffer_depth: Callable[[], int], spool_depth: Callable[[], int]):
        self._stats = stats
        self._buffer_depth = buffer_depth
        self._spool_depth = spool_depth

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield _counter("crumb_events_accepted", "Events answered with success", s.accepted)
        rejected = CounterMetricFamily("crumb_events_rejected", "Hits not stored, by reason", labels=["reason"])
        for reason, count in sorted(s.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield _counter("crumb_events_duplicates", "Retried events dropped by event_id", s.duplicates)
        yield _counter("crumb_cookies_replaced", "crumb_id cookies we did not issue, replaced", s.cookies_replaced)
        yield _counter("crumb_events_optout_dropped", "Events of opted-out IDs dropped", s.opted_out_dropped)
        yield _counter("crumb_events_spooled", "Event rows written to the disk spool", s.spooled_rows)
        yield _counter("crumb_spool_batches_replayed", "Spooled batches replayed", s.replayed_batches)
        yield _counter("crumb_events_flushed", "Event rows inserted into ClickHouse", s.flushed_rows)
        yield _counter("crumb_insert_failures", "Failed inserts into ClickHouse", s.insert_failures)
        yield _counter("crumb_encoder_restarts", "Encoder processes replaced (died or hung)", s.encoder_restarts)
        yield GaugeMetricFamily("crumb_buffer_depth", "Events waiting in memory", value=self._buffer_depth())
        yield GaugeMetricFamily("crumb_spool_depth", "Batches waiting in the spool", value=self._spool_depth())


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def flush_latency(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "crumb_flush_seconds", "Time to insert one batch into ClickHouse", registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
