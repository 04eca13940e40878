"""ID sync over HTTP: the frame the tag loads, the redirect out to a partner, the callback in.

  GET /sync/frame                 a tiny page with one <img> per partner due for this browser,
                                  and one per URL destination due (url_destinations.py)
  GET /sync/{partner}             302 to the partner's match URL, or the GIF when refused/not due
  GET /sync/{partner}/callback    stores the partner's ID, answers the GIF (a push: 302 back)

Handlers are plain functions: Starlette runs them in its thread pool, as they talk to Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from activation.idsync import BadCallback, IdSync, SyncSignals
from activation.partners import Partner
from activation.url_destinations import UrlDestinations
from collector.endpoints import GIF
from collector.http import parse_cookies, read_meta
from collector.identity import OPTOUT_COOKIE, THIRD_PARTY_COOKIE

NO_STORE = {"cache-control": "no-store, max-age=0"}
_MAX_PARAM_CHARS = 4096


def routes(idsync: IdSync, pixels: UrlDestinations | None = None) -> list[BaseRoute]:
    def frame(request: Request) -> Response:
        cookie_id, signals = _browser(request, idsync)
        urls = pixels.due(cookie_id, signals) if pixels else []
        return HTMLResponse(frame_html(idsync.due_partners(cookie_id, signals), signals, urls), headers=NO_STORE)

    def start(request: Request) -> Response:
        partner = idsync.partner(request.path_params["partner"])
        if partner is None:
            return _not_found(request.path_params["partner"])
        cookie_id, signals = _browser(request, idsync)
        started = idsync.start_match(partner, cookie_id, signals, _callback_base(request, idsync))
        return RedirectResponse(started.url, 302, headers=NO_STORE) if started.url else _gif()

    def callback(request: Request) -> Response:
        partner = idsync.partner(request.path_params["partner"])
        if partner is None:
            return _not_found(request.path_params["partner"])
        cookie_id, signals = _browser(request, idsync)
        push = _param(request, partner.push_param) if partner.push_param else ""
        try:
            done = idsync.complete_match(partner, cookie_id, _param(request, partner.uid_param), signals, push or "")
        except BadCallback as bad:
            return JSONResponse({"error": {"code": bad.code, "message": str(bad)}}, 400, headers=NO_STORE)
        return RedirectResponse(done.redirect, 302, headers=NO_STORE) if done.redirect else _gif()

    return [
        Route("/sync/frame", frame, methods=["GET"]),
        Route("/sync/{partner}", start, methods=["GET"]),
        Route("/sync/{partner}/callback", callback, methods=["GET"]),
    ]


def frame_html(partners: list[Partner], signals: SyncSignals, urls: Sequence[str] = ()) -> str:
    query = urlencode(signals.query())
    images = "".join(
        f'<img src="{escape(f"/sync/{p.name}" + (f"?{query}" if query else ""))}" width="1" height="1" alt="">'
        for p in partners
    )
    # URL destinations: no referrer, as the frame's address carries the consent string
    pixels = "".join(
        f'<img src="{escape(url)}" width="1" height="1" alt="" referrerpolicy="no-referrer">' for url in urls
    )
    return f'<!doctype html><meta charset="utf-8"><title>sync</title>{images}{pixels}'


def _browser(request: Request, idsync: IdSync) -> tuple[str | None, SyncSignals]:
    """The browser's verified cookie ID (None without one) and its privacy signals."""
    meta = read_meta(request.scope["headers"], request.scope.get("client"))
    cookies = parse_cookies(meta.cookie_header) if meta.cookie_header else {}
    signed = cookies.get(THIRD_PARTY_COOKIE, "")
    query = request.query_params
    signals = SyncSignals(
        gdpr=_param(request, "gdpr") or "", gdpr_consent=_param(request, "gdpr_consent") or "",
        gpc=meta.gpc or query.get("gpc") == "1", us_privacy=_param(request, "us_privacy") or "",
        gpp=_param(request, "gpp") or "", gpp_sid=_param(request, "gpp_sid") or "",
        opted_out=cookies.get(OPTOUT_COOKIE) == "1",
    )
    return (idsync.signer.verify(signed) if signed else None), signals


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value[:_MAX_PARAM_CHARS + 1] if value is not None else None  # over-long TC strings stay undecodable


def _callback_base(request: Request, idsync: IdSync) -> str:
    """How browsers reach us: the public URL when configured, else the host this request came to."""
    return idsync.runtime.settings.public_url or str(request.base_url)


def _gif() -> Response:
    return Response(GIF, media_type="image/gif", headers=NO_STORE)


def _not_found(name: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "unknown_partner", "message": f"no partner {name[:40]!r}"}}, 404)
