"""The simulated world and its traffic: deterministic, realistic in shape, with planted signal."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from collector.categories import BUILTIN, ContentTaxonomy
from collector.enrich import parse_user_agent, referrer_host, scrub_url, split_url, truncate_ip
from crumb.simulator import SimulationSpec, World, read_ground_truth
from crumb.simulator.catalogue import ENGAGEMENT, PAGEVIEW, PURCHASE, SIGNUP, THEMES
from crumb.simulator.population import DEVICES
from crumb.simulator.render import Renderer
from crumb.simulator.sampling import StackedChoice
from crumb.simulator.traffic import EventChunk, chunk_bounds, iter_chunks

SHARED_TAXONOMY = Path(__file__).resolve().parents[3] / "shared" / "data" / "iab-content-taxonomy-3.1.tsv"
END = datetime(2026, 3, 1, tzinfo=UTC)
HEX_ID = re.compile(r"[0-9a-f]{32}")


def spec(**changes: Any) -> SimulationSpec:
    defaults = {"cookies": 4_000, "events": 100_000, "days": 14, "seed": 7, "end": END}
    return SimulationSpec(**{**defaults, **changes})


@dataclass(frozen=True)
class Traffic:
    """All of a world's chunks, concatenated (small worlds only)."""

    world: World
    chunks: list[EventChunk]

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(chunk, name) for chunk in self.chunks])

    def human_pageviews(self) -> np.ndarray:
        return (self.column("kind") == PAGEVIEW) & ~self.world.cookies.is_bot[self.column("cookie")]


def traffic_of(world: World, chunk_events: int = 20_000) -> Traffic:
    return Traffic(world, list(iter_chunks(world, chunk_events)))


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return traffic_of(World.build(spec()))


# ------------------------------------------------------------------------------ determinism


def test_the_same_seed_gives_the_same_world_and_traffic(traffic: Traffic) -> None:
    again = traffic_of(World.build(spec()))
    assert again.world.cookies.cookie_ids(0, 100) == traffic.world.cookies.cookie_ids(0, 100)
    assert [i.sites for i in again.world.interests] == [i.sites for i in traffic.world.interests]
    for name in ("cookie", "kind", "page", "ts_ms", "engaged_ms", "campaign", "referrer", "event_ids"):
        assert np.array_equal(again.column(name), traffic.column(name)), name


def test_another_seed_gives_other_traffic(traffic: Traffic) -> None:
    other = World.build(spec(seed=8))
    assert other.cookies.cookie_ids(0, 10) != traffic.world.cookies.cookie_ids(0, 10)
    assert not np.array_equal(other.cookies.events, traffic.world.cookies.events)


def test_the_ground_truth_file_is_deterministic(traffic: Traffic, tmp_path: Path) -> None:
    first = traffic.world.write_ground_truth(tmp_path / "a.jsonl")
    second = World.build(spec()).write_ground_truth(tmp_path / "b.jsonl")
    assert first.read_bytes() == second.read_bytes()


# -------------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("changes", [
    {"events": 10, "cookies": 20},  # fewer events than cookies
    {"sites": ("ok", "not ok!")},
    {"sites": ("a", "a")},
    {"bot_share": 1.5},
    {"gdpr_share": 0.7, "gpc_share": 0.5},
])
def test_a_spec_that_cannot_be_simulated_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        spec(**changes)


def test_more_interests_than_built_in_need_the_taxonomy_file() -> None:
    with pytest.raises(ValueError, match="taxonomy"):
        World.build(spec(interests=len(THEMES) + 1))


def test_the_full_taxonomy_adds_interests_from_its_tree() -> None:
    world = World.build(spec(interests=40, taxonomy_path=SHARED_TAXONOMY, cookies=200, events=2_000))
    taxonomy = ContentTaxonomy.load(SHARED_TAXONOMY)
    assert len(world.interests) == 40
    assert len({i.name for i in world.interests}) == 40
    assert all(c in taxonomy for i in world.interests for c in i.categories)


def test_built_in_interests_use_built_in_categories() -> None:
    assert all(c in BUILTIN for theme in THEMES for c in theme.categories)
    if SHARED_TAXONOMY.exists():
        taxonomy = ContentTaxonomy.load(SHARED_TAXONOMY)
        assert all(c in taxonomy for theme in THEMES for c in theme.categories)


