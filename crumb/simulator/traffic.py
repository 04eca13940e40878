"""Browsing over a World, generated in chunks of whole cookies with numpy (no Python loop per event).

Each cookie's events form sessions on one site: a landing page view (from search, social, a UTM
campaign or direct), a few more page views, engagement beacons (visible time) after some of them,
and for converters a `purchase` or `signup` closing their last session. Human sessions mostly
follow one of the cookie's latent interests (its section and categories); bots crawl uniformly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from crumb.simulator.catalogue import (
    ARRIVAL_WEIGHTS,
    CAMPAIGN,
    CAMPAIGN_TEMPLATES,
    DIRECT,
    ENGAGEMENT,
    EXTERNAL_REFERRERS,
    PAGEVIEW,
    PLAN_WEIGHTS,
    SEARCH,
    SEARCH_REFERRERS,
    SEARCH_WEIGHTS,
    SOCIAL,
    SOCIAL_WEIGHTS,
)
from crumb.simulator.model import World
from crumb.simulator.sampling import choose_rows

CHUNK_EVENTS = 150_000  # per insert: a 10M-event bulk load stays well under 1 GB (chdb included)
NO_REFERRER, SAME_SITE = -1, -2  # referrer codes besides an index into EXTERNAL_REFERRERS

_NEW_SESSION = {False: 0.3, True: 1 / 15}  # chance an event opens a session: humans, bots
_ENGAGEMENT_CHANCE = 0.45  # an event reports the visible time of the view before it (not twice in a row)
_STAY_IN_SECTION = 0.8  # page views of an interest session that stay in the interest's section
_HOME_SITE = 0.7  # interest sessions on the interest's first site when it has two
# Which of its interests a session follows, by how many the cookie holds (cumulative odds): the
# first leads, 0.5 / 0.3 / 0.2 with three.
_INTEREST_PICK = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.625, 1.0, 1.0], [0.5, 0.8, 1.0]])
_CAMPAIGN_REFERRER = np.array([EXTERNAL_REFERRERS.index(t.referrer) if t.referrer else NO_REFERRER
                               for t in CAMPAIGN_TEMPLATES])


@dataclass(frozen=True)
class EventChunk:
    """Events of cookies [first_cookie, stop_cookie), grouped by cookie and session, in time order."""

    first_cookie: int
    stop_cookie: int
    cookie: np.ndarray  # int64, global cookie index
    session: np.ndarray  # int64, chunk-local session index
    kind: np.ndarray  # uint8: PAGEVIEW, ENGAGEMENT, PURCHASE, SIGNUP
    site: np.ndarray  # int16
    page: np.ndarray  # int32 index into World.pages; -1 for conversions (their checkout page)
    campaign: np.ndarray  # int32 index into campaigns(world) when the URL carries UTM tags, else -1
    referrer: np.ndarray  # int16: EXTERNAL_REFERRERS index, NO_REFERRER or SAME_SITE
    referrer_page: np.ndarray  # int32 page the browser came from when SAME_SITE, else -1
    ts_ms: np.ndarray  # int64
    engaged_ms: np.ndarray  # int64, engagement beacons only
    event_ids: np.ndarray  # (n, 16) uint8, UUID version 4 bits
    pageview_row: np.ndarray  # int64 chunk row of the page view an engagement reports on, else -1
    value_cents: np.ndarray  # int64 purchase value
    plan: np.ndarray  # int8 index into PLANS (signups)

    def __len__(self) -> int:
        return len(self.kind)


def chunk_bounds(events: np.ndarray, chunk_events: int) -> list[tuple[int, int]]:
    """Cookie ranges of about `chunk_events` events each; a chunk never splits a cookie."""
    ends = np.cumsum(events)
    cuts = np.searchsorted(ends, np.arange(chunk_events, int(ends[-1]), chunk_events), side="left") + 1
    edges = np.unique(np.concatenate([[0], cuts, [len(events)]]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def iter_chunks(world: World, chunk_events: int = CHUNK_EVENTS) -> Iterator[EventChunk]:
    for number, (first, stop) in enumerate(chunk_bounds(world.cookies.events, chunk_events)):
        yield generate_chunk(world, first, stop, np.random.default_rng([world.spec.seed, 2, number]))


def campaigns(world: World) -> list[tuple[str, str, str, str, str]]:
    """(utm_source, utm_medium, utm_campaign, utm_term, utm_content) by campaign index:
    every template for every interest, then for the untargeted "brand" topic."""
    topics = [i.name for i in world.interests] + ["brand"]
    return [(t.source, t.medium, t.name.format(topic=topic), topic if t.medium == "cpc" else "", t.content)
            for topic in topics for t in CAMPAIGN_TEMPLATES]


def generate_chunk(world: World, first: int, stop: int, rng: np.random.Generator) -> EventChunk:
    rows = _Rows.lay_out(world, first, stop, rng)
    sessions = _Sessions.draw(world, rows, rng)
    kind = _kinds(world, rows, rng)
    page = _pages(world, rows, sessions, kind, rng)
    campaign, referrer, referrer_page = _arrivals(rows, sessions, kind, page)
    ts_ms, engaged_ms = _times(world, rows, sessions, kind, rng)
    return EventChunk(
        first_cookie=first, stop_cookie=stop, cookie=rows.cookie, session=rows.session, kind=kind,
        site=sessions.site[rows.session], page=page, campaign=campaign, referrer=referrer,
        referrer_page=referrer_page, ts_ms=ts_ms, engaged_ms=engaged_ms,
        event_ids=_uuid4s(len(kind), rng),
        pageview_row=np.where(kind == ENGAGEMENT, np.arange(len(kind)) - 1, -1),
        value_cents=np.round(rng.lognormal(np.log(6000), 0.8, len(kind))).astype(np.int64),
        plan=choose_rows(np.asarray(PLAN_WEIGHTS), len(kind), rng).astype(np.int8),
    )


@dataclass(frozen=True)
class _Rows:
    cookie: np.ndarray
    is_bot: np.ndarray
    opens_session: np.ndarray
    session: np.ndarray
    closes_cookie: np.ndarray

    @classmethod
    def lay_out(cls, world: World, first: int, stop: int, rng: np.random.Generator) -> _Rows:
        counts = world.cookies.events[first:stop]
        cookie = np.repeat(np.arange(first, stop), counts)
        starts = np.cumsum(counts) - counts
        position = np.arange(len(cookie)) - np.repeat(starts, counts)
        is_bot = world.cookies.is_bot[cookie]
        chance = np.where(is_bot, _NEW_SESSION[True], _NEW_SESSION[False])
        opens = (position == 0) | (rng.random(len(cookie)) < chance)
        closes_cookie = np.zeros(len(cookie), dtype=bool)
        closes_cookie[starts + counts - 1] = True
        opens[closes_cookie & world.cookies.converted[cookie]] = False  # the conversion ends a session
        return cls(cookie, is_bot, opens, np.cumsum(opens) - 1, closes_cookie)


@dataclass(frozen=True)
class _Sessions:
    cookie: np.ndarray
    interest: np.ndarray  # the latent interest the session follows, -1 for none
    site: np.ndarray
    arrival: np.ndarray  # DIRECT, SEARCH, SOCIAL or CAMPAIGN
    campaign: np.ndarray  # -1 unless arrival is CAMPAIGN
    referrer: np.ndarray

    @classmethod
    def draw(cls, world: World, rows: _Rows, rng: np.random.Generator) -> _Sessions:
        cookie = rows.cookie[rows.opens_session]
        is_bot = world.cookies.is_bot[cookie]
        interest = _session_interests(world, cookie, is_bot, rng)
        arrival = np.where(is_bot, DIRECT, choose_rows(np.asarray(ARRIVAL_WEIGHTS), len(cookie), rng))
        campaign = _session_campaigns(world, interest, arrival, rng)
        return cls(cookie, interest, _session_sites(world, interest, is_bot, rng), arrival, campaign,
                   _session_referrers(arrival, campaign, rng))


def _session_interests(world: World, cookie: np.ndarray, is_bot: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    held = world.cookies.interests[cookie]
    count = (held >= 0).sum(axis=1)
    slot = (rng.random(len(cookie))[:, None] > _INTEREST_PICK[count]).sum(axis=1)
    chosen = held[np.arange(len(cookie)), np.minimum(slot, 2)]
    follows = ~is_bot & (count > 0) & (rng.random(len(cookie)) < world.spec.interest_focus)
    return np.where(follows, chosen, -1)


def _session_sites(world: World, interest: np.ndarray, is_bot: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    homes = np.array([i.sites[0] for i in world.interests] + [0])[interest]
    seconds = np.array([i.sites[-1] for i in world.interests] + [0])[interest]
    on_interest = np.where(rng.random(len(interest)) < _HOME_SITE, homes, seconds)
    sites = len(world.sites)
    anywhere = choose_rows(1.0 / np.arange(1, sites + 1) ** 0.5, len(interest), rng)  # some sites are bigger
    crawled = rng.integers(0, sites, len(interest))
    return np.where(interest >= 0, on_interest, np.where(is_bot, crawled, anywhere)).astype(np.int16)


def _session_campaigns(world: World, interest: np.ndarray, arrival: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    topic = np.where(interest >= 0, interest, len(world.interests))
    template = rng.integers(0, len(CAMPAIGN_TEMPLATES), len(interest))
    return np.where(arrival == CAMPAIGN, topic * len(CAMPAIGN_TEMPLATES) + template, -1)


def _session_referrers(arrival: np.ndarray, campaign: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    search = choose_rows(np.asarray(SEARCH_WEIGHTS), len(arrival), rng)
    social = len(SEARCH_REFERRERS) + choose_rows(np.asarray(SOCIAL_WEIGHTS), len(arrival), rng)
    from_campaign = _CAMPAIGN_REFERRER[np.maximum(campaign, 0) % len(CAMPAIGN_TEMPLATES)]
    referrer = np.full(len(arrival), NO_REFERRER)
    referrer = np.where(arrival == SEARCH, search, referrer)
    referrer = np.where(arrival == SOCIAL, social, referrer)
    return np.where(arrival == CAMPAIGN, from_campaign, referrer).astype(np.int16)


def _kinds(world: World, rows: _Rows, rng: np.random.Generator) -> np.ndarray:
    """Page views; an engagement right after some (never two in a row); conversions last."""
    flagged = (rng.random(len(rows.cookie)) < _ENGAGEMENT_CHANCE) & ~rows.is_bot & ~rows.opens_session
    after_flagged = np.concatenate([[False], flagged[:-1]])
    kind = np.where(flagged & ~after_flagged, ENGAGEMENT, PAGEVIEW).astype(np.uint8)
    conversion = world.cookies.conversion[rows.cookie]
    converts = rows.closes_cookie & (conversion >= 0)
    kind[converts] = conversion[converts]
    return kind


def _pages(world: World, rows: _Rows, sessions: _Sessions, kind: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    pages = world.pages
    site = sessions.site[rows.session]
    interest = sessions.interest[rows.session]
    noise_section = pages.site_section_ids[pages.site_sections.draw(site, rng)]
    focus_section = pages.section_of[site, np.maximum(interest, 0)]
    stays = (interest >= 0) & (rng.random(len(site)) < _STAY_IN_SECTION)
    page = pages.by_popularity.draw(np.where(stays, focus_section, noise_section), rng)
    crawled = pages.site_first_page[site] + (rng.random(len(site)) * pages.site_page_count[site]).astype(int)
    page = np.where(rows.is_bot, crawled, page).astype(np.int32)
    engagement = np.flatnonzero(kind == ENGAGEMENT)
    page[engagement] = page[engagement - 1]  # the beacon reports on the page view just before it
    page[kind > ENGAGEMENT] = -1
    return page


def _arrivals(rows: _Rows, sessions: _Sessions, kind: np.ndarray,
              page: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UTM campaign and referrer of each event: landing pages from outside, the rest from the site."""
    landing = rows.opens_session
    campaign = np.where(landing, sessions.campaign[rows.session], -1).astype(np.int32)
    referrer = np.where(landing, sessions.referrer[rows.session], SAME_SITE).astype(np.int16)
    previous_page = np.concatenate([[-1], page[:-1]])
    referrer_page = np.where(landing, -1, previous_page).astype(np.int32)
    engagement = np.flatnonzero(kind == ENGAGEMENT)  # same page as its view: same URL and referrer
    for column in (campaign, referrer, referrer_page):
        column[engagement] = column[engagement - 1]
    return campaign, referrer, referrer_page


