"""Each adapter against its local conformance server, over real HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from activation.destinations import AuthError, Batch, Item
from activation.destinations import google_proto as pb
from activation.destinations.config import (
    DestinationConfigError,
    build_destination,
    load_destinations,
)
from activation.destinations.google import GoogleDestination
from activation.destinations.ttd import TTDDestination
from activation.destinations.webhook import WebhookDestination, sign
from activation.destinations.xandr import XandrDestination, encode_lines
from activation.url_destinations import url_destination_urls
from tests.activation.conformance.google import GoogleServer
from tests.activation.conformance.ttd import TTDServer
from tests.activation.conformance.webhook import WebhookServer
from tests.activation.conformance.xandr import XandrServer


def item(uid: str, segment: str = "fans", change: str = "enter", ttl: int = 1440, segment_id: int = 1) -> Item:
    return Item(f"c-{uid}", uid, segment_id, segment, change, ttl)  # type: ignore[arg-type]


def tdids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


# --- The Trade Desk ----------------------------------------------------------------------------

def test_ttd_sends_adds_and_ttl_zero_removals(ttd: TTDServer, http: httpx.Client) -> None:
    a, b = tdids(2)
    destination = TTDDestination("ttd", ttd.url, "adv1", "ttd-secret", http)
    result = destination.push(Batch([item(a, "fans"), item(a, "movers", ttl=60), item(b, "fans", "exit")]))
    assert len(result.delivered) == 3 and not result.failed and result.requests == 1
    assert ttd.accepted == [(a, "fans", 1440), (a, "movers", 60), (b, "fans", 0)]


def test_ttd_failed_lines_become_per_item_failures(ttd: TTDServer, http: httpx.Client) -> None:
    good, bad = tdids(2)
    ttd.failing[bad] = "UserNotMapped"
    result = TTDDestination("ttd", ttd.url, "adv1", "ttd-secret", http).push(Batch([item(good), item(bad)]))
    assert [i.partner_uid for i in result.delivered] == [good]
    assert [(f.item.partner_uid, f.code, f.retryable) for f in result.failed] == [(bad, "UserNotMapped", False)]


@pytest.mark.parametrize(("status", "retry_after", "expected"), [(429, "7", 7.0), (503, None, None)])
def test_ttd_throttling_and_outages_are_retryable(
    ttd: TTDServer, http: httpx.Client, status: int, retry_after: str | None, expected: float | None,
) -> None:
    ttd.faults.fail_next(1, status, retry_after)
    result = TTDDestination("ttd", ttd.url, "adv1", "ttd-secret", http).push(Batch([item(tdids(1)[0])]))
    assert not result.delivered
    assert [(f.code, f.retryable) for f in result.failed] == [(f"http_{status}", True)]
    assert result.retry_after_s == expected


def test_ttd_wrong_token_stops_the_push(ttd: TTDServer, http: httpx.Client) -> None:
    with pytest.raises(AuthError):
        TTDDestination("ttd", ttd.url, "adv1", "wrong", http).push(Batch([item(tdids(1)[0])]))


def test_ttd_splits_by_items_per_request_and_halves_on_413(ttd: TTDServer, http: httpx.Client) -> None:
    ttd.max_items = 3  # the platform answers 413 above this
    items = [item(uid) for uid in tdids(10)]
    result = TTDDestination("ttd", ttd.url, "adv1", "ttd-secret", http, items_per_request=5).push(Batch(items))
    assert len(result.delivered) == 10 and not result.failed
    assert sorted(t for t, _, _ in ttd.accepted) == sorted(tdids(10))


def test_transport_failure_is_retryable(http: httpx.Client) -> None:
    from tests.activation.conformance.server import free_port

    destination = TTDDestination("ttd", f"http://127.0.0.1:{free_port()}", "adv1", "t", http)
    result = destination.push(Batch([item(tdids(1)[0])]))
    assert [(f.code, f.retryable) for f in result.failed] == [("transport", True)]


# --- Xandr BSS ---------------------------------------------------------------------------------

def bss(xandr: XandrServer, http: httpx.Client) -> XandrDestination:
    return XandrDestination("xandr", xandr.url, 456, "xandr-token", http, poll_interval_s=0, sleep=lambda s: None)


def test_xandr_job_upload_poll_and_file_format(xandr: XandrServer, http: httpx.Client) -> None:
    destination = bss(xandr, http)
    items = [item("111", "10000", ttl=1440), item("111", "10001", ttl=300_000), item("222", "10002", "exit")]
    result = destination.push(Batch(items))
    assert len(result.delivered) == 3 and not result.failed and result.unattributed == 0
    assert xandr.lines == ["111,10000:1440;10001:0", "222,10002:-1"]
    assert result.requests == 3 + xandr.polls_until_done


def test_xandr_counts_invalid_users_without_naming_them(xandr: XandrServer, http: httpx.Client) -> None:
    xandr.invalid_users.add("999")
    destination = bss(xandr, http)
    result = destination.push(Batch([item("111", "1"), item("999", "1")]))
    assert result.unattributed == 1 and xandr.lines == ["111,1:1440"]


def test_xandr_lines_hold_at_most_1800_segments() -> None:
    lines, bad = encode_lines([item("5", str(s)) for s in range(1, 4001)])
    assert not bad and [line.decode().count(":") for line in lines] == [1800, 1800, 400]
    assert all(line.startswith(b"5,") for line in lines)


def test_xandr_refuses_non_latin1_items_alone(xandr: XandrServer, http: httpx.Client) -> None:
    destination = bss(xandr, http)
    result = destination.push(Batch([item("111", "1"), item("12\u20ac", "1")]))
    assert [f.code for f in result.failed] == ["invalid_format"] and len(result.delivered) == 1


# --- Google bulk uploader ----------------------------------------------------------------------

def test_google_protobuf_ops(google: GoogleServer, http: httpx.Client) -> None:
    destination = GoogleDestination("g", google.url, "crumb-nid", http, user_id_type="PARTNER_PROVIDED_ID")
    result = destination.push(Batch([item("CAESE1", "111"), item("CAESE2", "111", "exit")]))
    assert len(result.delivered) == 2
    assert google.accepted == [("CAESE1", 4, 111, False), ("CAESE2", 4, 111, True)]


def test_google_requests_stay_under_100kb(google: GoogleServer, http: httpx.Client) -> None:
    items = [item("u" * 60 + str(i), "123456789") for i in range(3000)]
    result = GoogleDestination("g", google.url, "crumb-nid", http).push(Batch(items))
    assert len(result.delivered) == 3000 and result.requests > 1
    assert max(google.request_sizes) <= 100_000 and len(google.accepted) == 3000


def test_google_per_op_errors_only_internal_error_retries(google: GoogleServer, http: httpx.Client) -> None:
    google.op_errors.update({"bad": "BAD_COOKIE", "flaky": "INTERNAL_ERROR"})
    result = GoogleDestination("g", google.url, "crumb-nid", http).push(
        Batch([item("ok", "7"), item("bad", "7"), item("flaky", "7")]))
    assert [i.partner_uid for i in result.delivered] == ["ok"]
    assert sorted((f.item.partner_uid, f.code, f.retryable) for f in result.failed) == [
        ("bad", "BAD_COOKIE", False), ("flaky", "INTERNAL_ERROR", True)]


# --- webhook -----------------------------------------------------------------------------------

def test_webhook_signed_batches(hook: WebhookServer, http: httpx.Client) -> None:
    destination = WebhookDestination("crm", hook.url, "hook-secret", http, id_key="cookie_id")
    result = destination.push(Batch([item("k1", "fans"), item("k1", "old", "exit"), item("k2", "fans")]))
    assert len(result.delivered) == 3
    assert hook.batches[0]["items"] == [
        {"cookie_id": "k1", "add": ["fans"], "remove": ["old"]}, {"cookie_id": "k2", "add": ["fans"], "remove": []}]


def test_webhook_wrong_secret_is_refused(hook: WebhookServer, http: httpx.Client) -> None:
    with pytest.raises(AuthError):
        WebhookDestination("crm", hook.url, "not-the-secret", http, id_key="cookie_id").push(Batch([item("k1")]))


def test_signature_covers_the_timestamp() -> None:
    assert sign("s", "1", b"{}") != sign("s", "2", b"{}")


def test_google_field_numbers_on_the_wire() -> None:
    """Tags as Google's cookie-bulk-upload.proto numbers them (see google_proto.py for the source):
    ops=1, process_consent=3; user_id=1, user_list_id=4, delete=6, user_id_type=14; status=1,
    errors=2; ErrorInfo user_list_id=2, user_id=3, error_code=4, user_id_type=7."""
    op = pb.UserDataOperation(user_id="a", user_id_type=4, user_list_id=5, delete=True)
    assert op.SerializeToString() == b"\x0a\x01a" b"\x20\x05" b"\x30\x01" b"\x70\x04"
    request = pb.UpdateUsersDataRequest(ops=[op], process_consent=True).SerializeToString()
    assert request == b"\x0a\x09" + op.SerializeToString() + b"\x18\x01"
    reply = pb.UpdateUsersDataResponse(status=pb.ERROR_CODES["PARTIAL_SUCCESS"])
    reply.errors.add(user_list_id=5, user_id="a", user_id_type=4, error_code=pb.ERROR_CODES["UNKNOWN_ID"])
    assert reply.SerializeToString() == b"\x08\x01" b"\x12\x09" b"\x10\x05" b"\x1a\x01a" b"\x20\x15" b"\x38\x04"


# --- configuration -----------------------------------------------------------------------------

def test_config_builds_destinations(tmp_path: Path, ttd: TTDServer, http: httpx.Client) -> None:
    (tmp_path / "ttd.yaml").write_text(
        f"name: ttd-main\ntype: ttd\nendpoint: {ttd.url}\nadvertiser_id: adv1\ntoken_env: TTD_AUTH_TOKEN\n"
        "partner: ttd\nsegments: {101: crumb_soccer_fans}\n")
    (tmp_path / "pixels.yaml").write_text(
        "- name: px\n  type: url\n  template: https://pixel.example/seg?uid=${CRUMB_ID}&add=${SEGMENTS}\n"
        "  segments: {101: soccer, 102: tennis, 103: golf}\n")
    configs = {c.name: c for c in load_destinations(tmp_path)}
    assert configs["ttd-main"].segments == {101: "crumb_soccer_fans"} and configs["ttd-main"].max_concurrency == 4
    destination = build_destination(configs["ttd-main"], http, {"TTD_AUTH_TOKEN": "ttd-secret"})
    assert destination.push(Batch([item(tdids(1)[0])])).delivered
    assert url_destination_urls(configs.values(), "abc def", [102, 101, 999]) == [
        "https://pixel.example/seg?uid=abc%20def&add=soccer,tennis"]


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\ntype: ttd\nadvertiser_id: a\ntoken_env: CRUMB_TTD\npartner: ttd\nsegments: {1: a}\n", "token_env"),
    ("name: x\ntype: ttd\nadvertiser_id: a\ntoken_env: T\nsegments: {1: a}\n", "partner"),
    ("name: x\ntype: carrier-pigeon\nsegments: {1: a}\n", "type"),
    ("name: x\ntype: webhook\nurl: https://h.example\nsecret_env: S\nsegments: {one: a}\n", "segments"),
])
def test_config_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(DestinationConfigError, match=rf"bad\.yaml.*{message}"):
        load_destinations(tmp_path)
