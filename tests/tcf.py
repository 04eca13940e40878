"""Test helper: encode TCF v2 core strings with chosen purposes, vendors and publisher restrictions.

Follows the TCF v2.2 core segment layout (IAB Tech Lab, "Consent string and vendor list formats
v2"), so unit and browser tests can make the strings a CMP would hand the tag.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence, Set

CREATED_DECISECONDS = 17_638_000_000  # 2025-11-22, fixed so strings are reproducible
CMP_ID = 300
VENDOR_LIST_VERSION = 80


def make_tc_string(
    purposes: Set[int],
    vendors: Set[int],
    policy_version: int = 4,
    pub_restrictions: Sequence[tuple[int, int, Set[int]]] = (),
    *,
    li_purposes: Set[int] = frozenset(),
    vendor_ranges: bool = False,
) -> str:
    """A core-only TC string. `pub_restrictions` holds (purpose, restriction type, vendor IDs)."""
    bits = _header(policy_version)
    bits += _bitfield(frozenset(), 12)  # SpecialFeatureOptIns
    bits += _bitfield(purposes, 24) + _bitfield(li_purposes, 24)
    bits += "0" + _letters("GB")  # PurposeOneTreatment, PublisherCC
    bits += _vendor_section(vendors, vendor_ranges)
    bits += _vendor_section(frozenset(), False)  # vendor legitimate interests
    bits += _int(len(pub_restrictions), 12)
    bits += "".join(_restriction(*restriction) for restriction in pub_restrictions)
    return _base64url(bits)


def _header(policy_version: int) -> str:
    return (
        _int(2, 6) + _int(CREATED_DECISECONDS, 36) + _int(CREATED_DECISECONDS, 36)
        + _int(CMP_ID, 12) + _int(1, 12) + _int(1, 6) + _letters("EN")
        + _int(VENDOR_LIST_VERSION, 12) + _int(policy_version, 6)
        + "1" + "0"  # IsServiceSpecific, UseNonStandardTexts
    )


def _vendor_section(vendors: Set[int], ranges: bool) -> str:
    max_vendor_id = max(vendors, default=0)
    if not ranges:
        return _int(max_vendor_id, 16) + "0" + _bitfield(vendors, max_vendor_id)
    runs = _runs(vendors)
    return _int(max_vendor_id, 16) + "1" + _int(len(runs), 12) + "".join(_range_entry(*run) for run in runs)


def _restriction(purpose: int, restriction_type: int, vendors: Set[int]) -> str:
    runs = _runs(vendors)
    header = _int(purpose, 6) + _int(restriction_type, 2) + _int(len(runs), 12)
    return header + "".join(_range_entry(*run) for run in runs)


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive IDs collapsed into (start, end) pairs."""
    runs: list[tuple[int, int]] = []
    for vendor_id in sorted(ids):
        if runs and runs[-1][1] == vendor_id - 1:
            runs[-1] = (runs[-1][0], vendor_id)
        else:
            runs.append((vendor_id, vendor_id))
    return runs


def _range_entry(start: int, end: int) -> str:
    if start == end:
        return "0" + _int(start, 16)
    return "1" + _int(start, 16) + _int(end, 16)


def _bitfield(ids: Set[int], length: int) -> str:
    return "".join("1" if position in ids else "0" for position in range(1, length + 1))


def _letters(code: str) -> str:
    return "".join(_int(ord(letter) - ord("A"), 6) for letter in code)


def _int(value: int, width: int) -> str:
    if not 0 <= value < 1 << width:
        raise ValueError(f"{value} does not fit in {width} bits")
    return format(value, f"0{width}b")


def _base64url(bits: str) -> str:
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