def _times(world: World, rows: _Rows, sessions: _Sessions, kind: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = len(kind)
    gap = np.clip(rng.lognormal(np.log(25_000), 0.9, n), 1_500, 1_800_000).astype(np.int64)
    gap = np.where(rows.is_bot, rng.integers(500, 4_000, n), gap)
    gap[rows.opens_session] = 0
    engaged = np.where(kind == ENGAGEMENT, (gap * rng.uniform(0.5, 1.0, n)).astype(np.int64), 0)
    elapsed = np.cumsum(gap)
    offset = elapsed - elapsed[np.flatnonzero(rows.opens_session)][rows.session]
    closes_session = np.concatenate([rows.opens_session[1:], [True]])
    duration = offset[closes_session]  # offsets grow within a session: its last one is its length
    start = _session_starts(world, sessions.cookie, duration, rng)
    return start[rows.session] + offset, engaged


def _session_starts(world: World, cookie: np.ndarray, duration: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Diurnal start times, in order within each cookie, every session over by the end of the window."""
    start = world.clock.draw(len(cookie), rng)
    start = start[np.lexsort((start, cookie))]  # sessions are contiguous per cookie: sort within each
    return np.minimum(start, world.end_ms - 1 - duration)


def _uuid4s(n: int, rng: np.random.Generator) -> np.ndarray:
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw
