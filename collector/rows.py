"""Enrichment: a validated hit → one `crumb.events` row. Runs in the writer, off the request path.

Every step is cached where inputs repeat (pages, user agents, referrers, per-site category
rules), so a batch pays for each distinct value once, and a row is glued together from cached
pieces.
"""

from __future__ import annotations

from functools import lru_cache

from collector.categories import CategoryRules, ContentTaxonomy, clean_categories
from collector.enrich import parse_user_agent, referrer_host, scrub_props, scrubbed_url_parts
from collector.hits import Hit
from collector.payload import Row

# A site's pages, in the encoder process: ~720 B an entry with 30-character URLs (measured), so
# ~24 MB full; at most ~70 MB if every cached URL had the longest cached length.
PAGE_CACHE_SIZE = 32_768
MAX_CACHED_URL_CHARS = 512  # longer URLs are rare: enriched uncached, so hostile ones pin no memory


class Enricher:
    def __init__(self, rules: CategoryRules, taxonomy: ContentTaxonomy | None) -> None:
        self._rules = rules
        self._taxonomy = taxonomy
        # Per instance, like the rules' own cache: a new config starts afresh.
        self._page = lru_cache(maxsize=PAGE_CACHE_SIZE)(self._page_columns)

    def __reduce__(self) -> tuple[type[Enricher], tuple[CategoryRules, ContentTaxonomy | None]]:
        return Enricher, (self._rules, self._taxonomy)  # for the encoder process: its caches start empty

    def row(self, hit: Hit | tuple[object, ...]) -> Row:
        """The row in collector.schema.EVENT_COLUMNS order, with JSON-safe values (for the spool).

        Arrays are tuples and props (key, value) pairs, so a row is a tuple of plain values that the
        garbage collector stops tracking at its first pass. Rows with lists and dicts lived on
        through every collection of the buffer's life: rescanning them cost the drain thread as
        much as the enrichment, in pauses of up to tens of milliseconds that stalled the event loop."""
        (event_id, ts_ms, received_ms, site, type_, cookie_id, fp_id, url, referrer, categories, engaged_ms,
         props, ip, user_agent, consent, source) = hit
        page = self._page if len(url) <= MAX_CACHED_URL_CHARS else self._page_columns
        url_head, url_tail = page(site, url, categories)
        return (
            (event_id, ts_ms, received_ms, site, type_, cookie_id, fp_id) + url_head
            + (referrer_host(referrer),) + url_tail + _agent_columns(user_agent)
            + (ip, engaged_ms, tuple(scrub_props(dict(props)).items()) if props else ()) + consent + (source,)
        )

    def _page_columns(self, site: str, url: str, categories: tuple[str, ...]) -> tuple[tuple[object, ...], ...]:
        """(url, host, path) and (utm_source … utm_content, categories): the columns a page decides."""
        scrubbed, parts = scrubbed_url_parts(url)
        from_tag = clean_categories(categories, self._taxonomy)
        from_rules = self._rules.categories_for(site, parts.path)
        merged = tuple(dict.fromkeys(from_tag + from_rules)) if from_rules else from_tag
        return ((scrubbed, parts.host, parts.path),
                (parts.utm_source, parts.utm_medium, parts.utm_campaign, parts.utm_term, parts.utm_content, merged))


@lru_cache(maxsize=4096)
def _agent_columns(user_agent: str) -> tuple[str, str, str, int]:
    """(device_type, os, browser, is_bot)."""
    agent = parse_user_agent(user_agent)
    return ("bot" if agent.is_bot else agent.device_type, agent.os, agent.browser, int(agent.is_bot))
