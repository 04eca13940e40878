"""Where the writer's batches go: `crumb.events`, minus opted-out IDs, idempotent by token."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from collector.optouts import OptoutSet
from collector.schema import EVENT_COLUMNS, EVENTS_TABLE
from collector.spool import Batch

_ID_COLUMNS = (EVENT_COLUMNS.index("cookie_id"), EVENT_COLUMNS.index("fp_id"))
_PROPS = EVENT_COLUMNS.index("props")


class WarehouseSink:
    def __init__(self, client: Client, optouts: OptoutSet) -> None:
        self._client = client
        self._optouts = optouts
        self._wire_types: list[str] | None = None

    def insert(self, batch: Batch) -> int:
        rows = self._optouts.keep_rows(batch.rows, _ID_COLUMNS)
        if rows:
            columns = list(zip(*rows))
            columns[_PROPS] = [dict(props) for props in columns[_PROPS]]  # rows hold (key, value) pairs
            self._client.insert(
                EVENTS_TABLE, columns, column_names=EVENT_COLUMNS, column_type_names=self._types(),
                column_oriented=True, settings={"insert_deduplication_token": batch.token},
            )
        return len(rows)

    def _types(self) -> list[str]:
        """The columns' types as sent: given, they spare a DESCRIBE per insert. LowCardinality and
        UUID columns travel as String and ClickHouse converts them, cheaper than the client's
        Python encoding of dictionaries and UUIDs (a third of an insert's time in the writer)."""
        if self._wire_types is None:
            database, table = EVENTS_TABLE.split(".")
            described = dict(self._client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {table:String}",
                parameters={"db": database, "table": table},
            ).result_rows)
            self._wire_types = [described[c].replace("LowCardinality(String)", "String").replace("UUID", "String")
                                for c in EVENT_COLUMNS]
        return self._wire_types


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
