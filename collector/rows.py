"""Enrichment: a validated hit → one `crumb.events` row. Runs in the writer, off the request path.

Every step is cached where inputs repeat (user agents, URLs, per-site category rules), so a
batch pays for each distinct value once.
"""

from __future__ import annotations

from collector.categories import CategoryRules, ContentTaxonomy, clean_categories
from collector.enrich import parse_user_agent, referrer_host, scrub_props, scrubbed_url_parts
from collector.hits import Hit
from collector.spool import Row


class Enricher:
    def __init__(self, rules: CategoryRules, taxonomy: ContentTaxonomy | None) -> None:
        self._rules = rules
        self._taxonomy = taxonomy

    def row(self, hit: Hit) -> Row:
        """The row in collector.schema.EVENT_COLUMNS order, with JSON-safe values (for the spool).

        Arrays are tuples, which the garbage collector stops tracking at its first pass: with
        lists, every collection rescanned each buffered row's three containers, which cost the
        drain thread about as much as the enrichment itself."""
        url, parts = scrubbed_url_parts(hit.url)
        agent = parse_user_agent(hit.user_agent)
        gdpr_applies, purposes, vendor_consent, can_profile, can_share, gpc, us_privacy = hit.consent
        return (
            hit.event_id, hit.ts_ms, hit.received_ms, hit.site, hit.type, hit.cookie_id, hit.fp_id,
            url, parts.host, parts.path, referrer_host(hit.referrer),
            parts.utm_source, parts.utm_medium, parts.utm_campaign, parts.utm_term, parts.utm_content,
            self._categories(hit, parts.path),
            "bot" if agent.is_bot else agent.device_type, agent.os, agent.browser, int(agent.is_bot),
            hit.ip, hit.engaged_ms, scrub_props(dict(hit.props)),
            gdpr_applies, purposes, vendor_consent, can_profile, can_share, gpc, us_privacy, hit.source,
        )

    def _categories(self, hit: Hit, path: str) -> tuple[str, ...]:
        from_tag = clean_categories(hit.categories, self._taxonomy)
        from_rules = self._rules.categories_for(hit.site, path)
        return tuple(dict.fromkeys(from_tag + from_rules)) if from_rules else from_tag
