"""GET /sync/{partner} and its callback (placeholder until ID sync lands)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from activation.idsync import IdSync


def routes(idsync: IdSync) -> list[BaseRoute]:
    return []
