"""The pixel's query parser: decodes only what is encoded, with a cache that never hides an error."""

from __future__ import annotations

import pytest

from collector.hits import Rejected
from collector.service import parse_query


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
