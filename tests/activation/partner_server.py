"""A fake ID sync partner on loopback: takes our redirect, assigns its own user ID, and sends the
browser back to our callback with it. Strict: a request not of the form it expects gets a 400
(and is recorded), so a wrong template fails the test that uses it.

Two styles, as real partners do it:
  GET /getuid?<our callback URL, encoded, with $UID>     Xandr's getuid: `$UID` replaced by its ID
  GET /pixel?google_nid=N&google_cm&google_hm=<b64 ID>   Google's cookie matching: back to the
                                                         callback it was configured with, plus
                                                         google_gid=<ID>&google_cver=1
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from activation.idsync import IdSync
from activation.partners import Partner
from tests.loopback import LoopbackServer

UID_COOKIE = "fake_uid"
_OUR_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Seen:
    path: str
    query: str
    status: int
    uid: str = ""
    error: str = ""


@dataclass
class FakePartner:
    nid: str = "crumb-test"
    callback: str = ""  # the Google-style callback configured "in the partner's UI"
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/getuid", self.getuid), Route("/pixel", self.pixel)])

    async def getuid(self, request: Request) -> Response:
        target = unquote(request.url.query)
        if not target.startswith(("http://", "https://")) or target.count("$UID") != 1:
            return self._reject(request, "getuid wants a URL that holds $UID once")
        uid = self._uid(request)
        return self._back(request, target.replace("$UID", uid), uid)

    async def pixel(self, request: Request) -> Response:
        params = parse_qs(request.url.query, keep_blank_values=True)
        if params.get("google_nid") != [self.nid] or params.get("google_cm") != [""]:
            return self._reject(request, "pixel wants google_nid=<our NID> and a bare google_cm")
        if not _OUR_ID.fullmatch(_websafe_b64(params.get("google_hm", [""])[0])):
            return self._reject(request, "google_hm must be web-safe base64 of the partner's ID")
        uid = self._uid(request)
        return self._back(request, f"{self.callback}?{urlencode({'google_gid': uid, 'google_cver': '1'})}", uid)

    def _uid(self, request: Request) -> str:
        return request.cookies.get(UID_COOKIE) or "P" + uuid.uuid4().hex[:20]

    def _back(self, request: Request, location: str, uid: str) -> Response:
        self.seen.append(Seen(request.url.path, request.url.query, 302, uid=uid))
        response = RedirectResponse(location, 302, headers={"cache-control": "no-store"})
        response.set_cookie(UID_COOKIE, uid, max_age=3600, samesite="none", secure=True)
        return response

    def _reject(self, request: Request, error: str) -> Response:
        self.seen.append(Seen(request.url.path, request.url.query, 400, error=error))
        return PlainTextResponse(error, 400)


def _websafe_b64(value: str) -> str:
    try:
        return base64.urlsafe_b64decode(value.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        return ""


class PartnerServer(LoopbackServer):
    """Serves a FakePartner on a free loopback port."""

    def __init__(self, partner: FakePartner) -> None:
        super().__init__(partner.app(), lifespan="auto", name="fake-partner")
        self.partner = partner


@contextlib.contextmanager
def partners_configured(idsync: IdSync, partners: list[Partner]) -> Iterator[None]:
    """The live server's ID sync with these partners added, for the length of a test."""
    before = idsync.partners
    idsync.configure([*before, *partners])
    try:
        yield
    finally:
        idsync.configure(before)
