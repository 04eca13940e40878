"""The pixel's hot path: the query parser (decodes only what is encoded, with a cache that never hides
an error), and the shortcuts for hits without consent signals or without our cookies."""

from __future__ import annotations

import pytest

from collector.consent import NO_GDPR, Consent, decode_consent
from collector.hits import Rejected, consent_columns
from collector.http import RequestMeta
from collector.service import _consent, _our_cookies, parse_query


@pytest.mark.parametrize("length", [10, 600])  # cached, and past the cached length
def test_encoded_values_decode_the_same_every_time(length: int) -> None:
    url = "https://shop.example.com/" + "é" * length
    encoded = "".join(f"%{b:02X}" for b in url.encode())
    for _ in range(2):
        assert parse_query(f"site=s&url={encoded}&q=a+b".encode()) == {"site": "s", "url": url, "q": "a b"}


def test_a_bad_encoding_is_rejected_every_time() -> None:
    for _ in range(2):
        with pytest.raises(Rejected) as caught:
            parse_query(b"site=s&url=%ff%fe")
        assert caught.value.reason == "bad_encoding"


def test_encoded_names_and_plain_pairs_side_by_side() -> None:
    assert parse_query(b"pr.%70lan=a%2Bb&site=s&site=t&q=1+2&=x&empty=") == {
        "pr.plan": "a+b", "site": "s", "q": "1 2", "empty": ""}


@pytest.mark.parametrize(
    ("fields", "gpc_header", "expected"),
    [({}, False, NO_GDPR), ({"site": "s"}, False, NO_GDPR), ({"gpc": "1"}, False, None), ({}, True, None),
     ({"us_privacy": "1YYN"}, False, None), ({"gdpr": "0"}, False, NO_GDPR)],
)
def test_hits_without_consent_signals_skip_decoding(fields: dict[str, str], gpc_header: bool,
                                                    expected: Consent | None) -> None:
    consent = _consent(fields, RequestMeta(gpc=gpc_header), vendor_id=1)
    assert consent == decode_consent(fields.get("gdpr"), None, gpc_header or fields.get("gpc") == "1",
                                     fields.get("us_privacy"), 1)
    if expected is not None:
        assert consent is expected
    assert consent_columns(consent) == (0, (), 0, 1, int(consent.can_share), int(consent.gpc), consent.us_privacy)


def test_a_cookie_header_without_ours_is_not_parsed() -> None:
    assert _our_cookies("_ga=GA1.1.1.1; theme=dark") == {}
    assert _our_cookies('_ga=1; crumb_optout="1"; _crumb=abc') == {"_ga": "1", "crumb_optout": "1", "_crumb": "abc"}
