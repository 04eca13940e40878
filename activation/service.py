"""The activation package as `crumb serve` runs it: one object the app composes.

Each part lives in its own module; this class only wires them from the runtime:
  store.py            the Redis segment store, loaded from each build's deltas
  lookup_endpoints.py GET /v1/segments (JSON, OpenRTB user.data, Google Ad Manager key-values)
  idsync.py           partner ID sync: redirects, callbacks, match tables (+ idsync_endpoints.py)
  url_destinations.py pixels the browser fires for its segments, in the ID sync frame
  runner.py           `crumb activate sync`: deltas → destinations, checkpoints, retries, dead letters
  destinations/       one module per platform behind one small protocol
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.routing import BaseRoute

from collector.identity import CookieSigner
from crumb.progress import SILENT, Progress
from crumb.runtime import Runtime

log = logging.getLogger("crumb.activation")


class Activation:
    def __init__(self, runtime: Runtime, signer: CookieSigner) -> None:
        from activation.idsync import IdSync
        from activation.store import SegmentCatalog, SegmentStore
        from activation.url_destinations import UrlDestinations

        self.runtime = runtime
        self.signer = signer
        self.store = SegmentStore(runtime.redis, catalog=SegmentCatalog.from_settings(runtime.settings))
        self.idsync = IdSync(runtime, signer)
        # The segments a lookup answers: a paused one's pixel stops with its lookups.
        self.url_destinations = UrlDestinations.from_runtime(runtime, self.store.active_segments_of)

    def routes(self) -> list[BaseRoute]:
        from activation.idsync_endpoints import routes as idsync_routes
        from activation.lookup_endpoints import routes as lookup_routes

        return [
            *lookup_routes(self.store, self.runtime, self.signer), *idsync_routes(self.idsync, self.url_destinations),
        ]

    def restore_store(self) -> None:
        """Reload the segment store if it lost everything (`SegmentStore.restore`); logged, as it
        runs beside the server's start."""
        try:
            restored = self.store.restore(self.runtime.client)
        except Exception:
            log.exception("segment store: reloading it at start failed; the next build loads it")
            return
        if restored is not None:
            log.info("segment store held no build: reloaded %s", restored)

    def after_build(self, build_id: int) -> dict[str, Any]:
        """Load a successful build's deltas into the segment store."""
        return self.store.load_build(self.runtime.client, build_id)

    def sync(self, progress: Progress = SILENT) -> list[dict[str, Any]]:
        """Push pending deltas to every configured destination."""
        from activation.runner import sync_all

        return sync_all(self.runtime, progress)
