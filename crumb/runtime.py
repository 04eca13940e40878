"""The running parts a process holds: warehouse, Redis (maybe a child process), secrets."""

from __future__ import annotations

import secrets
from contextlib import AbstractContextManager
from pathlib import Path

import redis
from clickhouse_connect.driver.client import Client

from crumb import migrations, warehouse
from crumb.errors import CrumbError
from crumb.privacy import BUILD_LOCK_KEY, build_lock
from crumb.redis_server import EmbeddedRedis, connect_redis, existing_embedded
from crumb.settings import Settings

MIGRATION_WAIT_S = 900  # for a build to end: a first build of a large warehouse takes minutes


def no_build(redis_client: redis.Redis, wait_s: float = MIGRATION_WAIT_S,
             progress: migrations.Progress | None = None) -> AbstractContextManager[None]:
    """Pending migrations hold the build lock: they may move data a build writes (audiences_0011).
    Raises MigrationDeferred after `wait_s`."""
    if progress and redis_client.exists(BUILD_LOCK_KEY):
        progress.note("migrations wait for the running segment build to end")
    deferred = MigrationDeferred(
        f"a segment build held the build lock for {wait_s:.0f}s; migrations did not run: start again once it has ended")
    return build_lock(redis_client, wait_s, busy=deferred)


class MigrationDeferred(CrumbError):
    code = "migration_deferred"


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self._redis: redis.Redis | None = None
        self._embedded_redis: EmbeddedRedis | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = warehouse.connect(self.settings)
        return self._client

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = connect_redis(self._redis_url(), cluster=self.settings.redis_cluster)
        return self._redis

    def _redis_url(self) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        directory = self.settings.data_dir / "redis"
        running = existing_embedded(directory)  # another Crumb process's child: share it
        if running:
            return running
        self._embedded_redis = EmbeddedRedis(directory)
        self._embedded_redis.start()
        return self._embedded_redis.url

    def ensure_schema(self) -> None:
        """For commands that only read: the schema of a data dir no build or server has made yet.
        An existing one is left as it is (`crumb migrate` and `crumb serve` upgrade it): a read
        should not wait for a cluster's DDL queue, nor need the rights to change the schema."""
        if not self.client.query("EXISTS TABLE crumb.schema_migrations").result_rows[0][0]:
            self.migrate()

    def migrate(self, progress: migrations.Progress | None = None) -> list[str]:
        from audiences.schema import apply_history_retention
        from collector.schema import apply_retention

        dialect = migrations.Dialect(self.settings.clickhouse_cluster)
        retention = lambda client, d: apply_retention(client, d, self.settings.events_ttl_days)  # noqa: E731
        history = lambda client, d: apply_history_retention(client, d, self.settings.history_ttl_days)  # noqa: E731
        return migrations.apply(self.client, dialect, progress=progress, after=[retention, history],
                                exclusive=lambda: no_build(self.redis, progress=progress))

    def secret(self, name: str, configured: str) -> str:
        """A configured secret, or one generated once and kept in the data dir (mode 600)."""
        if configured:
            return configured
        path = self.settings.data_dir / name
        if not path.exists():
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._embedded_redis is not None:
            self._embedded_redis.stop()
        if self._client is not None:
            self._client.close()
        self._client = self._redis = self._embedded_redis = None


def read_secret_file(data_dir: Path, name: str) -> str | None:
    path = data_dir / name
    return path.read_text().strip() if path.exists() else None
