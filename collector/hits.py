"""Wire input → validated hits. Pure functions: no I/O, no clock reads of their own.

A `Hit` is what the request path hands the writer: validated and privacy-safe (the IP is
already truncated), but not yet enriched — enrichment is batched off the request path.
See docs/collector-wire.md for the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from collector.consent import NO_GDPR, Consent
from collector.identity import is_cookie_id, is_event_id

MAX_EVENTS_PER_BATCH = 100
MAX_URL_CHARS = 2048
MAX_CATEGORIES = 20
MAX_PROPS = 50
MAX_PROP_KEY_CHARS = 64
MAX_PROP_VALUE_CHARS = 512
MAX_ENGAGED_MS = 86_400_000
FUTURE_SKEW_MS = 5 * 60 * 1000

RESERVED_TYPES = frozenset({"pageview", "engagement"})
_SITE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TYPE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_CATEGORY = re.compile(r"[A-Za-z0-9]{1,16}")


class Rejected(Exception):
    """Input that is not stored. `reason` is a stable code, counted in /metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# The stored consent columns: gdpr_applies, purposes, vendor_consent, can_profile, can_share, gpc, us_privacy.
ConsentColumns = tuple[int, tuple[int, ...], int, int, int, int, str]


class Hit(NamedTuple):
    """Every field is a str, an int or a tuple of those: the writer buffers hits as plain tuples,
    which the garbage collector stops tracking, so a second of buffered traffic costs no GC scans."""

    event_id: str
    ts_ms: int
    received_ms: int
    site: str
    type: str
    cookie_id: str
    fp_id: str
    url: str
    referrer: str
    categories: tuple[str, ...]
    engaged_ms: int
    props: tuple[tuple[str, str], ...]
    ip: str
    user_agent: str
    consent: ConsentColumns
    source: str


def consent_columns(consent: Consent) -> ConsentColumns:
    if consent is NO_GDPR:  # most hits: spares hashing the dataclass for the cache
        return _NO_GDPR_COLUMNS
    return _consent_columns(consent)


@lru_cache(maxsize=1024)
def _consent_columns(consent: Consent) -> ConsentColumns:
    return (int(consent.gdpr_applies), tuple(sorted(consent.purposes)), int(consent.vendor_consent),
            int(consent.can_profile), int(consent.can_share), int(consent.gpc), consent.us_privacy)


_NO_GDPR_COLUMNS = _consent_columns(NO_GDPR)


@dataclass(slots=True)
class RequestContext:
    """What every event of one request shares: who sent it and under which consent."""

    site: str
    cookie_id: str
    fp_id: str
    ip: str
    user_agent: str
    consent: ConsentColumns
    received_ms: int
    max_age_ms: int
    source: str


def check_site(site: object) -> str:
    if not isinstance(site, str) or not _SITE.fullmatch(site):
        raise Rejected("bad_site", "site must be 1-64 characters of [A-Za-z0-9_.-]")
    return site


def check_fp_id(value: object) -> str:
    """A first-party ID of the wrong form is dropped, not the event: the ID was the page's doing."""
    if isinstance(value, str) and is_cookie_id(value):
        return value
    return ""


def make_hit(event: Mapping[str, Any], ctx: RequestContext) -> Hit:
    return Hit(
        event_id=_event_id(event.get("event_id")),
        ts_ms=_timestamp(event.get("ts"), ctx),
        received_ms=ctx.received_ms,
        site=ctx.site,
        type=_event_type(event.get("type")),
        cookie_id=ctx.cookie_id,
        fp_id=ctx.fp_id,
        url=_text(event.get("url"), "url", MAX_URL_CHARS),
        referrer=_text(event.get("referrer"), "referrer", MAX_URL_CHARS),
        categories=_categories(event.get("categories")),
        engaged_ms=_engaged_ms(event.get("engaged_ms")),
        props=_props(event.get("props")),
        ip=ctx.ip,
        user_agent=ctx.user_agent,
        consent=ctx.consent,
        source=ctx.source,
    )


def _event_id(value: object) -> str:
    if not isinstance(value, str) or not is_event_id(value):
        raise Rejected("bad_event_id", "event_id must be a UUID")
    return value.lower()


