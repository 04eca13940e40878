"""Wire validation: what is accepted, and the stable reason for what is not."""

from typing import Any

import pytest

from collector.consent import NO_GDPR
from collector.hits import Rejected, RequestContext, consent_columns, make_hit, pixel_hit

NOW_MS = 1_763_800_000_000
EID = "3b9d6f1e-6c1a-4b7e-9f0a-2d4c6e8f0a1b"


def ctx() -> RequestContext:
    return RequestContext(site="s", cookie_id="", fp_id="", ip="203.0.113.0", user_agent="ua",
                          consent=consent_columns(NO_GDPR), received_ms=NOW_MS, max_age_ms=7 * 86_400_000,
                          source="beacon")


def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": EID, "type": "pageview", **fields}


def test_a_full_event_is_kept_as_sent() -> None:
    hit = make_hit(event(ts=NOW_MS - 1000, url="https://a.example/x", categories=["483", "483", "1"],
                         engaged_ms=1500, props={"plan": "pro", "n": 3, "ok": True}), ctx())
    assert (hit.ts_ms, hit.categories, hit.engaged_ms) == (NOW_MS - 1000, ("483", "1"), 1500)
    assert dict(hit.props) == {"plan": "pro", "n": "3", "ok": "true"}


@pytest.mark.parametrize(
    ("ts", "stored"),
    [(None, NOW_MS), (NOW_MS - 3_600_000, NOW_MS - 3_600_000), (NOW_MS - 30 * 86_400_000, NOW_MS),
     (NOW_MS + 3_600_000, NOW_MS), (str(NOW_MS - 5), NOW_MS - 5)],
)
def test_client_time_is_used_only_when_plausible(ts: Any, stored: int) -> None:
    assert make_hit(event(ts=ts), ctx()).ts_ms == stored


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_id": "nope"}, "bad_event_id"),
        ({"event_id": None}, "bad_event_id"),
        ({"type": "bad type"}, "bad_type"),
        ({"type": "x" * 65}, "bad_type"),
        ({"type": ["pageview"]}, "bad_type"),  # unhashable: must not reach the known-types set
        ({"type": None}, "bad_type"),
        ({"url": 5}, "bad_field"),
        ({"url": "https://a/" + "q" * 3000}, "too_long"),
        ({"categories": ["ok", "no way"]}, "bad_field"),
        ({"categories": [str(i) for i in range(21)]}, "bad_field"),
        ({"engaged_ms": -1}, "bad_field"),
        ({"engaged_ms": True}, "bad_field"),
        ({"engaged_ms": 10**12}, "bad_field"),
        ({"ts": "yesterday"}, "bad_field"),
        ({"props": {"k": {"nested": 1}}}, "bad_field"),
        ({"props": {"k": "v" * 600}}, "too_long"),
        ({"props": {f"k{i}": "v" for i in range(51)}}, "bad_field"),
        ({"props": ["a"]}, "bad_field"),
    ],
)
def test_bad_fields_are_rejected_with_a_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        make_hit(event(**fields), ctx())
    assert caught.value.reason == reason


def test_pixel_parameters_map_onto_the_beacon_shape() -> None:
    hit = pixel_hit({"event_id": EID, "type": "signup", "url": "u", "ref": "r", "cat": "1,2",
                     "engaged_ms": "10", "pr.plan": "pro"}, ctx())
    assert (hit.type, hit.url, hit.referrer, hit.categories, hit.engaged_ms, hit.props) == (
        "signup", "u", "r", ("1", "2"), 10, (("plan", "pro"),))


def test_a_hit_is_plain_data_the_gc_can_untrack() -> None:
    """Only str, int and tuples of them: buffered as plain tuples, hits cost the GC nothing."""

    def plain(value: object) -> bool:
        return type(value) in (str, int) or (type(value) is tuple and all(plain(v) for v in value))

    hit = make_hit(event(props={"a": "b", "n": 1}, categories=["1", "2"], engaged_ms=5), ctx())
    assert plain(tuple(hit))


@pytest.mark.parametrize(
    ("params", "props"),
    [({}, ()), ({"pr.plan": "pro", "plan": "x"}, (("plan", "pro"),)), ({"x\0pr.y": "1"}, ()),
     ({"pr.email": "a@b.co"}, (("email", "a@b.co"),))],  # scrubbed later, in the encoder
)
def test_pixel_props_come_from_pr_names_only(params: dict[str, str], props: tuple[tuple[str, str], ...]) -> None:
    assert pixel_hit({"event_id": EID, **params}, ctx()).props == props


def test_a_pixel_category_list_is_checked_every_time() -> None:
    for _ in range(2):
        assert pixel_hit({"event_id": EID, "cat": "1,2,1"}, ctx()).categories == ("1", "2")
        with pytest.raises(Rejected):
            pixel_hit({"event_id": EID, "cat": "1,<b>"}, ctx())
