"""The warehouse connection's own duties, on the session's embedded warehouse."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from crumb.warehouse import release_memory


def _resident_mb() -> int:
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))


def test_release_memory_gives_what_the_engine_freed_back_to_the_system(warehouse: Client) -> None:
    # A statement that needs a few hundred MB (a hash table of 4M keys): ClickHouse frees it when
    # done, but its allocator keeps it resident in this process until it is told to let it go.
    warehouse.command("SELECT number AS k, count() FROM numbers(4000000) GROUP BY k FORMAT Null",
                      settings={"max_threads": 2})
    held = _resident_mb()
    release_memory(warehouse)
    assert _resident_mb() < held - 100
