"""A minimal IAB TCF v2 TC string encoder (core segment only), for browsers that send GDPR consent.

Field order and widths are those of the TCF v2 "Consent string and vendor list formats" spec;
the collector decodes what this writes with the iab-tcf library.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

_CMP_ID = 300  # any registered-looking CMP; the collector does not check it
_POLICY_VERSION = 4  # TCF 2.2, the oldest the collector accepts
_VENDOR_LIST_VERSION = 100


def tc_string(purposes: Iterable[int], vendor_id: int, created_ms: int) -> str:
    """A TC string consenting to `purposes` and (when vendor_id > 0) to that vendor."""
    consented = set(purposes)
    deciseconds = created_ms // 100
    bits = "".join([
        _int(2, 6), _int(deciseconds, 36), _int(deciseconds, 36), _int(_CMP_ID, 12), _int(1, 12),
        _int(1, 6), _letters("EN"), _int(_VENDOR_LIST_VERSION, 12), _int(_POLICY_VERSION, 6),
        "1", "0",  # service specific; standard texts
        _int(0, 12),  # special feature opt-ins
        "".join("1" if p in consented else "0" for p in range(1, 25)),  # purpose consents
        _int(0, 24), "0", _letters("AA"),  # legitimate interests; purpose one treatment; publisher CC
        _vendor_bitfield(vendor_id), _vendor_bitfield(0),  # vendor consents; vendor legitimate interests
        _int(0, 12),  # publisher restrictions
    ])
    bits += "0" * (-len(bits) % 8)
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _vendor_bitfield(vendor_id: int) -> str:
    """MaxVendorId, IsRangeEncoding=0, then one bit per vendor up to it (only ours set)."""
    return _int(vendor_id, 16) + "0" + ("0" * (vendor_id - 1) + "1" if vendor_id > 0 else "")


def _int(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def _letters(code: str) -> str:
    return "".join(_int(ord(letter) - ord("A"), 6) for letter in code)
