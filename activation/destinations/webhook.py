"""Our own webhook: JSON batches signed with HMAC-SHA256 over `<timestamp>.<body>`.

    POST <url>
    Content-Type: application/json
    X-Crumb-Timestamp: 1767225600
    X-Crumb-Signature: sha256=<hex HMAC(secret, "1767225600." + body)>

    {"destination": "crm", "sent_at": "2026-01-01T00:00:00Z",
     "items": [{"partner_id": "u-1", "add": ["fans"], "remove": ["churned"]}]}

The timestamp is inside the MAC, so a receiver rejects replays older than its tolerance.
Any 2xx means the whole batch was taken.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from activation.destinations.base import Batch, Item, PushResult, chunks, request, send_parts

SIGNATURE_HEADER = "X-Crumb-Signature"
TIMESTAMP_HEADER = "X-Crumb-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookDestination:
    def __init__(
        self, name: str, url: str, secret: str, client: httpx.Client, id_key: str = "partner_id",
        max_batch_items: int = 1000, clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.max_batch_items = max_batch_items
        self._url = url
        self._secret = secret
        self._client = client
        self._id_key = id_key  # "cookie_id" when the destination takes our own IDs
        self._clock = clock

    def push(self, batch: Batch) -> PushResult:
        return send_parts(chunks(batch.items, self.max_batch_items), self._send)

    def _send(self, items: Sequence[Item]) -> PushResult:
        now = self._clock()
        body = json.dumps(self.payload(items, now), separators=(",", ":")).encode()
        timestamp = str(int(now))
        request(self._client, "POST", self._url, content=body, headers={
            "Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        })
        return PushResult(delivered=list(items), requests=1)

    def payload(self, items: Sequence[Item], now: float) -> dict[str, Any]:
        changes: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"add": [], "remove": []})
        for item in items:
            changes[item.partner_uid]["add" if item.change == "enter" else "remove"].append(item.partner_segment)
        return {
            "destination": self.name,
            "sent_at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "items": [{self._id_key: uid, **c} for uid, c in changes.items()],
        }
