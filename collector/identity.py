"""Cookie identity: 128 random bits as 32 lowercase hex, and the signed third-party cookie.

An ID is never derived from IP, user agent or personal data. The collector's own `crumb_id`
cookie is `<id>.<mac>`: a value we did not issue fails the MAC and is replaced, so a forged ID
never reaches storage. The tag's first-party `_crumb` cannot be signed in the browser; it is
checked for form only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid

THIRD_PARTY_COOKIE = "crumb_id"
FIRST_PARTY_COOKIE = "_crumb"
OPTOUT_COOKIE = "crumb_optout"
COOKIE_MAX_AGE_S = 396 * 24 * 3600  # 13 months

_ID_FORM = re.compile(r"[0-9a-f]{32}")
_MAC_HEX_CHARS = 16


def new_cookie_id() -> str:
    return secrets.token_hex(16)


def is_cookie_id(value: str) -> bool:
    return len(value) == 32 and _ID_FORM.fullmatch(value) is not None


def is_event_id(value: str) -> bool:
    if len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class CookieSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, cookie_id: str) -> str:
        return hmac.new(self._secret, cookie_id.encode(), hashlib.sha256).hexdigest()[:_MAC_HEX_CHARS]

    def sign(self, cookie_id: str) -> str:
        return f"{cookie_id}.{self._mac(cookie_id)}"

    def verify(self, value: str) -> str | None:
        """The cookie ID in a signed value, or None when it is malformed or not ours."""
        cookie_id, _, mac = value.partition(".")
        if not is_cookie_id(cookie_id) or len(mac) != _MAC_HEX_CHARS:
            return None
        return cookie_id if hmac.compare_digest(mac, self._mac(cookie_id)) else None
