"""Shared fixtures: one real chdb warehouse and one real redis-server for the test session.

chdb lets a process open one warehouse directory, so every test in this process shares it;
tests keep apart by using their own `site` names (or their own IDs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from crumb.app import CrumbServer, build_app
from crumb.runtime import Runtime
from crumb.settings import Settings
from tests.loopback import LoopbackServer, free_port

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_VENDOR_ID = 1111


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("crumb"), port=free_port(), tcf_vendor_id=TEST_VENDOR_ID,
        content_taxonomy_file=SHARED_DATA / "iab-content-taxonomy-3.1.tsv", flush_interval_s=0.2,
        build_interval_s=0,  # tests build explicitly; a background build would race them
    )


class LiveServer(LoopbackServer):
    """A Crumb server on loopback, in this process, so tests can read its warehouse directly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.crumb = CrumbServer(Runtime(settings))
        super().__init__(build_app(self.crumb), port=settings.port, lifespan="on", name="live-server")

    @property
    def client(self) -> Client:
        return self.crumb.runtime.client

    @property
    def stats(self) -> Any:
        return self.crumb.stats

    def flush(self) -> None:
        assert self.crumb.writer.flush(timeout_s=30), "writer did not settle"

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.client.query(sql, parameters=parameters or {}).result_rows)


@pytest.fixture(scope="session")
def live_server(settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def warehouse(live_server: LiveServer) -> Client:
    """The session's migrated chdb warehouse (the same one the live server writes to)."""
    return live_server.client


@pytest.fixture
def site() -> str:
    """A site name of this test's own: rows in the shared warehouse stay apart."""
    return f"t-{uuid.uuid4().hex[:10]}"
