"""The collector's domain: requests in, hits to the writer, cookies out. No HTTP framework here."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from collector.consent import NO_GDPR, Consent, decode_consent
from collector.hits import (
    MAX_EVENTS_PER_BATCH,
    Rejected,
    RequestContext,
    check_fp_id,
    check_site,
    consent_columns,
    make_hit,
    pixel_hit,
)
from collector.http import RequestMeta, cookie_attributes, parse_cookies, set_cookie
from collector.identity import (
    COOKIE_MAX_AGE_S,
    FIRST_PARTY_COOKIE,
    OPTOUT_COOKIE,
    THIRD_PARTY_COOKIE,
    CookieSigner,
    new_cookie_id,
)
from collector.metrics import CollectorStats
from collector.sites import SitesConfig

MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_BYTES = 8 * 1024


@dataclass(slots=True)
class Outcome:
    accepted: int = 0
    set_cookies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CollectorConfig:
    vendor_id: int
    cookie_domain: str
    cookie_secure: bool
    max_event_age_ms: int
    trusted_proxies: frozenset[str]


class Collector:
    def __init__(
        self,
        config: CollectorConfig,
        signer: CookieSigner,
        sites: SitesConfig,
        stats: CollectorStats,
        add_hit: Callable[[Any], None],
        opt_out_ids: Callable[[list[str]], None],
    ) -> None:
        self.config = config
        self._signer = signer
        self.sites = sites
        self.stats = stats
        self._add_hit = add_hit
        self._opt_out_ids = opt_out_ids
        # crumb_id is set on nearly every hit: its attributes are joined once.
        self._id_cookie_attributes = cookie_attributes(
            max_age=COOKIE_MAX_AGE_S, domain=config.cookie_domain, secure=config.cookie_secure)

    # -- the two ways in ------------------------------------------------------------------------

    def collect_beacon(self, body: bytes, meta: RequestMeta) -> Outcome:
        """Accept a JSON batch whole, or raise Rejected (counted) saying what is wrong."""
        try:
            payload = _parse_json_object(body)
            events = _events(payload.get("events"))
            consent = payload.get("consent") or {}
            if not isinstance(consent, dict):
                raise Rejected("bad_field", "consent must be an object")
            return self._collect(payload, events, consent, meta, "beacon")
        except Rejected as rejected:
            self.stats.reject(rejected.reason)
            raise

    def collect_pixel(self, query: bytes, meta: RequestMeta) -> Outcome:
        """Accept one event from a query string; never raises — the browser always gets the GIF."""
        try:
            params = parse_query(query)
            if "event_id" not in params:  # a plain <img> pixel has no tag to set one
                params["event_id"] = str(uuid.uuid4())
            return self._collect(params, None, params, meta, "pixel")
        except Rejected as rejected:
            self.stats.reject(rejected.reason)
            return Outcome()

    def _collect(
        self, payload: Mapping[str, Any], events: list[Any] | None, consent_fields: Mapping[str, Any],
        meta: RequestMeta, source: str,
    ) -> Outcome:
        """Identity, consent and validation shared by both ways in; `events` None: a pixel hit."""
        site = check_site(payload.get("site"))
        if not self.sites.known(site):
            raise Rejected("unknown_site", f"site {site!r} is not configured")
        cookies = _our_cookies(meta.cookie_header)
        if cookies.get(OPTOUT_COOKIE) == "1":
            self.stats.reject("opted_out")
            return Outcome()
        consent = _consent(consent_fields, meta, self.config.vendor_id)
        outcome = Outcome()
        ctx = RequestContext(
            site=site, cookie_id="", fp_id="", ip=meta.client_ip(self.config.trusted_proxies),
            user_agent=meta.user_agent, consent=consent_columns(consent), received_ms=int(time.time() * 1000),
            max_age_ms=self.config.max_event_age_ms, source=source,
        )
        if consent.can_store:  # without Purpose 1 no cookie is read or set: the event has no IDs
            ctx.cookie_id, ctx.fp_id = self._identify(cookies, payload.get("fp_id"), outcome.set_cookies)
        if events is None:
            hits = [pixel_hit(payload, ctx)]
        else:
            hits = [_hit_at(i, event, ctx) for i, event in enumerate(events)]
        for hit in hits:
            self._add_hit(hit)
        outcome.accepted = len(hits)
        return outcome

    # -- identity ---------------------------------------------------------------------------

    def _identify(self, cookies: dict[str, str], fp_field: object, set_cookies: list[str]) -> tuple[str, str]:
        signed = cookies.get(THIRD_PARTY_COOKIE, "")
        cookie_id = self._signer.verify(signed) if signed else None
        if cookie_id is None:
            if signed:  # not ours or malformed: the hit is kept under a fresh ID
                self.stats.cookies_replaced += 1
            cookie_id = new_cookie_id()
            signed = self._signer.sign(cookie_id)
        set_cookies.append(f"{THIRD_PARTY_COOKIE}={signed}{self._id_cookie_attributes}")  # rolling 13 months
        fp_id = check_fp_id(fp_field)
        if self.config.cookie_domain:  # served from the site's own subdomain: we keep _crumb too
            fp_id = fp_id or check_fp_id(cookies.get(FIRST_PARTY_COOKIE)) or new_cookie_id()
            set_cookies.append(self._cookie(FIRST_PARTY_COOKIE, fp_id, same_site="Lax", http_only=False))
        return cookie_id, fp_id

    def _cookie(self, name: str, value: str, same_site: str = "None", http_only: bool = True) -> str:
        return set_cookie(
            name, value, max_age=COOKIE_MAX_AGE_S, domain=self.config.cookie_domain,
            secure=self.config.cookie_secure, same_site=same_site, http_only=http_only,
        )

    # -- opt-out ------------------------------------------------------------------------------

    def opt_out(self, meta: RequestMeta, fp_field: str | None) -> list[str]:
        """Record the browser's IDs as opted out (and queue their erasure); the cookies to set."""
        cookies = parse_cookies(meta.cookie_header) if meta.cookie_header else {}
        signed = cookies.get(THIRD_PARTY_COOKIE, "")
        ids = [self._signer.verify(signed) if signed else None, check_fp_id(fp_field),
               check_fp_id(cookies.get(FIRST_PARTY_COOKIE))]
        self._opt_out_ids([i for i in ids if i])
        return [
            self._cookie(OPTOUT_COOKIE, "1", http_only=False),
            set_cookie(THIRD_PARTY_COOKIE, "", max_age=0, domain=self.config.cookie_domain),
        ]


