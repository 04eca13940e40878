"""The demo's stand-ins for the outside world: an ID-sync partner and a customer's webhook receiver.

Both are small HTTP servers on loopback that speak the real protocols (a getuid-style redirect
match; our signed-JSON webhook), so the demo runs the same code paths as production.
"""

from __future__ import annotations

import hmac
import itertools
import json
from collections import Counter
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from activation.destinations.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from activation.partners import Partner

PARTNER_NAME = "demo-partner"


def demo_partner(port: int) -> Partner:
    """A partner matched the Xandr way: it fills `$UID` in our callback URL and redirects there."""
    return Partner(name=PARTNER_NAME, gvl_id=1, enabled=True, uid_param="uid", uid_macro="$UID",
                   match_url=f"http://127.0.0.1:{port}/getuid?${{CALLBACK_URL}}")


def partner_app() -> Starlette:
    next_uid = itertools.count(1_000_001)

    async def getuid(request: Request) -> Response:
        callback = unquote(request.url.query)
        if "$UID" not in callback:
            return JSONResponse({"error": "no $UID in the callback"}, status_code=400)
        return RedirectResponse(callback.replace("$UID", f"demo-{next(next_uid)}"), status_code=302)

    return Starlette(routes=[Route("/getuid", getuid)])


class Receiver:
    """A customer's in-house system taking our webhook: checks the signature, counts what arrived."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.added: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.batches = 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            timestamp = request.headers.get(TIMESTAMP_HEADER, "")
            expected = sign(self.secret, timestamp, body)
            if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
                return JSONResponse({"error": "bad signature"}, status_code=401)
            for item in json.loads(body)["items"]:
                self.added.update(item.get("add", []))
                self.removed.update(item.get("remove", []))
            self.batches += 1
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])
