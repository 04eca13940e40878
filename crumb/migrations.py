"""Versioned, idempotent schema migrations.

Each package declares its own `MIGRATIONS` (it owns its tables). `apply` runs the ones not yet
recorded in `crumb.schema_migrations`, in order, so running it twice changes nothing. DDL is
written once with `{on_cluster}` and engine placeholders; a cluster deployment gets
`ON CLUSTER` and Replicated engines from the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from crumb.progress import Progress

__all__ = ["Dialect", "Migration", "Progress", "apply", "all_migrations", "keep_ttl"]

DATABASE = "crumb"


@dataclass(frozen=True)
class Migration:
    id: str  # "<package>_<NNNN>_<what>", sorted within a package
    statements: Sequence[str]


@dataclass(frozen=True)
class Dialect:
    """How DDL differs between one embedded/server node and a cluster."""

    cluster: str = ""

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER `{self.cluster}`" if self.cluster else ""

    def engine(self, name: str, *args: str) -> str:
        """`MergeTree` family engine, replicated on a cluster."""
        if self.cluster:
            zk = ["'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'"]
            return f"Replicated{name}({', '.join(zk + list(args))})"
        return f"{name}({', '.join(args)})"

    def render(self, statement: str) -> str:
        return statement.format(
            db=DATABASE,
            on_cluster=self.on_cluster,
            MergeTree=self.engine("MergeTree"),
            ReplacingMergeTree=self.engine("ReplacingMergeTree"),
            **{"ReplacingMergeTree(at)": self.engine("ReplacingMergeTree", "at")},
        )


def keep_ttl(client: Client, dialect: Dialect, table: str, ttl: str) -> None:
    """Give `crumb.<table>` this TTL (as ClickHouse writes it back: `toIntervalDay(n)`, not
    `INTERVAL n DAY`), unless it has it already: modifying a TTL rewrites the table's parts. Each
    package's retention follows its setting on every migrate, so changing it needs no migration."""
    engine = client.query("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                          parameters={"db": DATABASE, "t": table}).result_rows
    if engine and f"TTL {ttl}" in engine[0][0]:
        return
    client.command(dialect.render(f"ALTER TABLE {{db}}.{table} {{on_cluster}} MODIFY TTL {ttl}"))


def all_migrations() -> list[Migration]:
    # Imported here so each package stays the owner of its DDL.
    from activation.schema import MIGRATIONS as activation
    from audiences.schema import MIGRATIONS as audiences
    from collector.schema import MIGRATIONS as collector
    from crumb.schema import MIGRATIONS as core

    return [*core, *collector, *audiences, *activation]


def apply(
    client: Client,
    dialect: Dialect,
    migrations: Sequence[Migration] | None = None,
    progress: Progress | None = None,
    after: Sequence[Callable[[Client, Dialect], None]] = (),
    exclusive: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> list[str]:
    """Apply pending migrations; returns the IDs applied now. When some are pending, they run
    inside `exclusive()`: some move data that builds write (the runtime passes the build lock)."""
    migrations = all_migrations() if migrations is None else migrations
    client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE} {dialect.on_cluster}")
    client.command(dialect.render(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations {on_cluster} "
        "(id String, applied_at DateTime DEFAULT now()) ENGINE = {ReplacingMergeTree} ORDER BY id"
    ))
    applied = []
    if any(migration.id not in _done(client) for migration in migrations):
        with exclusive():
            done = _done(client)  # again: another process may have applied them while this one waited
            for migration in migrations:
                if migration.id in done:
                    continue
                if progress:
                    progress.note(f"migration {migration.id}")
                for statement in migration.statements:
                    client.command(dialect.render(statement))
                client.insert(f"{DATABASE}.schema_migrations", [[migration.id]], column_names=["id"])
                applied.append(migration.id)
    for hook in after:
        hook(client, dialect)
    return applied


def _done(client: Client) -> set[str]:
    return {row[0] for row in client.query(f"SELECT id FROM {DATABASE}.schema_migrations FINAL").result_rows}
