"""Bulk mode against the real (chdb) warehouse: rows look like the collector's, truth joins to them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from crumb.simulator import GroundTruth, SimulationResult, SimulationSpec, load_bulk, read_ground_truth
from crumb.simulator.catalogue import PLANS

EVENTS, COOKIES = 20_000, 1_000


@dataclass(frozen=True)
class Loaded:
    spec: SimulationSpec
    result: SimulationResult
    truth: GroundTruth
    client: Client

    def rows(self, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
        """`sql` over this load's rows only: `{where}` becomes the site filter (the warehouse is shared)."""
        query = sql.replace("{where}", "site IN {sites:Array(String)}")
        parameters = {"sites": list(self.spec.sites), **parameters}
        return [tuple(row) for row in self.client.query(query, parameters=parameters).result_rows]

    def one(self, sql: str, **parameters: Any) -> Any:
        return self.rows(sql, **parameters)[0][0]


@pytest.fixture(scope="module")
def loaded(warehouse: Client, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    prefix = f"sim{uuid.uuid4().hex[:8]}"
    spec = SimulationSpec(
        cookies=COOKIES, events=EVENTS, days=10, seed=11, end=datetime.now(UTC),  # inside the events TTL
        sites=tuple(f"{prefix}-{kind}" for kind in ("news", "shop", "travel", "sports")),
    )
    truth_path = tmp_path_factory.mktemp("simulator") / "truth.jsonl"
    result = load_bulk(warehouse, spec, truth_path=truth_path, chunk_events=6_000)
    return Loaded(spec, result, read_ground_truth(truth_path), warehouse)


def test_the_result_reports_what_was_loaded(loaded: Loaded) -> None:
    result = loaded.result
    assert (result.mode, result.events, result.cookies, result.sites) == ("bulk", EVENTS, COOKIES, 4)
    assert result.bots == sum(c.is_bot for c in loaded.truth.cookies) > 0
    assert isinstance(result.truth_path, Path) and result.truth_path.exists()
    assert result.events_per_s > 0


def test_every_event_lands_once_under_the_truths_cookie_ids(loaded: Loaded) -> None:
    assert loaded.one("SELECT count() FROM crumb.events WHERE {where}") == EVENTS
    assert loaded.one("SELECT uniqExact(event_id) FROM crumb.events WHERE {where}") == EVENTS
    stored = {row[0] for row in loaded.rows("SELECT DISTINCT cookie_id FROM crumb.events WHERE {where}")}
    assert stored == {c.cookie_id for c in loaded.truth.cookies}
    per_cookie = dict(loaded.rows("SELECT cookie_id, count() FROM crumb.events WHERE {where} GROUP BY 1"))
    assert all(per_cookie[c.cookie_id] == c.events for c in loaded.truth.cookies)


def test_columns_are_filled_as_the_collector_fills_them(loaded: Loaded) -> None:
    bad = loaded.one("""
        SELECT countIf(
            host != site || '.example' OR NOT startsWith(url, 'https://' || host || path)
            OR source != 'sim' OR received_at != ts OR NOT match(ip, '(\\.0|::)$')
            OR (utm_source != '') != (position(url, 'utm_source=') > 0)
            OR os = '' OR browser = '' OR device_type = '')
        FROM crumb.events WHERE {where}""")
    assert bad == 0
    types = dict(loaded.rows("SELECT type, count() FROM crumb.events WHERE {where} GROUP BY type"))
    assert set(types) == {"pageview", "engagement", "purchase", "signup"}
    assert loaded.one("SELECT count() FROM crumb.events WHERE {where} AND notEmpty(categories)") > EVENTS / 2
    referrers = {r[0] for r in loaded.rows("SELECT DISTINCT referrer_host FROM crumb.events WHERE {where}")}
    assert {"", "www.google.com", "www.facebook.com"} <= referrers


def test_bots_are_flagged_like_the_collector_flags_them(loaded: Loaded) -> None:
    bots = {c.cookie_id for c in loaded.truth.cookies if c.is_bot}
    flagged = loaded.rows("SELECT DISTINCT cookie_id, device_type FROM crumb.events WHERE {where} AND is_bot")
    assert {cookie for cookie, _ in flagged} == bots
    assert {device for _, device in flagged} == {"bot"}
    humans_as_bots = "SELECT countIf(device_type = 'bot') FROM crumb.events WHERE {where} AND NOT is_bot"
    assert loaded.one(humans_as_bots) == 0


def test_a_few_cookies_come_under_gdpr_without_profiling_consent(loaded: Loaded) -> None:
    rows = loaded.rows("""
        SELECT gdpr_applies, toString(consent_purposes), vendor_consent, can_profile, can_share,
               uniqExact(cookie_id)
        FROM crumb.events WHERE {where} GROUP BY ALL""")
    by_class = {row[:5]: row[5] for row in rows}
    no_profiling = by_class.pop((1, "[1,7,8,9,10]", 1, 0, 1))
    assert no_profiling == sum(c.consent == "gdpr_no_profile" for c in loaded.truth.cookies)
    assert 0.02 < no_profiling / COOKIES < 0.09
    assert {key[0] for key in by_class} == {0}  # everyone else: GDPR does not apply
    assert loaded.one("SELECT count() FROM crumb.events WHERE {where} AND gpc = 1 AND can_share = 1") == 0


def test_first_party_ids_appear_on_their_cookies_events(loaded: Loaded) -> None:
    pairs = set(loaded.rows("SELECT DISTINCT cookie_id, fp_id FROM crumb.events WHERE {where}"))
    assert pairs == {(c.cookie_id, c.fp_id) for c in loaded.truth.cookies}


def test_each_converter_has_one_conversion_event_with_props(loaded: Loaded) -> None:
    rows = loaded.rows("""
        SELECT cookie_id, type, props FROM crumb.events WHERE {where} AND type IN ('purchase', 'signup')""")
    converters = sorted(c.cookie_id for c in loaded.truth.cookies if c.converted)
    assert sorted(cookie for cookie, _, _ in rows) == converters
    conversion = {c.cookie_id: c.conversion for c in loaded.truth.cookies}
    for cookie, kind, props in rows:
        assert kind == conversion[cookie]
        if kind == "purchase":
            assert float(props["value"]) > 0 and props["currency"] == "EUR"
        else:
            assert props["plan"] in PLANS


def test_engagements_point_at_their_page_view(loaded: Loaded) -> None:
    orphans = loaded.one("""
        SELECT count() FROM crumb.events AS e
        LEFT JOIN (
            SELECT toString(event_id) AS id, url FROM crumb.events WHERE {where} AND type = 'pageview'
        ) AS v ON e.props['pageview_id'] = v.id
        WHERE e.site IN {sites:Array(String)} AND e.type = 'engagement' AND (v.id = '' OR v.url != e.url)""")
    assert orphans == 0


def test_interest_holders_read_their_interests_pages(loaded: Loaded) -> None:
    soccer = next(i for i in loaded.truth.world["interests"] if i["name"] == "soccer")
    holders = [c.cookie_id for c in loaded.truth.with_interest("soccer")]
    share_in, share_out = loaded.rows("""
        SELECT avgIf(has(categories, {leaf:String}), cookie_id IN {holders:Array(String)}),
               avgIf(has(categories, {leaf:String}), cookie_id NOT IN {holders:Array(String)})
        FROM crumb.events WHERE {where} AND type = 'pageview' AND is_bot = 0""",
        leaf=soccer["categories"][0], holders=holders)[0]
    assert share_in > 5 * share_out
