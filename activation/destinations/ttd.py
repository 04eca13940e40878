"""The Trade Desk Data API: `POST /data/advertiser`, JSON Items with per-segment TtlInMinutes.

A removal is `TtlInMinutes: 0`. The reply is 200 with `FailedLines` naming TDID, DataName and an
ErrorCode; 413 means the request was too large (we halve it), 429 carries Retry-After.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import httpx

from activation.destinations.base import Batch, Failure, Item, PermanentError, PushResult, chunks, request, send_parts

MAX_TTL_MINUTES = 180 * 24 * 60
# Per-line codes worth another try; the documented ones (MissingUserId, UserNotMapped,
# InvalidTtlInMinutes, ...) describe the data and will fail the same way again.
RETRYABLE_CODES = frozenset({"InternalError", "ServiceUnavailable", "Throttled", "Timeout"})


class TTDDestination:
    def __init__(
        self, name: str, endpoint: str, advertiser_id: str, token: str, client: httpx.Client,
        items_per_request: int = 1000,
    ) -> None:
        self.name = name
        self.max_batch_items = items_per_request
        self._url = endpoint.rstrip("/") + "/data/advertiser"
        self._advertiser_id = advertiser_id
        self._token = token
        self._client = client
        self._items_per_request = items_per_request

    def push(self, batch: Batch) -> PushResult:
        return send_parts(chunks(batch.items, self._items_per_request), self._send)

    def _send(self, items: Sequence[Item]) -> PushResult:
        body = request_body(self._advertiser_id, items)
        try:
            response = request(self._client, "POST", self._url, json=body, headers={"TTD-Auth": self._token})
        except PermanentError as exc:
            if exc.code == "http_413":
                return self._split(items)
            raise
        return _result(items, response.json().get("FailedLines") or [])

    def _split(self, items: Sequence[Item]) -> PushResult:
        if len(items) == 1:
            raise PermanentError("a single item is larger than TTD accepts", code="RequestTooLarge")
        half = len(items) // 2
        result = PushResult(requests=1)
        result.merge(send_parts([items[:half], items[half:]], self._send))
        return result


def request_body(advertiser_id: str, items: Sequence[Item]) -> dict[str, Any]:
    data: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        ttl = 0 if item.change == "exit" else min(max(item.ttl_minutes, 1), MAX_TTL_MINUTES)
        data[item.partner_uid].append({"Name": item.partner_segment, "TtlInMinutes": ttl})
    return {"AdvertiserId": advertiser_id, "Items": [{"TDID": tdid, "Data": d} for tdid, d in data.items()]}


def _result(items: Sequence[Item], failed_lines: list[dict[str, Any]]) -> PushResult:
    by_key: dict[tuple[str, str], list[Item]] = defaultdict(list)
    by_tdid: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_key[(item.partner_uid, item.partner_segment)].append(item)
        by_tdid[item.partner_uid].append(item)
    tdids = list(by_tdid)
    failed: dict[Item, Failure] = {}
    for line in failed_lines:
        code = str(line.get("ErrorCode") or "Unknown")
        tdid = str(line.get("TDID") or _tdid_at(tdids, line.get("ItemNumber")) or "")
        hit = by_key.get((tdid, line["DataName"]), []) if line.get("DataName") else by_tdid.get(tdid, [])
        for item in hit:
            failed[item] = Failure(item, code, str(line.get("Message") or code), code in RETRYABLE_CODES)
    delivered = [item for item in items if item not in failed]
    return PushResult(delivered=delivered, failed=list(failed.values()), requests=1)


def _tdid_at(tdids: list[str], item_number: Any) -> str | None:
    try:
        index = int(item_number) - 1  # ItemNumber counts the request's Items from 1
    except (TypeError, ValueError):
        return None
    return tdids[index] if 0 <= index < len(tdids) else None
