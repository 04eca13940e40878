import hashlib
import hmac

import pytest

from collector.identity import CookieSigner, is_cookie_id, is_event_id, new_cookie_id


def test_new_ids_are_128_random_bits_in_hex() -> None:
    ids = {new_cookie_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_cookie_id(i) for i in ids)


@pytest.mark.parametrize(
    "value",
    ["", "0" * 31, "0" * 33, "G" * 32, "ABCDEF0123456789ABCDEF0123456789", "0" * 16 + "'; DROP TABLE", "é" * 32],
)
def test_malformed_cookie_ids_are_refused(value: str) -> None:
    assert not is_cookie_id(value)


def test_signed_cookie_round_trip_and_forgery() -> None:
    signer = CookieSigner(b"k1")
    cookie_id = new_cookie_id()
    signed = signer.sign(cookie_id)
    assert signer.verify(signed) == cookie_id
    assert CookieSigner(b"k2").verify(signed) is None  # not ours
    assert signer.verify(new_cookie_id() + signed[32:]) is None  # MAC of another ID
    assert signer.verify(cookie_id) is None  # unsigned
    assert signer.verify(signed + "0") is None


@pytest.mark.parametrize("secret", [b"", b"k1", b"s" * 43, b"x" * 64, b"y" * 65, bytes(range(200))])
def test_cookies_signed_before_stay_valid(secret: bytes) -> None:
    """The MAC is HMAC-SHA256 as the hmac module computes it: cookies issued by any version verify."""
    cookie_id = new_cookie_id()
    issued = f"{cookie_id}.{hmac.new(secret, cookie_id.encode(), hashlib.sha256).hexdigest()[:16]}"
    assert CookieSigner(secret).sign(cookie_id) == issued
    assert CookieSigner(secret).verify(issued) == cookie_id


@pytest.mark.parametrize(
    ("value", "ok"),
    [("3b9d6f1e-6c1a-4b7e-9f0a-2d4c6e8f0a1b", True), ("3b9d6f1e6c1a4b7e9f0a2d4c6e8f0a1b", False),
     ("not-a-uuid-at-all-not-a-uuid-at-all!", False), ("", False)],
)
def test_event_ids_are_uuids(value: str, ok: bool) -> None:
    assert is_event_id(value) is ok


def test_new_ids_never_repeat_across_draws_or_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [new_cookie_id() for _ in range(2000)], range(4)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 8000 and all(is_cookie_id(i) for i in ids)