def _our_cookies(header: str) -> dict[str, str]:
    # Every cookie we read has "crumb" in its name: a header without one (a first visit) is not parsed.
    return parse_cookies(header) if "crumb" in header else {}


def _hit_at(index: int, event: Any, ctx: RequestContext) -> Any:
    if not isinstance(event, dict):
        raise Rejected("bad_field", f"events[{index}] must be an object")
    try:
        return make_hit(event, ctx)
    except Rejected as rejected:
        raise Rejected(rejected.reason, f"events[{index}]: {rejected.message}") from None


def _parse_json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise Rejected("too_large", f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Rejected("bad_json", "body is not valid UTF-8 JSON") from None
    except RecursionError:  # `[[[[...` within the size limit: deeper than the parser goes
        raise Rejected("bad_json", "body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise Rejected("bad_json", "body must be a JSON object")
    return payload


def _events(value: object) -> list[Any]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EVENTS_PER_BATCH:
        raise Rejected("bad_field", f"events must be a list of 1 to {MAX_EVENTS_PER_BATCH} events")
    return value


def parse_query(query: bytes) -> dict[str, str]:
    """A query string → its first value per name. Decodes only what is encoded: most of a pixel's
    parameters are plain, and this runs on every hit."""
    if len(query) > MAX_QUERY_BYTES:
        raise Rejected("too_large", f"query string is longer than {MAX_QUERY_BYTES} bytes")
    try:
        text = query.decode("ascii")
        params: dict[str, str] = {}
        for pair in text.split("&"):
            name, _, value = pair.partition("=")
            if "%" in pair or "+" in pair:  # one test for the plain pairs, most of a pixel's
                if "%" in name or "+" in name:
                    name = _decode_cached(name) if len(name) <= _MAX_CACHED_CHARS else _decode(name)
                if "%" in value or "+" in value:
                    value = _decode_cached(value) if len(value) <= _MAX_CACHED_CHARS else _decode(value)
            if name and name not in params:
                params[name] = value
    except UnicodeDecodeError:
        raise Rejected("bad_encoding", "query string is not valid percent-encoded UTF-8") from None
    if len(params) > 100:
        raise Rejected("too_large", "query string has more than 100 parameters")
    return params


_MAX_CACHED_CHARS = 512  # longer values are decoded uncached, so hostile ones pin no memory


def _decode(text: str) -> str:
    return unquote_plus(text, errors="strict")


@lru_cache(maxsize=32768)
def _decode_cached(text: str) -> str:
    # Pixel values repeat (page URLs, referrers), and decoding each anew cost a fifth of a hit.
    return unquote_plus(text, errors="strict")


_CONSENT_FIELDS = frozenset({"gdpr", "gdpr_consent", "us_privacy", "gpc"})


def _consent(fields: Mapping[str, Any], meta: RequestMeta, vendor_id: int) -> Consent:
    if not meta.gpc and fields.keys().isdisjoint(_CONSENT_FIELDS):
        return NO_GDPR  # most hits carry no consent signal: decode_consent's answer, without the call
    gpc = meta.gpc or str(fields.get("gpc", "")) in ("1", "true", "True")
    tc_string = fields.get("gdpr_consent")
    us_privacy = fields.get("us_privacy")
    return decode_consent(
        fields.get("gdpr"), tc_string if isinstance(tc_string, str) else None, gpc,
        us_privacy if isinstance(us_privacy, str) else None, vendor_id,
    )
