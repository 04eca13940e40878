"""The collector's HTTP surface. Handlers parse, call the Collector, respond.

The pixel is a bare ASGI callable that the app dispatches to before any routing or middleware:
it is the hottest path we serve, and it does no I/O of its own.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import rjsmin
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from collector.hits import Rejected
from collector.http import cors_headers, read_meta
from collector.service import MAX_BODY_BYTES, Collector

# The smallest transparent 1x1 GIF: 43 bytes.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_GIF_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(GIF)).encode()),
    (b"cache-control", b"no-store, max-age=0"),
]
TAG_PATH = Path(__file__).with_name("tag.js")


class Pixel:
    """`GET /p.gif`: always the GIF; rejected hits are counted, never shown to the browser."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        meta = read_meta(scope["headers"], scope.get("client"))
        outcome = self._collector.collect_pixel(scope["query_string"], meta)
        headers = _GIF_HEADERS + [(b"set-cookie", c.encode("latin-1")) for c in outcome.set_cookies]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": GIF})


def routes(collector: Collector) -> list[Route]:
    tag = TagFile(TAG_PATH)

    async def beacon(request: Request) -> Response:
        meta = read_meta(request.scope["headers"], request.scope.get("client"))
        cors = cors_headers(meta.origin, collector.sites.origin_allowed(meta.origin))
        if meta.origin and not cors:
            collector.stats.reject("origin_not_allowed")
            return _error(403, "origin_not_allowed", f"origin {meta.origin!r} is not configured", [])
        body = await _read_body(request, MAX_BODY_BYTES)
        if body is None:
            collector.stats.reject("too_large")
            return _error(413, "too_large", f"body is larger than {MAX_BODY_BYTES} bytes", cors)
        try:
            outcome = collector.collect_beacon(body, meta)
        except Rejected as rejected:
            return _error(400, rejected.reason, rejected.message, cors)
        response = Response(status_code=204, headers=dict((k.decode(), v.decode()) for k, v in cors))
        for cookie in outcome.set_cookies:
            response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
        return response

    async def beacon_preflight(request: Request) -> Response:
        origin = request.headers.get("origin", "")
        cors = cors_headers(origin, collector.sites.origin_allowed(origin))
        headers = dict((k.decode(), v.decode()) for k, v in cors)
        if cors:
            headers.update({"access-control-allow-methods": "POST", "access-control-allow-headers": "content-type",
                            "access-control-max-age": "86400"})
        return Response(status_code=204, headers=headers)

    async def opt_out(request: Request) -> Response:
        meta = read_meta(request.scope["headers"], request.scope.get("client"))
        cookies = collector.opt_out(meta, request.query_params.get("fp_id"))
        if request.query_params.get("format") == "gif":
            response: Response = Response(GIF, media_type="image/gif", headers={"cache-control": "no-store"})
        else:
            response = HTMLResponse(_OPTED_OUT_PAGE, headers={"cache-control": "no-store"})
        for cookie in cookies:
            response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
        return response

    return [
        Route("/tag.js", tag.serve, methods=["GET", "HEAD"]),
        Route("/e", beacon, methods=["POST"]),
        Route("/e", beacon_preflight, methods=["OPTIONS"]),
        Route("/optout", opt_out, methods=["GET", "POST"]),
    ]


class TagFile:
    """tag.js, read once and minified (the source stays readable), with an ETag and a gzipped copy."""

    def __init__(self, path: Path) -> None:
        self.body = rjsmin.jsmin(path.read_text(encoding="utf-8")).encode()
        self.gzipped = gzip.compress(self.body, compresslevel=9, mtime=0)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    async def serve(self, request: Request) -> Response:
        headers = {"etag": self.etag, "cache-control": "public, max-age=3600", "vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        body = self.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body, headers["content-encoding"] = self.gzipped, "gzip"
        return Response(body, media_type="application/javascript; charset=utf-8", headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None past `limit` (read no further: an oversized body is not buffered)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, code: str, message: str, cors: list[tuple[bytes, bytes]]) -> JSONResponse:
    headers = dict((k.decode(), v.decode()) for k, v in cors)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_OPTED_OUT_PAGE = """<!doctype html><meta charset="utf-8"><title>Opted out</title>
<p>You have opted out. This browser's IDs were recorded as opted out and what we held for them is
being erased; nothing identifying is collected from this browser any more. Clearing your cookies
removes the opt-out cookie.</p>"""
