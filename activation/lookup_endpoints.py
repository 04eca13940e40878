"""GET /v1/segments (placeholder until the lookup lands)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from activation.store import SegmentStore
from collector.identity import CookieSigner
from crumb.runtime import Runtime


def routes(store: SegmentStore, runtime: Runtime, signer: CookieSigner) -> list[BaseRoute]:
    return []
