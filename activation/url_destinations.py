"""URL destinations: pixels the browser fires for the segments it holds, as Adobe Audience
Manager's URL destinations do.

They ride the ID sync frame the tag loads (`GET /sync/frame`, idsync_endpoints.py): the frame is
rendered for the browser's own `crumb_id`, so the macros are filled here, server-side, and the
HttpOnly cookie never reaches page scripts. Each destination fires at most once per
`interval_hours` per browser — claimed in the same Redis hash as partner syncs, so an erasure
forgets it with them — and never after an opt-out, under GPC or a US Privacy opt-out of sale, or,
where GDPR applies, without consent to Purposes 1, 3 and 4 for us and for the destination's
vendor (`gvl_id`; a destination without one never fires there).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import redis

from activation.destinations.config import UrlConfig, load_destinations
from activation.idsync import CLAIM_SCRIPT, SyncSignals, claim
from activation.lookup import may_activate
from activation.partners import consent_macros, fill
from collector.consent import decode_consent
from crumb.runtime import Runtime

CLAIM_PREFIX = "url:"  # beside partner names in the sync hash; partner names cannot contain ':'


def url_destination_urls(
    configs: Iterable[Any], cookie_id: str, segments: Iterable[int], signals: SyncSignals = SyncSignals(),
) -> list[str]:
    """The filled URL of each enabled URL destination that takes one of `segments`:
    `${CRUMB_ID}` our cookie ID, `${SEGMENTS}` the destination's names of the held segments,
    comma-joined, and the consent macros as the browser sent them."""
    held = set(segments)
    return [url for config in configs if (url := fill_url(config, cookie_id, held, signals))]


def fill_url(config: Any, cookie_id: str, held: set[int], signals: SyncSignals) -> str:
    if not isinstance(config, UrlConfig) or not config.enabled:
        return ""
    names = [name for segment_id, name in sorted(config.segments.items()) if segment_id in held]
    if not names:
        return ""
    applies = vendor_consent(config, signals).gdpr_applies
    values = {
        "CRUMB_ID": quote(cookie_id, safe=""), "SEGMENTS": quote(",".join(names), safe=","),
        **consent_macros(config.gvl_id, gdpr=applies, tc_string=signals.gdpr_consent,
                         us_privacy=signals.us_privacy, gpp=signals.gpp, gpp_sid=signals.gpp_sid),
    }
    return fill(config.template, values)


def vendor_consent(config: UrlConfig, signals: SyncSignals) -> Any:
    return decode_consent(signals.gdpr or None, signals.gdpr_consent, signals.gpc, signals.us_privacy,
                          config.gvl_id or 0)


def refusal(config: UrlConfig, cookie_id: str | None, signals: SyncSignals, vendor_id: int) -> str:
    """Why this browser's pixel for this destination may not fire; "" when it may."""
    if not cookie_id:
        return "no_id"
    if not may_activate(opted_out=signals.opted_out, gpc=signals.gpc, gdpr=signals.gdpr or None,
                        gdpr_consent=signals.gdpr_consent, us_privacy=signals.us_privacy, vendor_id=vendor_id):
        return "no_consent"
    consent = vendor_consent(config, signals)
    if consent.gdpr_applies and not (config.gvl_id and consent.can_profile):
        return "no_vendor_consent"
    return ""


class UrlDestinations:
    """The configured URL destinations and the Redis state of who was fired at when."""

    def __init__(
        self, configs: Iterable[Any], redis_client: redis.Redis, segments_of: Callable[[str], list[int]],
        vendor_id: int, clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self._segments_of = segments_of
        self.vendor_id = vendor_id
        self._clock = clock
        self._claim: Any = None
        self.configs: list[UrlConfig] = []
        self.configure(configs)

    @classmethod
    def from_runtime(cls, runtime: Runtime, segments_of: Callable[[str], list[int]]) -> UrlDestinations:
        configs = load_destinations(runtime.settings.destinations_dir)
        return cls(configs, runtime.redis, segments_of, runtime.settings.tcf_vendor_id)

    def configure(self, configs: Iterable[Any]) -> None:
        """Replace the set (at start-up; tests use it at run time)."""
        self.configs = [c for c in configs if isinstance(c, UrlConfig) and c.enabled]

    def due(self, cookie_id: str | None, signals: SyncSignals) -> list[str]:
        """The filled URLs this browser fires now; each one returned is counted as fired."""
        allowed = [c for c in self.configs if not refusal(c, cookie_id, signals, self.vendor_id)]
        if not allowed or not cookie_id:
            return []
        held = set(self._segments_of(cookie_id))
        urls = []
        for config in allowed:
            url = fill_url(config, cookie_id, held, signals)
            if url and self._claim_firing(config, cookie_id):
                urls.append(url)
        return urls

    def _claim_firing(self, config: UrlConfig, cookie_id: str) -> bool:
        if self._claim is None:
            self._claim = self._redis.register_script(CLAIM_SCRIPT)
        return claim(self._claim, cookie_id, CLAIM_PREFIX + config.name, self._clock(), config.interval_hours * 3600)
