"""Small request pieces the handlers compose: headers, cookies, client IP, CORS, Set-Cookie."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from collector.enrich import truncate_ip


@dataclass(slots=True)
class RequestMeta:
    """What the collector reads from a request besides its body. Built by one header scan."""

    cookie_header: str = ""
    user_agent: str = ""
    origin: str = ""
    gpc: bool = False
    forwarded_for: str = ""
    peer_ip: str = ""

    def client_ip(self, trusted_proxies: frozenset[str]) -> str:
        """The truncated client address: the right-most untrusted hop of X-Forwarded-For."""
        address = self.peer_ip
        if self.forwarded_for and address in trusted_proxies:
            for hop in reversed(self.forwarded_for.split(",")):
                address = hop.strip()
                if address not in trusted_proxies:
                    break
        return truncate_ip(address)


def read_meta(headers: Iterable[tuple[bytes, bytes]], client: tuple[str, int] | None) -> RequestMeta:
    meta = RequestMeta(peer_ip=client[0] if client else "")
    for name, value in headers:
        if name == b"cookie":
            meta.cookie_header = value.decode("latin-1")
        elif name == b"user-agent":
            meta.user_agent = value.decode("latin-1")[:512]
        elif name == b"origin":
            meta.origin = value.decode("latin-1")
        elif name == b"sec-gpc":
            meta.gpc = value.strip() == b"1"
        elif name == b"x-forwarded-for":
            meta.forwarded_for = value.decode("latin-1")
    return meta


def parse_cookies(header: str) -> dict[str, str]:
    cookies = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def set_cookie(
    name: str, value: str, *, max_age: int, domain: str = "", secure: bool = True,
    same_site: str = "None", http_only: bool = True,
) -> str:
    return f"{name}={value}" + cookie_attributes(
        max_age=max_age, domain=domain, secure=secure, same_site=same_site, http_only=http_only)


def cookie_attributes(
    *, max_age: int, domain: str = "", secure: bool = True, same_site: str = "None", http_only: bool = True,
) -> str:
    """What follows `name=value` in a Set-Cookie header; callers that set one cookie often keep it."""
    parts = ["", f"Max-Age={max_age}", "Path=/", f"SameSite={same_site}"]
    if domain:
        parts.append(f"Domain={domain}")
    if secure or same_site == "None":  # browsers drop SameSite=None cookies that are not Secure
        parts.append("Secure")
    if http_only:
        parts.append("HttpOnly")
    return "; ".join(parts)


def cors_headers(origin: str, allowed: bool) -> list[tuple[bytes, bytes]]:
    """Credentialed CORS: the tag's beacons carry cookies, so the origin is echoed, never `*`."""
    if not origin or not allowed:
        return []
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"Origin"),
    ]
