"""Insert payloads: a batch of enriched rows as one Arrow IPC stream.

The warehouse reads the stream itself (`FORMAT ArrowStream`), so a batch travels from the encoder
process to ClickHouse, and to and from the spool, without per-row Python in the server process.
Columns travel in plain types and ClickHouse converts them on insert: UUIDs and LowCardinality
as strings, DateTime64 as millisecond timestamps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from collector.schema import EVENT_COLUMNS

Row = Sequence[Any]  # in EVENT_COLUMNS order; arrays as tuples or lists, props as (key, value) pairs

FORMAT = "ArrowStream"

_TEXT = pa.string()
_FLAG = pa.uint8()
_MS = pa.timestamp("ms", tz="UTC")
_TYPES = {
    "ts": _MS, "received_at": _MS, "categories": pa.list_(_TEXT), "is_bot": _FLAG, "engaged_ms": pa.uint32(),
    "props": pa.map_(_TEXT, _TEXT), "gdpr_applies": _FLAG, "consent_purposes": pa.list_(_FLAG),
    "vendor_consent": _FLAG, "can_profile": _FLAG, "can_share": _FLAG, "gpc": _FLAG,
}
SCHEMA = pa.schema([(name, _TYPES.get(name, _TEXT)) for name in EVENT_COLUMNS])
ID_COLUMNS = ("cookie_id", "fp_id")


def encode_rows(rows: Sequence[Row]) -> bytes:
    """Rows in EVENT_COLUMNS order (props as (key, value) pairs) → the payload."""
    columns = zip(*rows) if rows else [()] * len(SCHEMA)
    arrays = [pa.array(column, type=field.type) for column, field in zip(columns, SCHEMA)]
    return encode_table(pa.Table.from_arrays(arrays, schema=SCHEMA))


def read_payload(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()


def ids_in(table: pa.Table) -> list[str]:
    """The distinct non-empty cookie and first-party IDs of a batch (its opt-out check's input)."""
    chunks = [chunk for name in ID_COLUMNS for chunk in table.column(name).chunks]
    distinct = pc.unique(pa.chunked_array(chunks, type=_TEXT)) if chunks else pa.array([], _TEXT)
    return [value for value in distinct.to_pylist() if value]


def without_ids(table: pa.Table, ids: Sequence[str]) -> pa.Table:
    """The rows none of whose ID columns holds one of `ids`."""
    value_set = pa.array(ids, _TEXT)
    hit = pc.or_(*(pc.is_in(table.column(name), value_set=value_set) for name in ID_COLUMNS))
    return table.filter(pc.invert(hit))


def encode_table(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
