"""GET /v1/segments: the requesting browser's segments (its signed `crumb_id` cookie, CORS for
the configured sites' origins), or `?id=` for server callers with `Authorization: Bearer <key>`.

`?format=json|openrtb|gam` (activation/lookup.py renders them). A browser that opted out, sends
GPC, or lacks TCF consent gets the empty answer, 200. Browser answers leave `id` null: `crumb_id`
is HttpOnly, and page scripts have no use for it. The hot path is one HGETALL on the event loop.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from activation.lookup import BadRequest, SegmentInfo, may_activate, parse_format, parse_id, render
from activation.store import SegmentCatalog, SegmentStore
from collector.http import RequestMeta, cors_headers, parse_cookies, read_meta
from collector.identity import OPTOUT_COOKIE, THIRD_PARTY_COOKIE, CookieSigner
from collector.sites import SitesConfig, load_sites
from crumb.runtime import Runtime

BUILD_CACHE_S = 1.0  # the build pointer shown in answers may lag its move by this much


class Denied(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Lookup:
    """Who is asking, and their segments as the catalog describes them."""

    def __init__(self, store: SegmentStore, signer: CookieSigner, vendor_id: int, api_key: str,
                 sites: SitesConfig) -> None:
        self.store, self.signer, self.vendor_id, self.api_key, self.sites = store, signer, vendor_id, api_key, sites
        self._build: tuple[float, int | None] = (float("-inf"), None)

    def member(self, query: QueryParams, meta: RequestMeta, authorization: str) -> tuple[str, str] | None:
        """(ID, id type) to answer for, or None for the empty answer."""
        if "id" in query:
            self._authorize(authorization)
            return parse_id(query["id"], query.get("id_type"))
        cookies = parse_cookies(meta.cookie_header)
        allowed = may_activate(
            opted_out=cookies.get(OPTOUT_COOKIE) == "1", gpc=meta.gpc or query.get("gpc") == "1",
            gdpr=query.get("gdpr"), gdpr_consent=query.get("gdpr_consent"), us_privacy=query.get("us_privacy"),
            vendor_id=self.vendor_id,
        )
        cookie_id = self.signer.verify(cookies.get(THIRD_PARTY_COOKIE, "")) if allowed else None
        return (cookie_id, "cookie") if cookie_id else None

    def _authorize(self, authorization: str) -> None:
        if not self.api_key:
            raise Denied(403, "lookup_disabled", "no lookup API key is configured (CRUMB_LOOKUP_API_KEY)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise Denied(401, "unauthorized", "?id= needs Authorization: Bearer <lookup API key>")

    async def segments(self, member_id: str, id_type: str, keyed: bool = False) -> list[SegmentInfo]:
        """`keyed` (a server's `?id=`): an ID in the opt-out set gets none. The browser's opt-out
        cookie says so at its door, but an opted-out ID keeps its memberships until the privacy
        worker erases it, which waits for a running build to end."""
        if keyed and await self.store.opted_out_async(member_id):
            return []
        ids = await self.store.segments_of_async(member_id, id_type)
        return [SegmentInfo(s.id, s.name, s.iab_audience_id) for s in self.store.active(ids)]

    async def build_id(self) -> int | None:
        checked, value = self._build
        if time.monotonic() - checked >= BUILD_CACHE_S:
            value = await self.store.applied_build_async()
            self._build = (time.monotonic(), value)
        return value


def routes(store: SegmentStore, runtime: Runtime, signer: CookieSigner) -> list[BaseRoute]:
    settings = runtime.settings
    if store.catalog is None:
        store.catalog = SegmentCatalog.from_settings(settings)  # the store's TTLs come from it too
    lookup = Lookup(store, signer, settings.tcf_vendor_id, settings.lookup_api_key.get_secret_value(),
                    load_sites(settings.sites_file, None))

    async def segments(request: Request) -> Response:
        meta = read_meta(request.scope["headers"], None)
        headers = _headers(lookup.sites, meta.origin)
        if meta.origin and "access-control-allow-origin" not in headers:
            return _error(403, "origin_not_allowed", f"origin {meta.origin!r} is not configured", headers)
        try:
            fmt = parse_format(request.query_params.get("format"))
            member = lookup.member(request.query_params, meta, request.headers.get("authorization", ""))
        except BadRequest as bad:
            return _error(400, bad.code, str(bad), headers)
        except Denied as denied:
            return _error(denied.status, denied.code, str(denied), headers)
        keyed = "id" in request.query_params
        found = await lookup.segments(*member, keyed=keyed) if member else []
        shown_id = member[0] if member and keyed else None
        return JSONResponse(render(fmt, shown_id, found, await lookup.build_id()), headers=headers)

    async def preflight(request: Request) -> Response:
        headers = _headers(lookup.sites, request.headers.get("origin", ""))
        if "access-control-allow-origin" in headers:
            headers.update({"access-control-allow-methods": "GET", "access-control-max-age": "86400"})
        return Response(status_code=204, headers=headers)

    return [Route("/v1/segments", segments, methods=["GET"]), Route("/v1/segments", preflight, methods=["OPTIONS"])]


def _headers(sites: SitesConfig, origin: str) -> dict[str, str]:
    cors = cors_headers(origin, sites.origin_allowed(origin))
    return {"cache-control": "private, no-store", **{k.decode(): v.decode("latin-1") for k, v in cors}}


def _error(status: int, code: str, message: str, headers: dict[str, Any]) -> JSONResponse:
    if status == 401:
        headers = {**headers, "www-authenticate": "Bearer"}
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)
