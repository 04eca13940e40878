"""Per-hit enrichment: IP truncation, user agents, URL scrubbing and splitting. Pure and cached.

These run for every event, so each function either has a cheap fast path or an LRU cache keyed
on the (bounded) input: user agents, URLs and parameter names repeat far more than they vary.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote, unquote_plus

import user_agents

REDACTED = "[redacted]"
MAX_URL_CHARS = 2048
MAX_UA_CHARS = 512
MAX_UTM_CHARS = 256

# ---------------------------------------------------------------------------------------- IPs

_IPV4_OCTETS = frozenset(str(n) for n in range(256))  # "01" is not in it: ipaddress rejects it too
_IPV6_48_MASK = ((1 << 48) - 1) << 80


def truncate_ip(ip: str) -> str:
    """IPv4 → /24, IPv6 → /48 (IPv4-mapped IPv6 as IPv4), anything else → ""."""
    parts = ip.split(".")
    if len(parts) == 4:
        a, b, c, d = parts
        if a in _IPV4_OCTETS and b in _IPV4_OCTETS and c in _IPV4_OCTETS and d in _IPV4_OCTETS:
            return f"{a}.{b}.{c}.0"
    return _truncate_ip_slow(ip.strip())


@lru_cache(maxsize=8192)
def _truncate_ip_slow(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return truncate_ip(str(address.ipv4_mapped))
        return str(ipaddress.IPv6Address(int(address) & _IPV6_48_MASK))
    return truncate_ip(str(address))


# --------------------------------------------------------------------------------- user agents


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    device_type: str  # desktop, mobile, tablet, bot or other
    os: str
    browser: str
    is_bot: bool


# Tools and crawlers that ua-parser files under an ordinary browser family (or under "Other").
_BOT_WORDS = re.compile(
    r"bot|crawl|spider|slurp|headlesschrome|python-requests|curl|wget|httpx|go-http-client|java/"
    r"|scrapy|phantomjs|lighthouse|pingdom|uptime",
    re.IGNORECASE,
)


def parse_user_agent(ua: str) -> UserAgentInfo:
    # Truncated before it becomes a cache key, so a hostile header can't pin megabytes in the cache.
    return _parse_user_agent(ua[:MAX_UA_CHARS])


@lru_cache(maxsize=20_000)
def _parse_user_agent(ua: str) -> UserAgentInfo:
    parsed = user_agents.parse(ua)
    is_bot = not ua.strip() or parsed.is_bot or _BOT_WORDS.search(ua) is not None
    return UserAgentInfo(
        device_type=_device_type(parsed, is_bot),
        os=parsed.os.family or "Other",
        browser=parsed.browser.family or "Other",
        is_bot=is_bot,
    )


def _device_type(parsed: user_agents.parsers.UserAgent, is_bot: bool) -> str:
    if is_bot:
        return "bot"
    if parsed.is_tablet:
        return "tablet"
    if parsed.is_mobile:
        return "mobile"
    if parsed.is_pc:
        return "desktop"
    return "other"


# -------------------------------------------------------------------------------- URL scrubbing

# Whole words of a parameter name (split on punctuation and camelCase) that mark it as personal.
_SENSITIVE_WORDS = frozenset({
    "email", "mail", "phone", "tel", "telephone", "mobile", "token", "accesstoken", "auth", "password",
    "passwd", "pwd", "secret", "session", "sessionid", "ssn", "name", "firstname", "lastname", "surname",
    "fname", "lname", "address", "zip", "zipcode", "postcode", "dob", "birthdate", "birthday", "card",
    "cc", "cvv", "iban", "apikey", "key",
})
# Substrings that mark a name even when glued to another word ("useremail", "xsessiontoken").
# Short words (tel, cc, key, name...) are absent: as substrings they would hit "hotel", "success".
_SENSITIVE_PARTS = (
    "email", "phone", "password", "passwd", "token", "secret", "session", "firstname", "lastname",
    "birthdate", "apikey", "postcode", "zipcode",
)
_NAME_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")

# The local part is anchored by a look-behind so a long run of word characters is scanned once,
# not once per start position (keeps the scan linear on hostile input).
_LOCAL_CHARS = r"\w.+!#$%'*^`{|}~\-"
_EMAIL = re.compile(rf"(?<![{_LOCAL_CHARS}])[{_LOCAL_CHARS}]+@(?:[\w\-]+\.)+[\w\-]{{2,}}")
# 7+ digits, optionally with a leading + and separators; not part of a longer alphanumeric token
# (hex IDs, SKUs), and not an ISO date (2024-01-15), which travel and event sites carry everywhere.
_PHONE = re.compile(
    r"(?<!\w)(?!\d{4}-\d\d-\d\d(?![\s.()+\-]{0,3}\d))\+?\(?\d(?:[\s.()+\-]{0,3}\d){6,}(?!\w)"
)
_UUID = re.compile(
    r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9A-Za-z])"
)
_URL_HEAD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*:)?//([^/?#]*)")
_PATH_SAFE = "/:@!$&'()*+,;=[]~"
_QUERY_SAFE = "[]+/:@!$'()*,;~"  # what may stay as it is in a query value ("+" keeps meaning a space)
_MAX_DECODE_PASSES = 8


def scrub_url(url: str) -> str:
    """The URL without personal data, at most 2048 characters.

    Sensitive query parameters (email, token, name, ...) are dropped; e-mail addresses and
    phone-like digit runs left in the path, query values or fragment become "[redacted]";
    user:password@ is removed.
    """
    if len(url) <= MAX_URL_CHARS:
        return _scrub_url_cached(url)
    # Longer input is scrubbed whole (cutting first could split an e-mail past recognition) and
    # is not cached: a few huge keys would pin a lot of memory.
    return _scrub_url(url)[:MAX_URL_CHARS]


@lru_cache(maxsize=8192)
def _scrub_url_cached(url: str) -> str:
    return _scrub_url(url)[:MAX_URL_CHARS]


def _scrub_url(url: str) -> str:
    rest, hash_mark, fragment = url.partition("#")
    rest, question_mark, query = rest.partition("?")
    scheme, authority, path = _split_head(rest)
    scrubbed = scheme + _redact_host(_without_userinfo(authority)) + _redact(path, _PATH_SAFE)
    if question_mark and (query := _scrub_query(query)):
        scrubbed += "?" + query
    if hash_mark and (fragment := _scrub_fragment(fragment)):
        scrubbed += "#" + fragment
    return scrubbed


def _split_head(url: str) -> tuple[str, str, str]:
    """("https://", "host:port", "/path"); no "//" means no authority: all of it is path."""
    head = _URL_HEAD.match(url)
    if head is None:
        return "", "", url
    return f"{head.group(1) or ''}//", head.group(2), url[head.end():]


def _without_userinfo(authority: str) -> str:
    return authority.rpartition("@")[2]


def _scrub_query(query: str) -> str:
    return "&".join(kept for piece in query.split("&") if (kept := _scrub_param(piece)))


def _scrub_param(piece: str) -> str:
    name, equals, value = piece.partition("=")
    if not name.startswith("utm_") and is_sensitive_param(name):
        return ""
    return _redact(name, _QUERY_SAFE) + equals + _redact(value, _QUERY_SAFE)


def _scrub_fragment(fragment: str) -> str:
    # Single-page apps put routes and queries in the fragment; OAuth puts access tokens there.
    route, question_mark, query = fragment.partition("?")
    if question_mark:
        query = _scrub_query(query)
        return _redact(route, _PATH_SAFE) + ("?" + query if query else "")
    if "=" in fragment:
        return _scrub_query(fragment)
    return _redact(fragment, _PATH_SAFE)


@lru_cache(maxsize=4096)
def is_sensitive_param(name: str) -> bool:
    """Whether a query parameter (or property) name says its value is personal data."""
    words = [word.lower() for word in _NAME_WORDS.findall(unquote_plus(name))]
    joined = "".join(words)
    return (
        joined in _SENSITIVE_WORDS
        or any(word in _SENSITIVE_WORDS for word in words)
        or any(part in joined for part in _SENSITIVE_PARTS)
    )


def _redact(raw: str, safe: str) -> str:
    """`raw` (percent-encoded) with e-mails and phone numbers replaced, re-encoded only if changed.

    A "+" is kept as it is, not read as a space: "jo+news@x.com" is an address, and for the
    patterns a "+" standing for a space only widens what gets redacted.
    """
    if not raw:
        return raw
    text = _unquote_all(raw) if "%" in raw else raw
    redacted = _redact_text(text)
    if redacted is text:
        return raw
    return quote(redacted, safe=safe, errors="replace")


def _unquote_all(text: str) -> str:
    # Double-encoded input (%2540) is common when URLs are nested in URLs: decode to a fixed point
    # (bounded: each pass costs a copy, and a hostile "%252525..." could ask for thousands).
    for _ in range(_MAX_DECODE_PASSES):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def _redact_text(text: str) -> str:
    """Plain text with e-mails and phone numbers replaced; the same object when there are none.

    UUIDs are left whole: their all-digit groups ("1621-4415") look like phone numbers, and the
    tag's own IDs (a page view's `event_id` in an engagement's props) must survive.
    """
    if "-" in text and _UUID.search(text):
        pieces = _UUID.split(text)
        uuids = _UUID.findall(text)
        uuids.append("")
        redacted = "".join(_redact_plain(piece) + uuid for piece, uuid in zip(pieces, uuids))
    else:
        redacted = _redact_plain(text)
    return text if redacted == text else redacted


def _redact_plain(text: str) -> str:
    redacted = _EMAIL.sub(REDACTED, text) if "@" in text else text
    return _PHONE.sub(REDACTED, redacted)


def _redact_host(authority: str) -> str:
    # Hosts are checked for e-mails only: an IPv4 host would look like a phone number.
    text = unquote(authority) if "%" in authority else authority
    if "@" not in text:
        return authority
    return quote(_EMAIL.sub(REDACTED, text), safe=":[]", errors="replace")


def scrub_props(props: Mapping[str, str]) -> dict[str, str]:
    """Event properties with sensitive keys dropped and personal data in values redacted."""
    return {key: _scrub_prop_value(value) for key, value in props.items() if not is_sensitive_param(key)}


def _scrub_prop_value(value: str) -> str:
    if value.startswith(("http://", "https://")):
        return scrub_url(value)
    redacted = _redact_text(value)
    if "%" in redacted and _redact_text(decoded := _unquote_all(redacted)) != decoded:
        return REDACTED  # personal data hidden by percent-encoding in what is not a URL
    return redacted


# -------------------------------------------------------------------------------- URL splitting


@dataclass(frozen=True, slots=True)
class UrlParts:
    host: str
    path: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_term: str
    utm_content: str


_UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def split_url(url: str) -> UrlParts:
    """Host, path and UTM tags of a URL, taken from its scrubbed form (so no field holds PII)."""
    return _split_url_cached(url) if len(url) <= MAX_URL_CHARS else _split_url(url)


@lru_cache(maxsize=8192)
def _split_url_cached(url: str) -> UrlParts:
    return _split_url(url)


def scrubbed_url_parts(url: str) -> tuple[str, UrlParts]:
    """`scrub_url` and `split_url` of one URL at the price of one cache lookup (the writer's case)."""
    if len(url) > MAX_URL_CHARS:
        scrubbed = scrub_url(url)
        return scrubbed, _split_scrubbed(scrubbed)
    return _scrubbed_url_parts(url)


@lru_cache(maxsize=16384)
def _scrubbed_url_parts(url: str) -> tuple[str, UrlParts]:
    scrubbed = _scrub_url(url)[:MAX_URL_CHARS]
    return scrubbed, _split_scrubbed(scrubbed)


def _split_url(url: str) -> UrlParts:
    return _split_scrubbed(scrub_url(url))


def _split_scrubbed(scrubbed: str) -> UrlParts:
    rest, _, _ = scrubbed.partition("#")
    rest, _, query = rest.partition("?")
    _, authority, path = _split_head(rest)
    host = _host(authority)
    path = path or ("/" if host else "")
    if "utm_" not in query.lower():
        return UrlParts(host, path, "", "", "", "", "")
    utm = _utm_values(query)
    return UrlParts(host, path, utm.get("utm_source", ""), utm.get("utm_medium", ""), utm.get("utm_campaign", ""),
                    utm.get("utm_term", ""), utm.get("utm_content", ""))


def _utm_values(query: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for piece in query.split("&"):
        name, _, value = piece.partition("=")
        name = name.lower()
        if name in _UTM_FIELDS and name not in values:
            values[name] = unquote_plus(value)[:MAX_UTM_CHARS]
    return values


def _host(authority: str) -> str:
    host = _without_userinfo(authority)
    if host.startswith("[") and ":" in host:  # IPv6 literal: the port follows the bracket
        host = host[1:].partition("]")[0]
    else:
        host = host.partition(":")[0]
    return host.rstrip(".").lower()


def referrer_host(url: str) -> str:
    """The referrer's lowercased host, or "" (no referrer, or not an absolute URL)."""
    return _referrer_host(url[:MAX_URL_CHARS])  # the host is at the start: cutting the rest is safe


@lru_cache(maxsize=8192)
def _referrer_host(url: str) -> str:
    return _host(_split_head(url.partition("#")[0].partition("?")[0])[1])
