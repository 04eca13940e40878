"""`crumb activate sync` (placeholder until the sync runner lands)."""

from __future__ import annotations

from typing import Any

from crumb.progress import Progress
from crumb.runtime import Runtime


def sync_all(runtime: Runtime, progress: Progress) -> list[dict[str, Any]]:
    return []
