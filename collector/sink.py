"""Where the writer's batches go: `crumb.events`, minus opted-out IDs, idempotent by token."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from collector.optouts import OptoutSet
from collector.payload import FORMAT, encode_table, ids_in, read_payload, without_ids
from collector.schema import EVENT_COLUMNS, EVENTS_TABLE
from collector.spool import Batch


class WarehouseSink:
    def __init__(self, client: Client, optouts: OptoutSet) -> None:
        self._client = client
        self._optouts = optouts

    def insert(self, batch: Batch) -> int:
        """The payload goes to ClickHouse as it is (no per-row Python here), re-encoded only in the
        rare batch that holds opted-out IDs. Raises on failure: the caller spools and retries."""
        table = read_payload(batch.payload)
        payload = batch.payload
        opted_out = self._optouts.opted_out(ids_in(table))
        if opted_out:
            table = without_ids(table, opted_out)
            payload = encode_table(table)
        if table.num_rows:
            self._client.raw_insert(
                EVENTS_TABLE, EVENT_COLUMNS, payload, fmt=FORMAT,
                settings={"insert_deduplication_token": batch.token},
            )
        return table.num_rows


def recent_event_ids(client: Client, window_s: int, max_event_age_ms: int, limit: int = 1_000_000) -> list[str]:
    """Event IDs received in the last `window_s`: a restarted writer still drops their retries."""
    if window_s <= 0:
        return []
    rows = client.query(
        f"SELECT toString(event_id) FROM {EVENTS_TABLE} "
        "WHERE toDate(ts) >= toDate(now() - toIntervalSecond({reach:UInt64})) "
        "AND received_at >= now64(3) - toIntervalSecond({window:UInt32}) LIMIT {limit:UInt32}",
        parameters={"reach": window_s + max_event_age_ms // 1000, "window": window_s, "limit": limit},
    ).result_rows
    return [row[0] for row in rows]
