import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from audiences.schema import HISTORY_RETENTION, apply_history_retention
from crumb.migrations import Dialect, Migration, all_migrations, apply
from crumb.privacy import BUILD_LOCK_KEY
from crumb.runtime import MigrationDeferred, no_build
from tests.conftest import LiveServer


def schema(client: Client) -> dict[str, str]:
    rows = client.query("SELECT name, create_table_query FROM system.tables WHERE database = 'crumb'").result_rows
    return dict(rows)


def test_migrate_twice_changes_nothing(warehouse: Client) -> None:
    before = schema(warehouse)
    assert apply(warehouse, Dialect()) == []
    assert schema(warehouse) == before
    recorded = {r[0] for r in warehouse.query("SELECT id FROM crumb.schema_migrations FINAL").result_rows}
    assert recorded == {m.id for m in all_migrations()}


def test_retention_follows_the_setting(warehouse: Client) -> None:
    assert "toIntervalDay(180)" in schema(warehouse)["events"]


class _CountingClient:
    """The warehouse, counting the ALTERs sent through it."""

    def __init__(self, client: Client) -> None:
        self.client, self.alters = client, 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.query(*args, **kwargs)

    def command(self, sql: str, **kwargs: Any) -> Any:
        self.alters += sql.startswith("ALTER")
        return self.client.command(sql, **kwargs)


def test_history_deltas_and_sizes_are_kept_for_their_retention(warehouse: Client) -> None:
    tables = schema(warehouse)
    for table, column in HISTORY_RETENTION.items():
        assert f"TTL toDateTime({column}) + toIntervalDay(400)" in tables[table], table  # the default
    segment = 40_000 + uuid.uuid4().int % 10_000
    now = datetime.now(UTC)
    warehouse.insert("crumb.segment_history_closed", [
        [segment, "expired", "cookie", now - timedelta(days=420), now - timedelta(days=401), 1],
        [segment, "kept", "cookie", now - timedelta(days=420), now - timedelta(days=399), 1]],
        column_names=["segment_id", "id", "id_type", "entered_at", "exited_at", "build_id"])
    warehouse.command("OPTIMIZE TABLE crumb.segment_history_closed FINAL")
    left = warehouse.query("SELECT id FROM crumb.segment_history_closed WHERE segment_id = {s:UInt32}",
                           parameters={"s": segment}).result_rows
    assert left == [("kept",)]
    counting = _CountingClient(warehouse)
    apply_history_retention(counting, Dialect(), 400)  # type: ignore[arg-type]
    assert counting.alters == 0  # as it is: a TTL modified again rewrites every part
    try:
        apply_history_retention(counting, Dialect(), 30)  # type: ignore[arg-type]
        assert counting.alters == 3 and "toIntervalDay(30)" in schema(warehouse)["id_deltas"]
    finally:
        apply_history_retention(warehouse, Dialect(), 400)


def test_cluster_dialect_replicates_and_runs_on_the_cluster() -> None:
    dialect = Dialect(cluster="crumb")
    for migration in all_migrations():
        for statement in migration.statements:
            rendered = dialect.render(statement)
            if rendered.lstrip().startswith("INSERT INTO"):
                # Data, written once: the replicated table hands it to every replica.
                assert "ON CLUSTER" not in rendered
                continue
            assert "ON CLUSTER `crumb`" in rendered
            ddl_without_engine = rendered.lstrip().startswith(
                ("ALTER TABLE", "DROP TABLE", "DROP VIEW", "CREATE VIEW", "DELETE FROM", "TRUNCATE TABLE"))
            assert "ENGINE = Replicated" in rendered or ddl_without_engine


def test_pending_migrations_run_inside_the_exclusive_section_and_none_enters_it(warehouse: Client) -> None:
    entered: list[str] = []

    @contextmanager
    def exclusive() -> Iterator[None]:
        entered.append("in")
        yield

    made = Migration(f"test_{uuid.uuid4().hex[:8]}", ["SELECT 1"])
    assert apply(warehouse, Dialect(), [made], exclusive=exclusive) == [made.id] and entered == ["in"]
    assert apply(warehouse, Dialect(), [made], exclusive=exclusive) == [] and entered == ["in"]
    warehouse.command("DELETE FROM crumb.schema_migrations WHERE id = {id:String}", parameters={"id": made.id})


def test_migrations_wait_for_a_running_build_and_say_so_when_it_does_not_end(live_server: LiveServer) -> None:
    redis_client = live_server.crumb.runtime.redis
    build_lock = redis_client.lock(BUILD_LOCK_KEY, timeout=60)
    assert build_lock.acquire(blocking=False)
    try:
        with pytest.raises(MigrationDeferred, match="build lock"), no_build(redis_client, wait_s=0.2):
            pass
    finally:
        build_lock.release()
    with no_build(redis_client, wait_s=0.2):  # free: taken, and given back
        assert redis_client.lock(BUILD_LOCK_KEY).locked()
    assert not redis_client.lock(BUILD_LOCK_KEY).locked()
