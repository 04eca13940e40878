import base64
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from iab_tcf import decode_v2

from collector.consent import NO_GDPR, Consent, _consent, decode_consent
from tests.tcf import make_tc_string

VENDOR = 1111
ALL_ADS = {1, 2, 3, 4, 7}


def consent_for(tc_string: str | None, gdpr: str | int | None = "1", vendor_id: int = VENDOR) -> Consent:
    return decode_consent(gdpr, tc_string, False, None, vendor_id)


@pytest.mark.parametrize(
    ("purposes", "vendors", "restrictions", "policy", "expected_purposes", "vendor_consent", "store",
     "profile"),
    [
        (ALL_ADS, {VENDOR}, (), 4, {1, 2, 3, 4, 7}, True, True, True),
        (ALL_ADS, {VENDOR}, (), 5, {1, 2, 3, 4, 7}, True, True, True),  # TCF 2.3
        ({1}, {VENDOR}, (), 4, {1}, True, True, False),
        ({1, 3}, {VENDOR}, (), 4, {1, 3}, True, True, False),
        ({3, 4}, {VENDOR}, (), 4, {3, 4}, True, False, False),
        (ALL_ADS, {VENDOR + 1, 7}, (), 4, {1, 2, 3, 4, 7}, False, False, False),
        (ALL_ADS, set(), (), 4, {1, 2, 3, 4, 7}, False, False, False),
        (ALL_ADS, {VENDOR}, (), 3, set(), False, False, False),  # TCF 2.1 and older: no consent
        (ALL_ADS, {VENDOR}, [(3, 0, {VENDOR})], 4, {1, 2, 4, 7}, True, True, False),
        (ALL_ADS, {VENDOR}, [(1, 0, {1, VENDOR, 2000})], 4, {2, 3, 4, 7}, True, False, False),
        (ALL_ADS, {VENDOR}, [(4, 2, set(range(1000, 1200)))], 4, {1, 2, 3, 7}, True, True, False),
        (ALL_ADS, {VENDOR}, [(3, 1, {VENDOR})], 4, {1, 2, 3, 4, 7}, True, True, True),  # consent required
        (ALL_ADS, {VENDOR}, [(3, 0, {VENDOR + 1})], 4, {1, 2, 3, 4, 7}, True, True, True),  # someone else
    ],
)
def test_decoded_tc_string(
    purposes: set[int], vendors: set[int], restrictions: list[tuple[int, int, set[int]]], policy: int,
    expected_purposes: set[int], vendor_consent: bool, store: bool, profile: bool,
) -> None:
    consent = consent_for(make_tc_string(purposes, vendors, policy, restrictions))
    assert consent.valid_tc_string and consent.gdpr_applies
    assert consent.purposes == expected_purposes
    assert consent.vendor_consent is vendor_consent
    assert (consent.can_store, consent.can_profile) == (store, profile)


def test_legitimate_interest_is_no_basis_for_profiling() -> None:
    consent = consent_for(make_tc_string({1}, {VENDOR}, li_purposes={2, 3, 4, 7}))
    assert consent.purposes == {1}
    assert consent.can_store and not consent.can_profile


def test_range_encoded_vendors() -> None:
    consent = consent_for(make_tc_string(ALL_ADS, {VENDOR - 1, VENDOR, VENDOR + 1, 5}, vendor_ranges=True))
    assert consent.vendor_consent and consent.can_profile
    assert not consent_for(make_tc_string(ALL_ADS, {5, 6}, vendor_ranges=True)).vendor_consent


def test_vendor_id_zero_never_has_consent() -> None:
    consent = consent_for(make_tc_string(ALL_ADS, set(range(1, 50))), vendor_id=0)
    assert not consent.vendor_consent and not consent.can_store


@pytest.mark.parametrize(("gdpr", "with_string", "applies"), [
    ("1", True, True), (1, True, True), ("1", False, True), (1, False, True),
    ("0", True, False), (0, True, False), ("0", False, False), (0, False, False),
    (None, True, True), (None, False, False), ("", True, True), ("", False, False),
    ("yes", True, True), ("yes", False, False),
])
def test_gdpr_applies(gdpr: str | int | None, with_string: bool, applies: bool) -> None:
    tc_string = make_tc_string(ALL_ADS, {VENDOR}) if with_string else None
    consent = consent_for(tc_string, gdpr=gdpr)
    assert consent.gdpr_applies is applies
    assert consent.valid_tc_string is with_string


def test_gdpr_without_a_string_allows_nothing() -> None:
    consent = consent_for(None, gdpr=1)
    assert not (consent.can_store or consent.can_profile or consent.valid_tc_string)


def test_no_gdpr_allows_everything_and_is_the_shared_constant() -> None:
    consent = decode_consent(None, None, False, None, VENDOR)
    assert consent is NO_GDPR
    assert consent.can_store and consent.can_profile and consent.can_share


