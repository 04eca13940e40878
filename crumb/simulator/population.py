"""The simulated browsers ("cookies"): one row per browser in numpy arrays, built in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from crumb.simulator.catalogue import (
    BOT_DEVICES,
    CONSENT_CLASSES,
    GDPR_NO_PROFILE,
    GPC,
    HUMAN_DEVICES,
    IPV4_NETS,
    IPV6_SHARE,
    OPEN,
    Device,
)
from crumb.simulator.sampling import choose_rows

if TYPE_CHECKING:
    from crumb.simulator.model import Interest, SimulationSpec

DEVICES: tuple[Device, ...] = HUMAN_DEVICES + BOT_DEVICES
MAX_INTERESTS = 3
_INTEREST_COUNT_WEIGHTS = (0.45, 0.35, 0.2)  # 1, 2 or 3 latent interests
_BOT_ACTIVITY = 5.0  # a crawler fetches this many times the pages of a typical browser
_MAX_ACTIVITY = 40.0  # cap on lognormal activity, so one browser can't swallow a chunk
_BLOCK = 100_000  # cookies per block of the interest draw (its scratch is block × interests)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_GROUPS = ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24))  # hex span, text offset


@dataclass(frozen=True)
class Population:
    ids: np.ndarray  # (n, 16) uint8: the simulator's own cookie ID bits
    fp_ids: np.ndarray  # (n, 16) uint8, meaningful where has_fp
    has_fp: np.ndarray
    is_bot: np.ndarray
    interests: np.ndarray  # (n, 3) int16 interest indices, -1 padded; bots have none
    device: np.ndarray  # int16 index into DEVICES
    consent: np.ndarray  # int8 index into CONSENT_CLASSES
    ipv6: np.ndarray
    ip_words: np.ndarray  # (n, 3) uint16: IPv4 net index and host, or IPv6 words 3, 4 and 8
    events: np.ndarray  # int64 events each cookie sends (≥ 1; ≥ 2 for converters)
    conversion: np.ndarray  # int8 PURCHASE or SIGNUP for converters, -1 otherwise

    def __len__(self) -> int:
        return len(self.is_bot)

    @property
    def converted(self) -> np.ndarray:
        return self.conversion >= 0

    def cookie_ids(self, start: int, stop: int) -> list[str]:
        return hex_ids(self.ids[start:stop])

    def first_party_ids(self, start: int, stop: int) -> list[str]:
        texts = hex_ids(self.fp_ids[start:stop])
        has_fp = self.has_fp[start:stop].tolist()
        return [text if has else "" for text, has in zip(texts, has_fp, strict=True)]

    def client_ips(self, start: int, stop: int) -> list[str]:
        """The address a browser connects from (documentation ranges only)."""
        words = self.ip_words[start:stop].tolist()
        return [f"2001:db8:{a:x}:{b:x}::{c:x}" if v6 else f"{IPV4_NETS[a]}.{b}"
                for v6, (a, b, c) in zip(self.ipv6[start:stop].tolist(), words, strict=True)]

    def stored_ips(self, start: int, stop: int) -> list[str]:
        """What the collector stores for that address: /24 or /48 (collector.enrich.truncate_ip)."""
        words = self.ip_words[start:stop].tolist()
        return [f"2001:db8:{a:x}::" if v6 else f"{IPV4_NETS[a]}.0"
                for v6, (a, _b, _c) in zip(self.ipv6[start:stop].tolist(), words, strict=True)]


def build_population(spec: SimulationSpec, interests: Sequence[Interest],
                     rng: np.random.Generator) -> Population:
    n = spec.cookies
    is_bot = rng.random(n) < spec.bot_share
    cookie_interests = _latent_interests(n, len(interests), rng)
    cookie_interests[is_bot] = -1
    events = _event_counts(spec, is_bot, rng)
    ipv6 = rng.random(n) < IPV6_SHARE
    return Population(
        ids=_random_ids(n, rng),
        fp_ids=_random_ids(n, rng),
        has_fp=~is_bot & (rng.random(n) < spec.fp_share),
        is_bot=is_bot,
        interests=cookie_interests,
        device=_devices(is_bot, rng),
        consent=_consent_classes(spec, is_bot, rng),
        ipv6=ipv6,
        ip_words=_ip_words(ipv6, rng),
        events=events,
        conversion=_conversions(cookie_interests, interests, events, rng),
    )


def _random_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16)


def hex_ids(raw: np.ndarray) -> list[str]:
    """(n, 16) bytes → 32 lowercase hex characters each, without a Python loop over bytes."""
    chars = np.empty((len(raw), 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    return chars.view("S32").ravel().astype("U32").tolist()


def uuid_texts(raw: np.ndarray) -> list[str]:
    """(n, 16) bytes → canonical 8-4-4-4-12 UUID text."""
    chars = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    hex_chars = np.empty((len(raw), 32), dtype=np.uint8)
    hex_chars[:, 0::2] = _HEX[raw >> 4]
    hex_chars[:, 1::2] = _HEX[raw & 15]
    for start, stop, at in _UUID_GROUPS:
        chars[:, at:at + stop - start] = hex_chars[:, start:stop]
    return chars.view("S36").ravel().astype("U36").tolist()


def _latent_interests(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """1–3 distinct interests per cookie, earlier (more popular) interests more often."""
    popularity = np.log(1.0 / np.arange(1, count + 1) ** 0.6)
    how_many = choose_rows(np.asarray(_INTEREST_COUNT_WEIGHTS), n, rng) + 1
    picked = np.full((n, MAX_INTERESTS), -1, dtype=np.int16)
    width = min(MAX_INTERESTS, count)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        keys = popularity + rng.gumbel(size=(stop - start, count))  # Gumbel top-k: a weighted draw
        picked[start:stop, :width] = np.argsort(-keys, axis=1)[:, :width]
    picked[np.arange(MAX_INTERESTS) >= how_many[:, None]] = -1
    return picked


def _event_counts(spec: SimulationSpec, is_bot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed activity; every cookie gets one event, the rest is shared out exactly."""
    activity = np.minimum(rng.lognormal(0.0, 1.0, len(is_bot)), _MAX_ACTIVITY)
    activity[is_bot] *= _BOT_ACTIVITY
    spare = spec.total_events - len(is_bot)
    return 1 + rng.multinomial(spare, activity / activity.sum()).astype(np.int64)


