"""A receiver of Crumb's signed-JSON webhook: checks the timestamp window and the HMAC."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.activation.conformance.server import Faults, LoopbackServer, off_spec

TOLERANCE_S = 300


class WebhookServer:
    def __init__(self, secret: str = "hook-secret", id_key: str = "cookie_id") -> None:
        self.secret = secret
        self.id_key = id_key
        self.faults = Faults()
        self.batches: list[dict[str, Any]] = []
        self.state: set[tuple[str, str]] = set()
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self.server = LoopbackServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url + "/hook"

    async def _hook(self, request: Request) -> Response:
        fault = self.faults.take()
        if fault:
            return fault
        body = await request.body()
        timestamp = request.headers.get("X-Crumb-Timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_S:
            return off_spec("timestamp missing or outside the replay window", 401)
        expected = "sha256=" + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Crumb-Signature", "")):
            return off_spec("bad signature", 401)
        if request.headers.get("content-type") != "application/json":
            return off_spec("Content-Type must be application/json", 415)
        payload = json.loads(body)
        problem = self._check(payload)
        if problem:
            return off_spec(problem)
        self.batches.append(payload)
        for item in payload["items"]:
            for name in item["add"]:
                self.state.add((item[self.id_key], name))
            for name in item["remove"]:
                self.state.discard((item[self.id_key], name))
        return JSONResponse({"ok": True})

    def _check(self, payload: Any) -> str | None:
        if not isinstance(payload, dict) or set(payload) != {"destination", "sent_at", "items"}:
            return "body must be {destination, sent_at, items}"
        for item in payload["items"]:
            if set(item) != {self.id_key, "add", "remove"} or not item[self.id_key]:
                return f"bad item {item!r}"
            if not all(isinstance(n, str) for n in item["add"] + item["remove"]):
                return "segment names are strings"
        return None