def test_stacked_choice_draws_from_each_rows_own_distribution() -> None:
    choice = StackedChoice([np.array([1.0, 3.0]), np.array([5.0]), np.array([0.0, 1.0, 1.0])])
    which = np.repeat([0, 1, 2], 20_000)
    drawn = choice.draw(which, np.random.default_rng(1))
    assert set(drawn[which == 0].tolist()) == {0, 1}
    assert (drawn[which == 0] == 1).mean() == pytest.approx(0.75, abs=0.02)
    assert set(drawn[which == 1].tolist()) == {2}
    assert set(drawn[which == 2].tolist()) == {4, 5}  # the zero-weight item is never drawn


# ----------------------------------------------------------------------------- event volume


def test_the_event_target_is_met_exactly_and_every_cookie_sends(traffic: Traffic) -> None:
    assert sum(len(chunk) for chunk in traffic.chunks) == 100_000
    per_cookie = np.bincount(traffic.column("cookie"), minlength=4_000)
    assert np.array_equal(per_cookie, traffic.world.cookies.events)
    assert traffic.world.cookies.events.min() >= 1


def test_events_per_cookie_sets_the_volume_without_a_target() -> None:
    assert SimulationSpec(cookies=100, events_per_cookie=12.5, end=END).total_events == 1_250


def test_chunks_hold_whole_cookies_and_stay_near_their_size(traffic: Traffic) -> None:
    events = traffic.world.cookies.events
    bounds = chunk_bounds(events, 20_000)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(events)
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:], strict=False))
    assert [c.first_cookie for c in traffic.chunks] == [start for start, _ in bounds]
    assert all(len(chunk) <= 20_000 + events.max() for chunk in traffic.chunks)
    assert len(traffic.chunks) == pytest.approx(100_000 / 20_000, abs=1)


def test_chunk_memory_is_bounded_by_the_chunk_not_the_run() -> None:
    world = World.build(spec(cookies=20_000, events=1_000_000))
    sizes = [sum(a.nbytes for a in vars(chunk).values() if isinstance(a, np.ndarray))
             for chunk in iter_chunks(world, 50_000)]
    assert len(sizes) >= 19
    assert max(sizes) < 50 * 1024 * 1024 * 1.2  # ~50 bytes an event, whatever the run's size


# ------------------------------------------------------------------------------ who browses


def test_bots_are_about_their_share_and_use_bot_user_agents(traffic: Traffic) -> None:
    cookies = traffic.world.cookies
    assert cookies.is_bot.mean() == pytest.approx(0.03, abs=0.01)
    parsed = [parse_user_agent(DEVICES[d].user_agent).is_bot for d in cookies.device.tolist()]
    assert np.array_equal(np.array(parsed), cookies.is_bot)
    assert not cookies.interests[cookies.is_bot].max(initial=-1) >= 0
    assert not cookies.converted[cookies.is_bot].any()


def test_the_device_mix_is_mostly_mobile_with_desktop_and_some_tablets(traffic: Traffic) -> None:
    humans = traffic.world.cookies.device[~traffic.world.cookies.is_bot].tolist()
    types = [parse_user_agent(DEVICES[d].user_agent).device_type for d in humans]
    share = {kind: types.count(kind) / len(types) for kind in ("mobile", "desktop", "tablet")}
    assert share["mobile"] > share["desktop"] > share["tablet"] > 0.03
    assert sum(share.values()) == pytest.approx(1.0)


def test_about_forty_percent_of_humans_carry_a_first_party_id(traffic: Traffic) -> None:
    cookies = traffic.world.cookies
    assert cookies.has_fp[~cookies.is_bot].mean() == pytest.approx(0.4, abs=0.03)
    assert not cookies.has_fp[cookies.is_bot].any()
    ids = cookies.first_party_ids(0, len(cookies))
    assert all(HEX_ID.fullmatch(i) for i in ids if i) and ids.count("") == (~cookies.has_fp).sum()


