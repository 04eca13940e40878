"""Event chunks → the text a browser sends and the collector stores: URLs, referrers, UTM, props.

Lookup tables are built once per World; a chunk's columns are numpy takes from them. A table that
rows index with -1 ("none") ends with the empty value, so -1 picks it without a branch per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from collector.enrich import parse_user_agent
from crumb.simulator.catalogue import (
    CURRENCY,
    ENGAGEMENT,
    EVENT_TYPES,
    EXTERNAL_REFERRERS,
    PLANS,
    PURCHASE,
    SIGNUP,
)
from crumb.simulator.model import World
from crumb.simulator.population import DEVICES, uuid_texts
from crumb.simulator.sampling import objects
from crumb.simulator.traffic import SAME_SITE, EventChunk, campaigns

CONVERSION_PATHS = {PURCHASE: "/checkout/complete", SIGNUP: "/signup/welcome"}
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
_EMPTY_PROPS: dict[str, str] = {}
_NO_CATEGORIES: list[str] = []


class Renderer:
    """Per-event text columns of a World's chunks; both the bulk loader and the HTTP sender use it."""

    def __init__(self, world: World) -> None:
        self.world = world
        pages = world.pages
        self.event_types = objects(EVENT_TYPES)
        self.site_names = objects([s.name for s in world.sites])
        self.hosts = objects([s.host for s in world.sites])
        self.checkout_paths = objects([CONVERSION_PATHS.get(k, "") for k in range(len(EVENT_TYPES))])
        checkout_urls = [[s.origin + path for path in self.checkout_paths] for s in world.sites]
        self.checkout_urls = np.array(checkout_urls, dtype=object)
        self.page_paths = pages.path
        self.page_urls = pages.url
        self.page_categories = objects(list(pages.categories) + [_NO_CATEGORIES])
        utm = campaigns(world)
        self.utm = [objects([tags[field] for tags in utm] + [""]) for field in range(len(UTM_FIELDS))]
        self.queries = [_query(tags) for tags in utm]
        self.external_referrers = objects(list(EXTERNAL_REFERRERS) + [""])
        self.external_hosts = objects([_host(url) for url in EXTERNAL_REFERRERS] + [""])
        agents = [parse_user_agent(d.user_agent) for d in DEVICES]  # once per distinct UA
        self.device_types = objects([a.device_type for a in agents])
        self.oses = objects([a.os for a in agents])
        self.browsers = objects([a.browser for a in agents])
        self.bot_flags = np.array([int(a.is_bot) for a in agents], dtype=np.uint8)

    def paths(self, chunk: EventChunk) -> list[str]:
        paths = self.page_paths[np.maximum(chunk.page, 0)]
        conversions = chunk.page < 0
        paths[conversions] = self.checkout_paths[chunk.kind[conversions]]
        return paths.tolist()

    def urls(self, chunk: EventChunk) -> list[str]:
        urls = self.page_urls[np.maximum(chunk.page, 0)]
        conversions = chunk.page < 0
        urls[conversions] = self.checkout_urls[chunk.site[conversions], chunk.kind[conversions]]
        tagged = np.flatnonzero(chunk.campaign >= 0)
        urls[tagged] = [url + "?" + self.queries[c] for url, c in zip(
            urls[tagged].tolist(), chunk.campaign[tagged].tolist(), strict=True)]
        return urls.tolist()

    def hosts_of(self, chunk: EventChunk) -> list[str]:
        return self.hosts[chunk.site].tolist()

    def referrer_hosts(self, chunk: EventChunk) -> list[str]:
        hosts = self.external_hosts[chunk.referrer]  # NO_REFERRER (-1) → ""
        same_site = chunk.referrer == SAME_SITE
        hosts[same_site] = self.hosts[chunk.site[same_site]]
        return hosts.tolist()

    def referrers(self, chunk: EventChunk) -> list[str]:
        """Full referrer URLs, as the browser sends them (the collector keeps only the host)."""
        referrers = self.external_referrers[chunk.referrer]
        same_site = chunk.referrer == SAME_SITE
        referrers[same_site] = self.page_urls[chunk.referrer_page[same_site]]
        return referrers.tolist()

    def utm_columns(self, chunk: EventChunk) -> list[list[str]]:
        return [values[chunk.campaign].tolist() for values in self.utm]

    def categories(self, chunk: EventChunk) -> list[list[str]]:
        return self.page_categories[chunk.page].tolist()  # conversions (-1) → no categories

    def props(self, chunk: EventChunk) -> list[dict[str, str]]:
        props: list[dict[str, str]] = [_EMPTY_PROPS] * len(chunk)
        engagements = np.flatnonzero(chunk.kind == ENGAGEMENT)
        viewed = uuid_texts(chunk.event_ids[chunk.pageview_row[engagements]])
        for row, pageview_id in zip(engagements.tolist(), viewed, strict=True):
            props[row] = {"pageview_id": pageview_id}
        for row in np.flatnonzero(chunk.kind == PURCHASE).tolist():
            props[row] = {"value": f"{chunk.value_cents[row] / 100:.2f}", "currency": CURRENCY}
        for row in np.flatnonzero(chunk.kind == SIGNUP).tolist():
            props[row] = {"plan": PLANS[chunk.plan[row]]}
        return props

    def agent_columns(self, chunk: EventChunk) -> tuple[list[Any], ...]:
        """device_type, os, browser, is_bot per event, as collector.enrich reads the User-Agent."""
        device = self.world.cookies.device[chunk.cookie]
        tables = (self.device_types, self.oses, self.browsers, self.bot_flags)
        return tuple(table[device].tolist() for table in tables)


def _query(tags: tuple[str, ...]) -> str:
    return "&".join(f"{name}={value}" for name, value in zip(UTM_FIELDS, tags, strict=True) if value)


def _host(url: str) -> str:
    return url.split("/")[2]

