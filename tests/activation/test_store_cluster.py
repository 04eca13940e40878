"""The segment store on a Redis Cluster (`CRUMB_REDIS_CLUSTER`): a real one-node cluster with a
password, as deploy/redis sets one up, through the client Crumb makes for it."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from clickhouse_connect.driver.client import Client

from activation.store import SegmentStore
from crumb.redis_server import connect_redis, redis_executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("redis-cluster")
    port = _free_port()
    process = subprocess.Popen(
        [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", str(directory / "nodes.conf"), "--dir", str(directory),
         "--requirepass", "pw", "--masterauth", "pw", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL)
    try:
        node = redis.Redis(port=port, password="pw")
        for _ in range(500):  # polling a server that is coming up, not waiting on timing
            try:
                node.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        node.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        for _ in range(500):
            if b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO"):
                break
            time.sleep(0.02)
        yield f"redis://:pw@127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


def test_loads_write_and_lookups_read_on_a_cluster(cluster_url: str, warehouse: Client) -> None:
    # Loads ran their scripts in the cluster client's pipeline, which refuses EVALSHA: nothing was
    # written. Lookups' async client dropped the password: every read failed.
    client = connect_redis(cluster_url, cluster=True)
    store = SegmentStore(client, prefix=f"t{secrets.token_hex(4)}")
    member, stale = secrets.token_hex(16), secrets.token_hex(16)
    store.put([(member, [101]), (stale, [102])])
    assert store.segments_of(member) == [101]
    assert asyncio.run(store.segments_of_async(member)) == [101]  # what GET /v1/segments reads
    reloaded = store.full_reload(warehouse)  # rewrites every member; sweeps keys no member holds
    assert reloaded["deleted_keys"] >= 2 and store.segments_of(stale) == []
