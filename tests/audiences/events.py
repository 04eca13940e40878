"""A factory for `crumb.events` rows in audience tests: only the columns a test cares about."""

from __future__ import annotations

import uuid
from typing import Any

from clickhouse_connect.driver.client import Client

DEFAULTS: dict[str, Any] = {
    "site": "audiences-test", "type": "pageview", "cookie_id": "", "fp_id": "", "host": "", "path": "/",
    "categories": [], "device_type": "desktop", "is_bot": 0, "can_profile": 1, "engaged_ms": 0,
}


def cookie() -> str:
    return uuid.uuid4().hex


def insert_events(client: Client, rows: list[dict[str, Any]], **defaults: Any) -> None:
    """Each row needs `ts` (epoch ms); other columns come from the row, then `defaults`, then DEFAULTS."""
    merged = {**DEFAULTS, **defaults}
    columns = ["event_id", "ts", "received_at", *merged]
    client.insert("crumb.events", [[uuid.uuid4(), row["ts"], row["ts"], *(row.get(c, d) for c, d in merged.items())]
                                   for row in rows], column_names=columns)