VALID = make_tc_string(ALL_ADS, {VENDOR})
# Purposes 1, 3, 4 and a 65,535-vendor bitfield claimed, then the string ends: the library would
# read the missing bits as 1s, so every vendor (ours included) as consented.
_FORGED_BITS = (
    "000010" + "0" * 126 + format(4, "06b") + "10" + "0" * 12 + "1011".ljust(24, "0") + "0" * 37
    + "1" * 16 + "0" + "00"
)
FORGED = base64.urlsafe_b64encode(int(_FORGED_BITS, 2).to_bytes(29, "big")).decode().rstrip("=")
TCF_V1 = "BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA"
TCF_POLICY_2 = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"  # a real TCF 2.0 string


@pytest.mark.parametrize("tc_string", [
    "not a tc string!", "CP==", "A", "AAAA", "....", VALID + "..", VALID.replace("A", "*", 1),
    VALID[:20], VALID[:-3], FORGED, TCF_V1, "C" * 5000,
])
def test_undecodable_strings_give_no_consent(tc_string: str) -> None:
    consent = consent_for(tc_string)
    assert consent.gdpr_applies
    assert not consent.valid_tc_string
    assert (consent.purposes, consent.vendor_consent, consent.can_store) == (frozenset(), False, False)


def test_no_truncation_of_a_valid_string_is_accepted() -> None:
    tc_string = make_tc_string(ALL_ADS, {VENDOR, 2000}, pub_restrictions=[(3, 0, {5, 6, 7})])
    assert all(not consent_for(tc_string[:cut]).valid_tc_string for cut in range(1, len(tc_string) - 1))


def test_an_old_policy_string_is_decodable_but_consents_to_nothing() -> None:
    consent = consent_for(TCF_POLICY_2)
    assert consent.valid_tc_string and not consent.purposes and not consent.can_store


def test_optional_segments_are_not_parsed() -> None:
    # A disclosed-vendors segment claiming 4,095 ranges of 65,535 vendors each: costly to expand.
    hostile_segment = base64.urlsafe_b64encode(bytes([0b00100000, 0, 0b00011111]) + b"\xff" * 600).decode()
    started = time.perf_counter()
    consent = consent_for(VALID + "." + hostile_segment.rstrip("="))
    assert time.perf_counter() - started < 0.5
    assert consent.valid_tc_string and consent.can_profile


def test_decoding_is_cached_per_string_and_vendor() -> None:
    tc_string = make_tc_string({1, 2}, {VENDOR, 42})
    before = _consent.cache_info()
    first, again = consent_for(tc_string), consent_for(tc_string)
    other_vendor = consent_for(tc_string, vendor_id=42)
    after = _consent.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 2)
    assert first is again and other_vendor.vendor_consent


@pytest.mark.parametrize(("raw", "kept"), [
    ("1YYN", "1YYN"), ("1---", "1---"), ("1NNY", "1NNY"), (None, ""), ("", ""),
    ("2YYN", ""), ("1yyn", ""), ("1YN", ""), ("1YYNN", ""), ("1YXN", ""),
])
def test_us_privacy_is_validated(raw: str | None, kept: str) -> None:
    assert decode_consent(None, None, False, raw, VENDOR).us_privacy == kept


@pytest.mark.parametrize(("gpc", "us_privacy", "can_share"), [
    (False, None, True), (True, None, False), (False, "1YYN", False), (False, "1YNN", True),
    (False, "1-Y-", False), (False, "1---", True), (True, "1YNN", False), (False, "bogus", True),
])
def test_can_share(gpc: bool, us_privacy: str | None, can_share: bool) -> None:
    consent = decode_consent(None, None, gpc, us_privacy, VENDOR)
    assert consent.gpc is gpc
    assert consent.can_share is can_share
    assert consent.can_store  # GPC and US Privacy limit sharing, not collection


_VENDOR_IDS = st.sets(st.integers(1, 3000), min_size=1, max_size=5)
_RESTRICTION = st.tuples(st.integers(1, 24), st.integers(0, 3), _VENDOR_IDS)


@given(
    st.sets(st.integers(1, 24)), st.sets(st.integers(1, 3000), max_size=40), st.integers(4, 63),
    st.lists(_RESTRICTION, max_size=4), st.booleans(),
)
def test_encoder_round_trips_through_the_library(
    purposes: set[int], vendors: set[int], policy: int, restrictions: list[tuple[int, int, set[int]]],
    ranges: bool,
) -> None:
    decoded = decode_v2(make_tc_string(purposes, vendors, policy, restrictions, vendor_ranges=ranges))
    assert (decoded.version, decoded.tcf_policy_version) == (2, policy)
    assert {p for p, given in decoded.purposes_consent.items() if given} == purposes
    assert all(decoded.is_vendor_allowed(v) for v in vendors)
    assert not any(decoded.is_vendor_allowed(v) for v in set(range(1, 3001)) - vendors)
    for (purpose, kind, ids), entry in zip(restrictions, decoded.pub_restriction_entries, strict=True):
        assert (entry.purpose_id, entry.restriction_type) == (purpose, kind)
        assert all(entry.is_in_range(v) for v in ids) and not entry.is_in_range(3001)