def test_cookie_ids_are_128_bit_hex_and_distinct(traffic: Traffic) -> None:
    ids = traffic.world.cookies.cookie_ids(0, len(traffic.world.cookies))
    assert all(HEX_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_each_human_holds_one_to_three_distinct_interests(traffic: Traffic) -> None:
    cookies = traffic.world.cookies
    held = cookies.interests[~cookies.is_bot]
    counts = (held >= 0).sum(axis=1)
    assert set(counts.tolist()) == {1, 2, 3}
    assert all(len(set(row[row >= 0].tolist())) == len(row[row >= 0]) for row in held[:500])


# ------------------------------------------------------------------------------ page traffic


def test_page_popularity_is_zipf_skewed(traffic: Traffic) -> None:
    pages = traffic.column("page")[traffic.human_pageviews()]
    views = np.bincount(pages, minlength=len(traffic.world.pages.url))
    ordered = np.sort(views)[::-1]
    top_share = ordered[: len(ordered) // 10].sum() / ordered.sum()
    assert top_share > 0.5  # the top tenth of pages take most views
    assert ordered[0] > 20 * np.median(ordered)


def test_interests_leave_a_clear_signal_in_categories_hosts_and_paths(traffic: Traffic) -> None:
    world = traffic.world
    for name in ("soccer", "electronics", "investing"):
        k = world.interest_index(name)
        interest = world.interests[k]
        rows = traffic.human_pageviews()
        cookie, page = traffic.column("cookie")[rows], traffic.column("page")[rows]
        holders = (world.cookies.interests[cookie] == k).any(axis=1)
        tagged = np.array([interest.categories[0] in tags for tags in world.pages.categories[page]])
        in_section = np.array([p.startswith(f"/{interest.section}/") for p in world.pages.path[page]])
        on_home_site = world.pages.site[page] == interest.sites[0]
        assert tagged[holders].mean() > 5 * tagged[~holders].mean(), name
        assert in_section[holders].mean() > 5 * in_section[~holders].mean(), name
        assert on_home_site[holders].mean() > 1.5 * on_home_site[~holders].mean(), name
        assert 0.1 < tagged[holders].mean() < 0.9, name  # clear, but noisy


def test_conversions_depend_on_interests(traffic: Traffic) -> None:
    world, cookies = traffic.world, traffic.world.cookies
    planted = [k for k, i in enumerate(world.interests) if i.conversion_rate >= 0.2]
    has_planted = np.isin(cookies.interests, planted).any(axis=1) & ~cookies.is_bot
    others = ~has_planted & ~cookies.is_bot
    assert cookies.converted[has_planted].mean() > 8 * cookies.converted[others].mean()
    investing = (cookies.interests == world.interest_index("investing")).any(axis=1)
    electronics = (cookies.interests == world.interest_index("electronics")).any(axis=1)
    assert (cookies.conversion[investing & ~electronics & cookies.converted] == SIGNUP).mean() > 0.8
    assert (cookies.conversion[electronics & ~investing & cookies.converted] == PURCHASE).mean() > 0.8


def test_a_converter_sends_one_conversion_that_closes_a_session(traffic: Traffic) -> None:
    kind, cookie, session = traffic.column("kind"), traffic.column("cookie"), traffic.column("session")
    conversions = np.flatnonzero(kind >= PURCHASE)
    converted = traffic.world.cookies.converted
    assert np.array_equal(np.sort(cookie[conversions]), np.flatnonzero(converted))
    assert np.array_equal(kind[conversions], traffic.world.cookies.conversion[cookie[conversions]])
    before = conversions - 1
    assert (cookie[before] == cookie[conversions]).all() and (session[before] == session[conversions]).all()


def test_engagements_follow_their_page_view(traffic: Traffic) -> None:
    kind, page, ts = traffic.column("kind"), traffic.column("page"), traffic.column("ts_ms")
    engaged = traffic.column("engaged_ms")
    rows = np.flatnonzero(kind == ENGAGEMENT)
    assert 0.1 < len(rows) / (kind == PAGEVIEW).sum() < 0.5
    assert (kind[rows - 1] == PAGEVIEW).all()
    assert (page[rows] == page[rows - 1]).all()
    assert (engaged[rows] > 0).all() and (engaged[rows] <= ts[rows] - ts[rows - 1]).all()
    assert (engaged[kind != ENGAGEMENT] == 0).all()


def test_sessions_are_a_few_events_on_one_site_inside_the_window(traffic: Traffic) -> None:
    chunk = traffic.chunks[0]
    opens = np.r_[True, chunk.session[1:] != chunk.session[:-1]]
    human_session = ~traffic.world.cookies.is_bot[chunk.cookie[opens]]
    assert 2 < np.bincount(chunk.session)[human_session].mean() < 6
    same_session = chunk.session[1:] == chunk.session[:-1]
    assert (chunk.site[1:][same_session] == chunk.site[:-1][same_session]).all()
    assert (np.diff(chunk.ts_ms)[same_session] >= 0).all()
    ts = traffic.column("ts_ms")
    assert ts.min() >= traffic.world.start_ms and ts.max() < traffic.world.end_ms
    days = (ts - traffic.world.start_ms) // 86_400_000
    assert len(np.unique(days)) == 14


def test_sessions_start_more_in_the_evening_than_at_night(traffic: Traffic) -> None:
    chunk = traffic.chunks[0]
    opens = np.r_[True, chunk.session[1:] != chunk.session[:-1]]
    hours = np.bincount((chunk.ts_ms[opens] // 3_600_000) % 24, minlength=24)
    assert hours[19:21].sum() > 4 * hours[3:5].sum()


def test_arrivals_mix_search_social_campaigns_and_direct(traffic: Traffic) -> None:
    renderer = Renderer(traffic.world)
    chunk = traffic.chunks[0]
    landing = np.flatnonzero(np.r_[True, chunk.session[1:] != chunk.session[:-1]])
    hosts = np.array(renderer.referrer_hosts(chunk))[landing]
    humans = ~traffic.world.cookies.is_bot[chunk.cookie[landing]]
    for host, low, high in (("www.google.com", 0.25, 0.45), ("", 0.3, 0.5), ("www.facebook.com", 0.05, 0.2)):
        assert low < (hosts[humans] == host).mean() < high, host
    campaigns = np.flatnonzero(chunk.campaign >= 0)
    assert set(chunk.kind[campaigns].tolist()) <= {PAGEVIEW, ENGAGEMENT}


# --------------------------------------------------------------- what the collector would store


def test_rendered_fields_match_the_collectors_own_enrichment(traffic: Traffic) -> None:
    """Bulk rows must equal what collector.enrich derives from the same browser request."""
    renderer = Renderer(traffic.world)
    chunk = traffic.chunks[0]
    urls, referrers = renderer.urls(chunk), renderer.referrers(chunk)
    hosts, paths = renderer.hosts_of(chunk), renderer.paths(chunk)
    referrer_hosts = renderer.referrer_hosts(chunk)
    utm = list(zip(*renderer.utm_columns(chunk), strict=True))
    for row in range(0, len(chunk), 7):
        parts = split_url(urls[row])
        assert scrub_url(urls[row]) == urls[row]
        assert (parts.host, parts.path) == (hosts[row], paths[row])
        assert (parts.utm_source, parts.utm_medium, parts.utm_campaign) == utm[row][:3]
        assert (parts.utm_term, parts.utm_content) == utm[row][3:]
        assert referrer_host(referrers[row]) == referrer_hosts[row]
    cookies = traffic.world.cookies
    assert [truncate_ip(ip) for ip in cookies.client_ips(0, 500)] == cookies.stored_ips(0, 500)
    assert any(":" in ip for ip in cookies.client_ips(0, 500))


# ------------------------------------------------------------------------------ ground truth


def test_ground_truth_lists_every_cookie_with_its_latent_state(traffic: Traffic, tmp_path: Path) -> None:
    world = traffic.world
    truth = read_ground_truth(world.write_ground_truth(tmp_path / "truth.jsonl"))
    assert truth.world["seed"] == 7 and len(truth.world["interests"]) == len(world.interests)
    assert len(truth.cookies) == len(world.cookies)
    assert [c.cookie_id for c in truth.cookies] == world.cookies.cookie_ids(0, len(world.cookies))
    assert sum(c.is_bot for c in truth.cookies) == world.cookies.is_bot.sum()
    assert sum(c.converted for c in truth.cookies) == world.cookies.converted.sum()
    assert sum(c.events for c in truth.cookies) == 100_000
    first = truth.cookies[0]
    assert first.interests == tuple(world.interests[k].name for k in world.cookies.interests[0] if k >= 0)
    soccer = (world.cookies.interests == world.interest_index("soccer")).any(axis=1)
    assert len(truth.with_interest("soccer")) == soccer.sum()


def test_ground_truth_records_the_ids_a_collector_assigned(traffic: Traffic, tmp_path: Path) -> None:
    world = traffic.world
    assigned = {0: "a" * 32, 2: "b" * 32}
    truth = read_ground_truth(world.write_ground_truth(tmp_path / "http.jsonl", assigned))
    assert [c.cookie_id for c in truth.cookies[:3]] == ["a" * 32, "", "b" * 32]
    assert truth.cookies[1].sim_id == world.cookies.cookie_ids(1, 2)[0]
