"""The Redis segment store (placeholder until the store lands: see activation/service.py)."""

from __future__ import annotations

from typing import Any

import redis
from clickhouse_connect.driver.client import Client


class SegmentStore:
    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client

    def load_build(self, client: Client, build_id: int) -> dict[str, Any]:
        return {"build_id": build_id, "loaded": 0}

    def segments_of(self, cookie_id: str) -> list[int]:
        return []