def _devices(is_bot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    human = choose_rows(np.array([d.weight for d in HUMAN_DEVICES]), len(is_bot), rng)
    bot = len(HUMAN_DEVICES) + choose_rows(np.array([d.weight for d in BOT_DEVICES]), len(is_bot), rng)
    return np.where(is_bot, bot, human).astype(np.int16)


def _consent_classes(spec: SimulationSpec, is_bot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(len(is_bot))
    classes = np.full(len(is_bot), CONSENT_CLASSES.index(OPEN), dtype=np.int8)
    classes[u < spec.gdpr_share + spec.gpc_share] = CONSENT_CLASSES.index(GPC)
    classes[u < spec.gdpr_share] = CONSENT_CLASSES.index(GDPR_NO_PROFILE)
    classes[is_bot] = CONSENT_CLASSES.index(OPEN)
    return classes


def _ip_words(ipv6: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    words = rng.integers(1, 1 << 16, size=(len(ipv6), 3), dtype=np.int64)
    v4 = np.stack([words[:, 0] % len(IPV4_NETS), 1 + words[:, 1] % 254, words[:, 2]], axis=1)
    return np.where(ipv6[:, None], words, v4).astype(np.uint16)


def _conversions(cookie_interests: np.ndarray, interests: Sequence[Interest], events: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Who converts depends only on latent interests: 1 − Π(1 − rate) over a cookie's interests."""
    rates = np.array([i.conversion_rate for i in interests] + [0.0])[cookie_interests]  # -1 → the 0.0
    converts = rng.random(len(events)) < 1.0 - np.prod(1.0 - rates, axis=1)
    strongest = cookie_interests[np.arange(len(events)), np.argmax(rates, axis=1)]
    kinds = np.array([i.conversion for i in interests] + [-1], dtype=np.int8)[strongest]
    # A conversion follows a page view in the same session, so it needs two events.
    return np.where(converts & (events >= 2) & (strongest >= 0), kinds, -1).astype(np.int8)
