"""Assembly of the ASGI app: every surface of `crumb serve` in one process."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from activation.runner import STATS as SYNC_STATS
from activation.runner import SyncStatsExporter
from activation.service import Activation
from collector.categories import ContentTaxonomy
from collector.encoder import EncoderProcess
from collector.endpoints import Pixel
from collector.endpoints import routes as collector_routes
from collector.identity import CookieSigner
from collector.metrics import CollectorStats, StatsExporter, flush_latency
from collector.optouts import OptoutSet, record_optouts
from collector.rows import Enricher
from collector.service import Collector, CollectorConfig
from collector.sink import WarehouseSink, recent_event_ids
from collector.sites import load_sites
from collector.spool import Spool
from collector.writer import EventWriter
from crumb import control
from crumb.commands import CommandContext
from crumb.privacy import ErasureWorker, queue_erasure
from crumb.runtime import Runtime
from crumb.scheduler import Scheduler

log = logging.getLogger("crumb.app")

TRUSTED_PROXIES = frozenset({"127.0.0.1", "::1"})


class CrumbServer:
    """The services of one `crumb serve` process, wired from its Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.admin_token = runtime.secret("admin_token", settings.admin_token.get_secret_value())
        taxonomy = ContentTaxonomy.load(settings.content_taxonomy_file) if settings.content_taxonomy_file else None
        sites = load_sites(settings.sites_file, taxonomy)
        self.stats = CollectorStats()
        self.registry = CollectorRegistry()
        self.spool = Spool(settings.spool_dir)
        self.optouts = OptoutSet(runtime.redis)
        self.encoder = EncoderProcess(Enricher(sites.rules(), taxonomy), self.stats)
        self.writer = EventWriter(
            WarehouseSink(runtime.client, self.optouts), self.spool, self.encoder.encode, self.stats,
            flush_rows=settings.flush_rows, flush_interval_s=settings.flush_interval_s,
            max_pending_batches=max(1, settings.buffer_max_rows // settings.flush_rows),
            dedup_window_s=settings.dedup_window_s, observe_flush=flush_latency(self.registry).observe,
        )
        self.registry.register(StatsExporter(self.stats, self.writer.buffer_depth, self.spool.depth))
        self.registry.register(SyncStatsExporter(SYNC_STATS))
        signer = CookieSigner(runtime.secret("secret_key", settings.secret_key.get_secret_value()).encode())
        config = CollectorConfig(
            vendor_id=settings.tcf_vendor_id, cookie_domain=settings.cookie_domain,
            cookie_secure=settings.cookie_secure, max_event_age_ms=settings.max_event_age_hours * 3_600_000,
            trusted_proxies=TRUSTED_PROXIES,
        )
        self.collector = Collector(config, signer, sites, self.stats, self.writer.add, self._opt_out)
        self.activation = Activation(runtime, signer)
        self.erasures = ErasureWorker(
            runtime.client, runtime.redis, before_erase=lambda ids: record_optouts(runtime.client, ids)
        )
        self.commands = CommandContext(runtime, flush_events=self.writer.flush)
        self.scheduler = Scheduler()
        self.scheduler.every(settings.build_interval_s, "build", self._scheduled_build, first_in=self._build_due_in)
        self.scheduler.every(settings.sync_interval_s, "sync", self.activation.sync)

    def _build_due_in(self) -> float:
        from audiences.jobs import build_due_in

        return build_due_in(self.runtime.client, self.runtime.settings.build_interval_s)

    def _scheduled_build(self) -> None:
        from audiences.jobs import BuildBusy, build_once

        self.writer.flush()
        try:
            result = build_once(self.runtime.client, self.runtime.redis, self.runtime.settings)
        except BuildBusy:
            log.info("a build is already running elsewhere; skipping this one")
            return
        self.activation.after_build(result.build_id)

    def _opt_out(self, ids: list[str]) -> None:
        self.optouts.add(ids)  # from now on the writer drops these IDs, buffered events included
        queue_erasure(self.runtime.redis, ids)

    def start(self) -> None:
        settings = self.runtime.settings
        self.runtime.migrate()
        self.encoder.start()
        self.writer.start(recent_event_ids(
            self.runtime.client, settings.dedup_window_s, settings.max_event_age_hours * 3_600_000))
        self.erasures.start()
        self.activation.idsync.start()
        threading.Thread(target=self.activation.restore_store, name="crumb-store-restore", daemon=True).start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.activation.idsync.close()
        self.writer.close()
        self.encoder.close()
        self.erasures.stop()
        self.runtime.close()


class FastPaths:
    """Sends the hottest GET paths straight to bare ASGI handlers, past routing and middleware."""

    def __init__(self, app: ASGIApp, paths: dict[str, ASGIApp]) -> None:
        self._app = app
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            handler = self._paths.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self._app(scope, receive, send)


def build_app(server: CrumbServer, on_started: Any = None) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        server.start()
        # Everything alive now lives as long as the process: keep it out of every future GC scan.
        gc.freeze()
        control.announce(server.runtime.settings, os.getpid())
        if on_started:
            on_started()
        try:
            yield
        finally:
            control.withdraw(server.runtime.settings)
            server.stop()

    async def healthz(_request: Request) -> Response:
        return JSONResponse({
            "status": "ok", "buffer_depth": server.writer.buffer_depth(), "spool_depth": server.spool.depth(),
        })

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            *collector_routes(server.collector),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            *control.routes(server.admin_token, server.commands),
            *server.activation.routes(),
        ],
        lifespan=lifespan,
    )
    return FastPaths(app, {"/p.gif": Pixel(server.collector)})

