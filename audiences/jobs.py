"""Builds as jobs: load the definitions, take the one-build-at-a-time lock, build."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from clickhouse_connect.driver.client import Client

from audiences.builder import BuildResult, build
from audiences.definitions import SegmentSet, load_segments
from audiences.errors import AudiencesError
from collector.categories import ContentTaxonomy
from crumb.privacy import build_lock
from crumb.progress import SILENT, Progress
from crumb.settings import Settings

BUILD_LOCK_WAIT_S = 60  # an erasure holds the lock for a batch: seconds
EXAMPLES_DIR = Path(__file__).with_name("examples")


class BuildBusy(AudiencesError):
    code = "build_running"


def load_definitions(directory: Path | None, settings: Settings, building: bool = False) -> SegmentSet:
    """The segments of the directory (none without one). An empty directory is an error only when
    `building`: reads (a report, a preview of a first segment) have nothing to lose."""
    if directory is None:
        return SegmentSet([])
    audience_ids = None
    if settings.audience_taxonomy_file:
        audience_ids = frozenset(ContentTaxonomy.load(settings.audience_taxonomy_file).names)
    return load_segments(directory, audience_ids, allow_empty=not building)


def content_taxonomy(settings: Settings) -> ContentTaxonomy | None:
    return ContentTaxonomy.load(settings.content_taxonomy_file) if settings.content_taxonomy_file else None


def build_once(
    client: Client, redis_client: redis.Redis, settings: Settings, directory: Path | None = None,
    progress: Progress = SILENT, as_of_ms: int | None = None, follow: bool = True,
) -> BuildResult:
    """One build, unless another is running anywhere (the lock lives in Redis, shared by replicas)."""
    segments = load_definitions(directory or settings.segments_dir, settings, building=True)
    # Erasures take the lock too: a build waits for one to end.
    busy = BuildBusy("another build (or an erasure) is running; one build at a time")
    with build_lock(redis_client, BUILD_LOCK_WAIT_S, busy=busy):
        return build(client, segments, content_taxonomy(settings), progress, as_of_ms=as_of_ms, follow=follow)


def build_due_in(client: Client, interval_s: float, now_ms: int | None = None) -> float:
    """Seconds until the scheduler's next build: an interval after the last build started,
    whatever became of it (`due_in`). Counted from each start of the server instead, one
    restarted more often than the interval (daily builds, daily deploys) never built; counted from
    the last success, a build that takes the server down with it would run again at each restart."""
    (last_ms, builds), = client.query(
        "SELECT toUnixTimestamp64Milli(max(started_at)), count() FROM crumb.builds FINAL").result_rows
    return due_in(int(last_ms) if builds else None, now_ms if now_ms is not None else int(time.time() * 1000),
                  interval_s)


def due_in(last_started_ms: int | None, now_ms: int, interval_s: float) -> float:
    """An interval after the last build, at once when that is past; a whole interval without one
    (a new install builds when asked, or an interval after it starts)."""
    if last_started_ms is None:
        return interval_s
    return max(0.0, interval_s - (now_ms - last_started_ms) / 1000)
