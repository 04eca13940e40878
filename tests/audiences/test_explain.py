"""Explain against the real warehouse: a profile's counts, dates and verdicts, condition by condition.

This module's events live in June 2048 (no other test's window reaches them); segment IDs 48xxx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from audiences.builder import build
from audiences.definitions import Predicate, SegmentSet, parse_segment
from audiences.errors import InvalidRequest
from audiences.explain import UnknownSegment, describe_predicate, explain, render_text
from collector.categories import ContentTaxonomy
from crumb.settings import Settings
from tests.audiences.events import cookie, insert_events

DAY = 86_400_000
HOUR = 3_600_000
T = int(datetime(2048, 6, 15, tzinfo=UTC).timestamp() * 1000)
SHOP = "shop.x48.example"

SEGMENTS = SegmentSet([
    parse_segment({"id": 48002, "name": "shoppers", "rule": {"where": [{"field": "host", "op": "eq", "value": SHOP}]}}),
    parse_segment({"id": 48001, "name": "soccer fans who shopped, not lately", "rule": {"all": [
        {"where": [{"field": "category", "op": "is", "value": "483"}], "min_count": 3, "min_days": 2},
        {"not": {"where": [{"field": "host", "op": "eq", "value": SHOP}], "within_days": 7}},
        {"any": [{"where": [{"field": "device_type", "op": "eq", "value": "mobile"}]}, {"segment": 48002}]},
    ]}}),
])


def insert(client: Client, rows: list[dict[str, Any]]) -> None:
    insert_events(client, rows, site="explain-test", host="news.x48.example")


@pytest.fixture(scope="module", autouse=True)
def _drop_our_partitions(warehouse: Client) -> Iterator[None]:
    yield
    for month in (204805, 204806):
        warehouse.command(f"ALTER TABLE crumb.events DROP PARTITION {month}")


@pytest.fixture(scope="module")
def taxonomy(settings: Settings) -> ContentTaxonomy:
    assert settings.content_taxonomy_file is not None
    return ContentTaxonomy.load(settings.content_taxonomy_file)


@pytest.fixture(scope="module")
def ids(warehouse: Client) -> dict[str, str]:
    """A profile of two cookies linked through one first-party ID (c1 - f1 - c2), a one-time soccer
    reader, a bot, a reader without profiling consent and one who opted out."""
    ids = {name: cookie() for name in ("c1", "c2", "f1", "once", "bot", "refused", "optout")}
    soccer, sports = ["533"], ["483"]  # 533 is Sports > Soccer, under 483 Sports
    insert(warehouse, [
        {"ts": T - DAY, "cookie_id": ids["c1"], "categories": soccer, "engaged_ms": 1000},
        {"ts": T - DAY + HOUR, "cookie_id": ids["c1"], "categories": soccer, "engaged_ms": 1000},
        {"ts": T - 5 * DAY, "cookie_id": ids["c2"], "fp_id": ids["f1"], "categories": sports, "engaged_ms": 500},
        {"ts": T - 20 * DAY, "cookie_id": ids["c1"], "fp_id": ids["f1"], "host": SHOP},
        {"ts": T - 2 * DAY, "cookie_id": ids["once"], "categories": soccer},
        {"ts": T - 2 * DAY, "cookie_id": ids["bot"], "categories": soccer, "is_bot": 1},
        {"ts": T - 2 * DAY, "cookie_id": ids["refused"], "categories": soccer, "can_profile": 0},
        {"ts": T - 2 * DAY, "cookie_id": ids["optout"], "categories": soccer},
    ])
    warehouse.insert("crumb.optouts", [[ids["optout"], T - DAY]], column_names=["id", "opted_out_at"])
    return ids


@pytest.fixture
def built(warehouse: Client, ids: dict[str, str], taxonomy: ContentTaxonomy) -> None:
    assert build(warehouse, SEGMENTS, taxonomy, as_of_ms=T).status == "succeeded"


def test_a_member_is_explained_condition_by_condition(
    warehouse: Client, ids: dict[str, str], taxonomy: ContentTaxonomy, built: None,
) -> None:
    result = explain(warehouse, 48001, ids["c1"], SEGMENTS, taxonomy)
    assert (result["as_of_ms"], result["as_of_source"]) == (T, "last build")
    assert result["in_by_rule"] is True
    assert result["member"] == {"is_member": True, "build_id": result["member"]["build_id"],
                                "profile_id": f"c:{min(ids['c1'], ids['c2'])}", "since": "2048-06-15T00:00:00.000Z",
                                "left_at": None}
    assert {(i["id_type"], i["id"]) for i in result["profile"]["ids"]} == {
        ("cookie", ids["c1"]), ("cookie", ids["c2"]), ("fp", ids["f1"])}
    assert result["excluded"] == []
    seen, rule = result["rule"]["children"]
    assert (seen["found"]["count"], seen["held"]) == (4, True)
    sports, not_shop, either = rule["children"]
    assert sports["predicates"] == ["category is 483 (Sports)"]
    assert sports["found"] == {"count": 3, "days": 2, "engaged_ms": 2500, "first": "2048-06-10T00:00:00.000Z",
                               "last": "2048-06-14T01:00:00.000Z"}
    assert (sports["bounds"]["min_count"], sports["bounds"]["min_days"], sports["held"]) == (3, 2, True)
    assert (not_shop["kind"], not_shop["held"], not_shop["children"][0]["found"]["count"]) == ("not", True, 0)
    assert not_shop["children"][0]["window_days"] == 7
    mobile, shoppers = either["children"]
    assert (either["held"], mobile["held"], mobile["found"]["count"]) == (True, False, 0)
    assert (shoppers["kind"], shoppers["segment_id"], shoppers["held"]) == ("segment", 48002, True)
    shop = shoppers["children"][1]
    assert (shop["found"]["count"], shop["found"]["first"]) == (1, "2048-05-26T00:00:00.000Z")
    json.dumps(result)  # the CLI prints it as it is


def test_a_cookie_short_of_the_bounds_is_out_and_says_which(
    warehouse: Client, ids: dict[str, str], taxonomy: ContentTaxonomy, built: None,
) -> None:
    result = explain(warehouse, 48001, ids["once"], SEGMENTS, taxonomy, as_of_ms=T)
    assert (result["in_by_rule"], result["member"]["is_member"], result["excluded"]) == (False, False, [])
    sports = result["rule"]["children"][1]["children"][0]
    assert (sports["found"]["count"], sports["found"]["days"]) == (1, 1)
    assert sports["failed"] == ["count 1 < 3", "days 1 < 2"]
    text = render_text(result)
    assert "by the rule: OUT" in text and "current members: no" in text
    assert "✗ category is 483 (Sports) within 30 days: 1 events on 1 days" in text
    assert "— count 1 < 3; days 1 < 2" in text


@pytest.mark.parametrize(("who", "code"), [
    ("bot", "bot_only"), ("refused", "no_profiling_consent"), ("optout", "opted_out"), ("nobody", "no_events"),
])
def test_exclusions_are_named(warehouse: Client, ids: dict[str, str], who: str, code: str) -> None:
    result = explain(warehouse, 48001, ids.get(who, cookie()), SEGMENTS, as_of_ms=T)
    assert [reason["code"] for reason in result["excluded"]] == [code]
    assert result["in_by_rule"] is False
    assert result["rule"]["children"][0]["found"]["count"] == 0  # not one eligible event


def test_a_former_member_shows_when_it_left(
    warehouse: Client, ids: dict[str, str], taxonomy: ContentTaxonomy, built: None,
) -> None:
    later = T + 6 * DAY  # the shop visit is now 26 days old, the soccer reads still count: c1 is in
    assert build(warehouse, SEGMENTS, taxonomy, as_of_ms=later).status == "succeeded"
    assert explain(warehouse, 48001, ids["c1"], SEGMENTS, taxonomy, as_of_ms=later)["member"]["since"] is not None
    gone = T + 11 * DAY  # the shop visit (and the c1 - f1 link with it) is 31 days old
    assert build(warehouse, SEGMENTS, taxonomy, as_of_ms=gone).status == "succeeded"
    result = explain(warehouse, 48001, ids["c1"], SEGMENTS, taxonomy, as_of_ms=gone)
    assert (result["in_by_rule"], result["member"]["is_member"]) == (False, False)
    assert result["member"]["left_at"] == "2048-06-26T00:00:00.000Z"
    assert result["rule"]["children"][1]["children"][2]["held"] is False  # no shop visit in 30 days


def test_predicates_read_as_written() -> None:
    assert describe_predicate(Predicate(field="host", op="in", value=["a.com", 'b"c'])) == 'host in ["a.com", "b\\"c"]'
    assert describe_predicate(Predicate(field="category", op="is", value="999999")) == "category is 999999"


def test_an_unknown_segment_is_refused(warehouse: Client) -> None:
    with pytest.raises(UnknownSegment):
        explain(warehouse, 48999, cookie(), SEGMENTS, as_of_ms=T)


def test_an_empty_cookie_id_is_refused(warehouse: Client) -> None:
    # Its profile `c:` read every event without a cookie as its own: strangers' first-party IDs'.
    with pytest.raises(InvalidRequest, match="needs a cookie ID"):
        explain(warehouse, 48001, "", SEGMENTS, as_of_ms=T)


def test_events_shared_with_an_opted_out_first_party_id_are_named_as_the_reason(warehouse: Client) -> None:
    # The opted-out ID is no longer linked into the cookie's profile, and its events count nowhere:
    # the cookie is out with its events left out, and says so.
    at = T + 40 * DAY
    member, opted_out = cookie(), cookie()
    insert_events(warehouse, [{"ts": at - DAY - i * HOUR, "cookie_id": member, "fp_id": opted_out,
                               "host": "optout.r48.example"} for i in range(3)], site="r48")
    warehouse.insert("crumb.optouts", [[opted_out, at - 3 * DAY]], column_names=["id", "opted_out_at"])
    segments = SegmentSet([parse_segment({"id": 48401, "name": "z", "lookback_days": 7, "rule": {
        "where": [{"field": "host", "op": "eq", "value": "optout.r48.example"}]}})])
    result = explain(warehouse, 48401, member, segments, as_of_ms=at)
    assert result["in_by_rule"] is False
    assert (result["activity"]["events"], result["activity"]["eligible_events"]) == (3, 0)
    assert result["excluded"] == [{"code": "opted_out",
                                   "message": f"opted out: {opted_out} (3 events of the profile's left out)"}]
