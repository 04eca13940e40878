"""Reports against the real warehouse: sizes, trend, overlap, composition, history.

The warehouse is shared, so this module's events live in 2045 (no other test's window reaches
them) and its segment IDs are 45xxx. A build replaces all members, so each test builds and then
reads at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from audiences import reports
from audiences.builder import build
from audiences.definitions import SegmentSet, parse_segment
from audiences.errors import InvalidRequest
from tests.audiences.events import cookie, insert_events

DAY = 86_400_000
HOUR = 3_600_000
T = int(datetime(2045, 3, 10, tzinfo=UTC).timestamp() * 1000)
NEWS, SHOP, HOME = "news.r45.example", "shop.r45.example", "home.r45.example"


def insert(client: Client, rows: list[dict[str, Any]]) -> None:
    insert_events(client, rows, site="reports-test", host=HOME)


@pytest.fixture(scope="module", autouse=True)
def _drop_our_partitions(warehouse: Client) -> Iterator[None]:
    yield
    for month in (204501, 204502, 204503):
        warehouse.command(f"ALTER TABLE crumb.events DROP PARTITION {month}")


def segment(id: int, name: str, rule: dict[str, Any], **extra: Any) -> Any:
    return parse_segment({"id": id, "name": name, "rule": rule, **extra})


def where(field: str, value: str) -> dict[str, Any]:
    return {"where": [{"field": field, "op": "eq", "value": value}]}


SEGMENTS = SegmentSet([
    segment(45001, "news readers", where("host", NEWS)),
    segment(45002, "shoppers", where("host", SHOP)),
    segment(45003, "mobile", where("device_type", "mobile")),
])


@pytest.fixture(scope="module")
def population(warehouse: Client) -> dict[str, list[str]]:
    """6 news readers, 4 who read news and shop (on mobile), 2 shoppers, one profile of a cookie and a
    first-party ID that reads news through the first-party ID, and a bot and an unconsented reader."""
    ids = {group: [cookie() for _ in range(n)]
           for group, n in (("news", 6), ("both", 4), ("shop", 2), ("linked", 2), ("bot", 1), ("refused", 1))}
    at, mobile = T - HOUR, "mobile"
    linked_cookie, linked_fp = ids["linked"]
    insert(warehouse, [
        *({"ts": at, "cookie_id": c, "host": NEWS, "categories": ["483"]} for c in ids["news"]),
        *({"ts": at, "cookie_id": c, "host": NEWS, "categories": ["483"], "device_type": mobile} for c in ids["both"]),
        *({"ts": at, "cookie_id": c, "host": SHOP, "categories": ["52"], "device_type": mobile} for c in ids["both"]),
        *({"ts": at, "cookie_id": c, "host": SHOP, "categories": ["52"]} for c in ids["shop"]),
        {"ts": at, "cookie_id": linked_cookie, "fp_id": linked_fp, "host": HOME},
        {"ts": at, "fp_id": linked_fp, "host": NEWS, "categories": ["483"]},
        {"ts": at, "cookie_id": ids["bot"][0], "host": NEWS, "categories": ["483"], "is_bot": 1},
        {"ts": at, "cookie_id": ids["refused"][0], "host": SHOP, "categories": ["52"], "can_profile": 0},
    ])
    return ids


@pytest.fixture
def built(warehouse: Client, population: dict[str, list[str]]) -> None:
    assert build(warehouse, SEGMENTS, as_of_ms=T).status == "succeeded"


def test_sizes_count_profiles_and_ids_exactly_and_estimate_them(warehouse: Client, built: None) -> None:
    rows = reports.sizes(warehouse, [45001, 45002, 45099], SEGMENTS)
    assert [(r["segment_id"], r["name"], r["profiles"], r["ids"], r["cookies"], r["fp_ids"]) for r in rows] == [
        (45001, "news readers", 11, 12, 11, 1), (45002, "shoppers", 6, 6, 6, 0), (45099, None, 0, 0, 0, 0)]
    assert [(r["estimate"], r["estimate_error"]) for r in rows] == [(11, 0.0), (6, 0.0), (0, 0.0)]
    assert {r["segment_id"] for r in reports.sizes(warehouse)} == {45001, 45002, 45003}
    assert reports.sizes(warehouse, []) == []  # an empty list asks for none (every definition paused)


def test_overlap_is_the_intersection_and_jaccard_of_profiles(warehouse: Client, built: None) -> None:
    result = reports.overlap(warehouse, [45001, 45002, 45003], SEGMENTS)
    assert result["sizes"] == [11, 6, 4]
    assert result["intersection"] == [[11, 4, 4], [4, 6, 4], [4, 4, 4]]
    assert result["jaccard"][0] == [1.0, round(4 / 13, 6), round(4 / 11, 6)]
    assert result["jaccard"][1][2] == round(4 / 6, 6)
    assert [s["name"] for s in result["segments"]] == ["news readers", "shoppers", "mobile"]


def test_composition_indexes_members_events_against_eligible_events(warehouse: Client, built: None) -> None:
    result = reports.composition(warehouse, 45001, lookback_days=7, as_of_ms=T)
    assert (result["segment_events"], result["population_events"]) == (16, 18)  # no bot, no unconsented event
    hosts = {h["value"]: (h["segment_events"], h["population_events"], h["index"]) for h in result["hosts"]}
    assert hosts == {NEWS: (11, 11, 112.5), SHOP: (4, 6, 75.0), HOME: (1, 1, 112.5)}
    assert [h["value"] for h in result["hosts"]] == [NEWS, SHOP, HOME]
    devices = {d["value"]: d["index"] for d in result["device_types"]}
    assert devices == {"mobile": 112.5, "desktop": 90.0}
    assert [(c["value"], c["share_segment"], c["share_population"]) for c in result["categories"]] == [
        ("483", round(11 / 16, 6), round(11 / 18, 6)), ("52", 0.25, round(6 / 18, 6))]
    assert len(reports.composition(warehouse, 45001, lookback_days=7, top=1, as_of_ms=T)["hosts"]) == 1
    json.dumps([result, reports.sizes(warehouse), reports.overlap(warehouse, [45001, 45002])])  # what the CLI prints


TREND = SegmentSet([parse_segment({"id": 45010, "name": "trend", "lookback_days": 1,
                                   "rule": {"where": [{"field": "path", "op": "prefix", "value": "/t45"}]}})])


def test_trend_and_history_follow_the_builds(warehouse: Client) -> None:
    x1, x2, x3 = cookie(), cookie(), cookie()
    day0 = T - 40 * DAY  # the 29th of January: outside the windows of the other tests' builds
    # A 1-day window counts its build's day and the day before.
    insert(warehouse, [{"ts": day0 - DAY + HOUR, "cookie_id": x1, "path": "/t45"},
                       {"ts": day0 + DAY + HOUR, "cookie_id": x2, "path": "/t45/a"},
                       {"ts": day0 + DAY + 3 * HOUR, "cookie_id": x3, "path": "/t45/b"}])
    for at in (day0 + 12 * HOUR, day0 + DAY + 2 * HOUR, day0 + DAY + 12 * HOUR, day0 + 3 * DAY + HOUR):
        assert build(warehouse, TREND, as_of_ms=at).status == "succeeded"
    days = reports.trend(warehouse, 45010, days=4, as_of_ms=day0 + 3 * DAY + 2 * HOUR)
    assert [(d["day"], d["profiles"], d["entered"], d["exited"]) for d in days] == [
        ("2045-01-29", 1, 1, 0),  # x1
        ("2045-01-30", 2, 2, 1),  # x1 leaves at 02:00 as x2 enters; x3 joins at 12:00
        ("2045-01-31", None, 0, 0),  # no build
        ("2045-02-01", 0, 0, 2),  # everyone's visit is before the day before
    ]
    assert [reports.history_at(warehouse, 45010, day0 + h * HOUR) for h in (11, 13, 27, 37, 73)] == [0, 1, 1, 2, 0]


@pytest.mark.parametrize("days", [0, -5, 3651, 99_999_999])
def test_a_trend_covers_1_to_3650_days(warehouse: Client, days: int) -> None:
    with pytest.raises(InvalidRequest, match=f"1 to 3650 days, not {days}"):
        reports.trend(warehouse, 45010, days=days, as_of_ms=T)


def test_the_trend_counts_the_moves_of_succeeded_builds_only(warehouse: Client) -> None:
    # A build writes its deltas before it swaps its members in, and one whose process died stays
    # 'running' with its deltas: their moves are not the day's, whose size is the last success's.
    at = int(datetime(2046, 5, 10, tzinfo=UTC).timestamp() * 1000)
    segment = SegmentSet([parse_segment({"id": 45101, "name": "r46", "lookback_days": 1,
                                         "rule": {"where": [{"field": "path", "op": "prefix", "value": "/r46"}]}})])
    member = cookie()
    insert_events(warehouse, [{"ts": at - HOUR, "cookie_id": member, "path": "/r46"}], site="r46")
    built = build(warehouse, segment, as_of_ms=at)
    before = reports.trend(warehouse, 45101, days=1, as_of_ms=at)
    assert (before[0]["build_id"], before[0]["entered"], before[0]["exited"]) == (built.build_id, 1, 0)
    died = built.build_id + 1000
    warehouse.command(
        "INSERT INTO crumb.builds (build_id, started_at, finished_at, as_of, status, version) VALUES "
        "({b:UInt64}, now64(3), now64(3), fromUnixTimestamp64Milli({at:Int64}, 'UTC'), 'running', 1)",
        parameters={"b": died, "at": at + HOUR})
    warehouse.command(
        "INSERT INTO crumb.id_deltas VALUES ({b:UInt64}, fromUnixTimestamp64Milli({at:Int64}, 'UTC'), "
        "{c:String}, 'cookie', [], [45101])", parameters={"b": died, "at": at + HOUR, "c": member})
    assert reports.trend(warehouse, 45101, days=1, as_of_ms=at) == before
