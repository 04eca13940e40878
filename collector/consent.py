"""Consent signals of a hit: TCF v2 (GDPR), Global Privacy Control and US Privacy. Pure and cached.

What each permission needs is in ARCHITECTURE.md (Privacy rules) and PROTOCOLS.md (Consent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from iab_tcf import ConsentV2, base64_decode

MIN_TCF_POLICY_VERSION = 4  # TCF 2.2; older strings were collected under rules that no longer hold
MAX_TC_STRING_CHARS = 4096  # real strings, disclosed-vendors segment included, stay under 1,500
STORE = 1  # Purpose 1: store and/or access information on a device
PROFILE_PURPOSES = frozenset({1, 3, 4})  # store, build a personalised-ads profile, use it

# Publisher restriction types that take a purpose from us: 0 "not allowed", and 2 "require
# legitimate interest", because consent is our only basis for every purpose we use.
_BLOCKING_RESTRICTIONS = frozenset({0, 2})
_TC_STRING = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_US_PRIVACY = re.compile(r"1[YN-][YN-][YN-]")
_TOO_LONG = "!"  # stands for an over-long string: not of the TC string form, so undecodable
_VENDOR_SECTIONS_AT = 213  # bit offset of MaxVendorId in the core segment (fixed-size fields before)


@dataclass(frozen=True, slots=True)
class Consent:
    gdpr_applies: bool
    purposes: frozenset[int]  # purposes consented to, less those the publisher restricts for us
    vendor_consent: bool
    gpc: bool
    us_privacy: str  # "" unless a valid US Privacy string
    valid_tc_string: bool

    @property
    def can_store(self) -> bool:
        """May we set or read a cookie (Purpose 1 and vendor consent where GDPR applies)."""
        return not self.gdpr_applies or (STORE in self.purposes and self.vendor_consent)

    @property
    def can_profile(self) -> bool:
        """May the cookie join segments (Purposes 1, 3, 4 on consent; legitimate interest won't do)."""
        return not self.gdpr_applies or (PROFILE_PURPOSES <= self.purposes and self.vendor_consent)

    @property
    def can_share(self) -> bool:
        """No GPC and no US Privacy opt-out of sale. Says nothing of GDPR: check can_profile too."""
        return not self.gpc and self.us_privacy[2:3] != "Y"


NO_GDPR = Consent(
    gdpr_applies=False, purposes=frozenset(), vendor_consent=False, gpc=False, us_privacy="",
    valid_tc_string=False,
)


class _TcDecision(NamedTuple):
    valid: bool
    purposes: frozenset[int]
    vendor_consent: bool


_UNDECODABLE = _TcDecision(False, frozenset(), False)
_OUTDATED = _TcDecision(True, frozenset(), False)


def decode_consent(
    gdpr: str | int | None, gdpr_consent: str | None, gpc: bool, us_privacy: str | None, vendor_id: int,
) -> Consent:
    tc_string = gdpr_consent or ""
    us_privacy = us_privacy if us_privacy and _US_PRIVACY.fullmatch(us_privacy) else ""
    applies = _gdpr_applies(gdpr, has_tc_string=bool(tc_string))
    if not (applies or tc_string or gpc or us_privacy):
        return NO_GDPR  # the common case, without an allocation
    if len(tc_string) > MAX_TC_STRING_CHARS:
        tc_string = _TOO_LONG  # kept out of the cache keys: junk can't pin big strings in memory
    return _consent(applies, tc_string, bool(gpc), us_privacy, vendor_id)


@lru_cache(maxsize=10_000)
def _consent(applies: bool, tc_string: str, gpc: bool, us_privacy: str, vendor_id: int) -> Consent:
    decision = _decode_tc_string(tc_string, vendor_id)
    return Consent(applies, decision.purposes, decision.vendor_consent, gpc, us_privacy, decision.valid)


def _gdpr_applies(gdpr: str | int | None, has_tc_string: bool) -> bool:
    if gdpr in ("1", 1):
        return True
    if gdpr in ("0", 0):
        return False
    return has_tc_string  # unknown: a CMP that wrote a TC string thought GDPR applies


def _decode_tc_string(tc_string: str, vendor_id: int) -> _TcDecision:
    if not _TC_STRING.fullmatch(tc_string):
        return _UNDECODABLE
    # Only the core segment: it holds every signal we use, and the library's reader of the
    # optional segments is quadratic in the ranges a string claims.
    try:
        core = base64_decode(tc_string.partition(".")[0])
        if not _core_is_complete(core):
            return _UNDECODABLE
        tc = ConsentV2(core)
    except Exception:  # the library raises whatever its parsing trips on (binascii, ValueError, ...)
        return _UNDECODABLE
    if tc.version != 2:
        return _UNDECODABLE
    if tc.tcf_policy_version < MIN_TCF_POLICY_VERSION:
        return _OUTDATED
    vendor_consent = vendor_id > 0 and tc.is_vendor_allowed(vendor_id)
    return _TcDecision(True, _allowed_purposes(tc, vendor_id), vendor_consent)


def _allowed_purposes(tc: ConsentV2, vendor_id: int) -> frozenset[int]:
    restricted = {
        entry.purpose_id for entry in tc.pub_restriction_entries
        if entry.restriction_type in _BLOCKING_RESTRICTIONS and entry.is_in_range(vendor_id)
    }
    return frozenset(
        purpose for purpose, given in tc.purposes_consent.items() if given and purpose not in restricted
    )


# The library reads past the end of a short string as 1-bits (every purpose and vendor consented)
# and loops over whatever vendor count a string claims; so the core's sections are walked first
# to check that the string really holds every bit it announces.


def _core_is_complete(core: bytes) -> bool:
    bits = "".join(f"{byte:08b}" for byte in core)
    position = _after_vendor_section(bits, _VENDOR_SECTIONS_AT)  # vendor consents
    position = _after_vendor_section(bits, position)  # vendor legitimate interests
    return _after_restrictions(bits, position) <= len(bits)


def _after_vendor_section(bits: str, at: int) -> int:
    max_vendor_id = _read_int(bits, at, 16)
    if bits[at + 16:at + 17] != "1":  # a bitfield of max_vendor_id bits
        return at + 17 + max_vendor_id
    return _after_ranges(bits, at + 29, _read_int(bits, at + 17, 12))


def _after_ranges(bits: str, at: int, count: int) -> int:
    for _ in range(count):
        if at >= len(bits):
            return len(bits) + 1
        at += 33 if bits[at] == "1" else 17  # IsARange, start (and end) vendor IDs of 16 bits
    return at


def _after_restrictions(bits: str, at: int) -> int:
    count = _read_int(bits, at, 12)
    at += 12
    for _ in range(count):
        if at + 20 > len(bits):
            return len(bits) + 1
        at = _after_ranges(bits, at + 20, _read_int(bits, at + 8, 12))  # purpose 6, type 2, entries 12
    return at


def _read_int(bits: str, at: int, length: int) -> int:
    field = bits[at:at + length]
    return int(field, 2) if field else 0
