"""Opted-out IDs: a Redis set read in bulk by the writer, with `crumb.optouts` as the ledger.

The browser's `crumb_optout` cookie stops collection at the door; this set catches the rest —
events already buffered when the browser opted out, and the same IDs arriving from elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import redis
import redis.asyncio
from clickhouse_connect.driver.client import Client

OPTOUT_KEY = "crumb:{optouts}:ids"  # one slot on Redis Cluster: checked with one SMISMEMBER


class OptoutSet:
    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client

    def add(self, ids: Iterable[str]) -> None:
        ids = [i for i in ids if i]
        if ids:
            self._redis.sadd(OPTOUT_KEY, *ids)

    def contains(self, ids: Sequence[str]) -> list[bool]:
        if not ids:
            return []
        return [bool(flag) for flag in self._redis.smismember(OPTOUT_KEY, list(ids))]

    def opted_out(self, ids: Sequence[str]) -> list[str]:
        """Those of `ids` that opted out, checked in one round trip. Raises redis errors: the
        caller retries later."""
        if not ids:
            return []
        return [i for i, flag in zip(ids, self._redis.smismember(OPTOUT_KEY, list(ids))) if flag]


async def opted_out_async(redis_client: redis.asyncio.Redis, member_id: str) -> bool:
    """Whether the ID opted out, on the event loop (a lookup's)."""
    return bool(await redis_client.sismember(OPTOUT_KEY, member_id))


def record_optouts(client: Client, ids: Iterable[str]) -> None:
    now_ms = int(time.time() * 1000)
    rows = [[i, now_ms] for i in ids if i]
    if rows:
        client.insert("crumb.optouts", rows, column_names=["id", "opted_out_at"])
