"""Partner ID sync (placeholder until ID sync lands: see activation/service.py)."""

from __future__ import annotations

from collector.identity import CookieSigner
from crumb.runtime import Runtime


class IdSync:
    def __init__(self, runtime: Runtime, signer: CookieSigner) -> None:
        self.runtime = runtime
        self.signer = signer
