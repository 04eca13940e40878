"""What GET /v1/segments answers, as pure functions: who may be answered, and the three forms.

    json     {"id": ..., "segments": [{"id": 101, "name": ...}], "build_id": ...}
    openrtb  {"user": {"data": [{"name": "crumb", "ext": {"segtax": 4}, "segment": [{"id": "663"}]},
                                {"name": "crumb", "segment": [{"id": "101"}]}]}}
    gam      {"crumb_seg": ["101", "102"]}   Google Ad Manager key-values

OpenRTB 2.6 `user.data`: segtax 4 is the IAB Audience Taxonomy 1.1, so that object carries the
IAB IDs of segments mapped to one; the object without segtax carries our own segment IDs.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.consent import decode_consent
from collector.identity import is_cookie_id

PROVIDER = "crumb"
SEGTAX_IAB_AUDIENCE_1_1 = 4
GAM_KEY = "crumb_seg"
GAM_KEY_FORM = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,19}")  # GAM: ≤ 20 chars, not starting with a digit
GAM_MAX_VALUE_CHARS = 40


class Format(enum.StrEnum):
    JSON = "json"
    OPENRTB = "openrtb"
    GAM = "gam"


class BadRequest(ValueError):
    """A lookup the API refuses with 400; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    id: int
    name: str
    iab_audience_id: str | None = None


def parse_format(value: str | None) -> Format:
    try:
        return Format(value or "json")
    except ValueError:
        raise BadRequest("bad_format", "format must be one of json, openrtb, gam") from None


def parse_id(value: str, id_type: str | None) -> tuple[str, str]:
    """`?id=` (and optional `?id_type=cookie|fp`) of a server caller."""
    kind = id_type or "cookie"
    if kind not in ("cookie", "fp"):
        raise BadRequest("bad_id_type", "id_type must be cookie or fp")
    if not is_cookie_id(value):
        raise BadRequest("bad_id", "id must be 32 lowercase hex characters")
    return value, kind


def may_activate(
    *, opted_out: bool, gpc: bool, gdpr: str | None, gdpr_consent: str | None, us_privacy: str | None,
    vendor_id: int,
) -> bool:
    """A browser's segments are answered only with no opt-out, no GPC, and (where GDPR applies)
    consent to Purposes 1, 3 and 4 and to our vendor ID."""
    if opted_out or gpc:
        return False
    consent = decode_consent(gdpr, gdpr_consent, gpc, us_privacy, vendor_id)
    return consent.can_profile and consent.can_share


def render(fmt: Format, member_id: str | None, segments: Sequence[SegmentInfo], build_id: int | None) -> Any:
    if fmt is Format.OPENRTB:
        return openrtb_user(segments)
    if fmt is Format.GAM:
        return gam_key_values(segments)
    return {"id": member_id, "segments": [{"id": s.id, "name": s.name} for s in segments], "build_id": build_id}


def openrtb_user(segments: Iterable[SegmentInfo]) -> dict[str, Any]:
    segments = list(segments)
    data: list[dict[str, Any]] = []
    iab = sorted({s.iab_audience_id for s in segments if s.iab_audience_id}, key=_numeric)
    if iab:
        data.append({"name": PROVIDER, "ext": {"segtax": SEGTAX_IAB_AUDIENCE_1_1},
                     "segment": [{"id": i} for i in iab]})
    own = [s for s in segments if not s.iab_audience_id]
    if own:
        data.append({"name": PROVIDER, "segment": [{"id": str(s.id)} for s in own]})
    return {"user": {"data": data}}


def gam_key_values(segments: Iterable[SegmentInfo], key: str = GAM_KEY) -> dict[str, list[str]]:
    if not GAM_KEY_FORM.fullmatch(key):
        raise ValueError(f"{key!r} is not a Google Ad Manager key")
    values = [str(s.id) for s in segments if len(str(s.id)) <= GAM_MAX_VALUE_CHARS]
    return {key: values} if values else {}


def _numeric(value: str) -> tuple[int, str]:
    return (int(value), value) if value.isdigit() else (0, value)