def _event_type(value: object) -> str:
    # Nearly every hit is a page view: a known-good name needs no pattern match.
    if isinstance(value, str) and (value in RESERVED_TYPES or _TYPE.fullmatch(value)):
        return value
    raise Rejected("bad_type", "type must be 1-64 characters of [A-Za-z0-9_.:-]")


def _timestamp(value: object, ctx: RequestContext) -> int:
    """The tag's clock when plausible (queued events arrive late), else the server's."""
    if value is None or value == "":
        return ctx.received_ms
    ts = _integer(value, "ts")
    if ctx.received_ms - ctx.max_age_ms <= ts <= ctx.received_ms + FUTURE_SKEW_MS:
        return ts
    return ctx.received_ms


def _text(value: object, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejected("bad_field", f"{name} must be a string")
    if len(value) > limit:
        raise Rejected("too_long", f"{name} is longer than {limit} characters")
    return value


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise Rejected("bad_field", f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit() and len(value) <= 16:
        return int(value)
    raise Rejected("bad_field", f"{name} must be an integer")


def _engaged_ms(value: object) -> int:
    if value is None or value == "":
        return 0
    engaged = _integer(value, "engaged_ms")
    if not 0 <= engaged <= MAX_ENGAGED_MS:
        raise Rejected("bad_field", f"engaged_ms must be between 0 and {MAX_ENGAGED_MS}")
    return engaged


def _categories(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return _categories_text(value) if len(value) <= _MAX_CATEGORIES_TEXT else _category_list(value.split(","))
    return _category_list(value)


_MAX_CATEGORIES_TEXT = MAX_CATEGORIES * 17  # the longest valid `cat` a pixel sends: cached below


@lru_cache(maxsize=4096)
def _categories_text(value: str) -> tuple[str, ...]:
    # A pixel's `cat` is one of a site's few category lists: checked once each.
    return _category_list(value.split(","))


def _category_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_CATEGORIES:
        raise Rejected("bad_field", f"categories must be a list of at most {MAX_CATEGORIES} IDs")
    if not all(isinstance(c, str) and _CATEGORY.fullmatch(c) for c in value):
        raise Rejected("bad_field", "each category must be 1-16 characters of [A-Za-z0-9]")
    return tuple(dict.fromkeys(value))


def _props(value: object) -> tuple[tuple[str, str], ...]:
    if not value:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_PROPS:
        raise Rejected("bad_field", f"props must be an object with at most {MAX_PROPS} keys")
    props = []
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_PROP_KEY_CHARS:
            raise Rejected("bad_field", f"prop names must be 1-{MAX_PROP_KEY_CHARS} characters")
        props.append((key, _prop_value(key, item)))
    return tuple(props)


def _prop_value(key: str, item: object) -> str:
    if isinstance(item, bool):
        text = "true" if item else "false"
    elif isinstance(item, str | int | float):
        text = str(item)
    else:
        raise Rejected("bad_field", f"prop {key!r} must be a string, number or boolean")
    if len(text) > MAX_PROP_VALUE_CHARS:
        raise Rejected("too_long", f"prop {key!r} is longer than {MAX_PROP_VALUE_CHARS} characters")
    return text


def pixel_hit(params: Mapping[str, str], ctx: RequestContext) -> Hit:
    """The one event of a pixel hit: the beacon's checks, on the query string's names."""
    get = params.get
    # tuple.__new__ skips the NamedTuple constructor's Python frame: a third of this function's time.
    return tuple.__new__(Hit, (
        _event_id(get("event_id")), _timestamp(get("ts"), ctx), ctx.received_ms, ctx.site,
        _event_type(get("type", "pageview")), ctx.cookie_id, ctx.fp_id,
        _text(get("url"), "url", MAX_URL_CHARS), _text(get("ref"), "referrer", MAX_URL_CHARS),
        _categories(get("cat")), _engaged_ms(get("engaged_ms")), _pixel_props(params), ctx.ip,
        ctx.user_agent, ctx.consent, ctx.source,
    ))


def _pixel_props(params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Few pixels carry `pr.` names: one search of the joined names (in C) spares most hits a loop
    # over them. A NUL inside a name can only cause a needless loop, never a missed prop.
    if "\0pr." not in "\0" + "\0".join(params):
        return ()
    return _props({key[3:]: value for key, value in params.items() if key[:3] == "pr."})
