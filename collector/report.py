"""What landed: the summary `crumb demo` prints."""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client


def events_summary(client: Client, top: int = 5) -> dict[str, Any]:
    totals = client.query(
        "SELECT count(), uniqExact(nullIf(cookie_id, '')), uniqExact(nullIf(fp_id, '')), uniqExact(site),"
        " countIf(is_bot = 1), countIf(cookie_id = '' AND fp_id = ''), min(ts), max(ts) FROM crumb.events"
    ).result_rows[0]
    return {
        "events": totals[0], "cookies": totals[1], "first_party_ids": totals[2], "sites": totals[3],
        "bot_events": totals[4], "events_without_ids": totals[5],
        "first": str(totals[6]), "last": str(totals[7]),
        "by_site": _top(client, "SELECT site, count() c FROM crumb.events GROUP BY site ORDER BY c DESC", top),
        "by_type": _top(client, "SELECT type, count() c FROM crumb.events GROUP BY type ORDER BY c DESC", top),
        "by_device": _top(client, "SELECT device_type, count() c FROM crumb.events GROUP BY 1 ORDER BY c DESC", top),
        "top_categories": _top(
            client, "SELECT arrayJoin(categories) cat, count() c FROM crumb.events GROUP BY cat ORDER BY c DESC", top
        ),
    }


def _top(client: Client, sql: str, limit: int) -> list[tuple[str, int]]:
    return [(str(k), int(v)) for k, v in client.query(f"{sql} LIMIT {int(limit)}").result_rows]
