"""What is simulated: the spec, and the World built from it deterministically (sites, pages, interests,
cookies). Event traffic over the World is in `traffic`; its ground truth in `truth`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from collector.categories import ContentTaxonomy
from crumb.simulator.catalogue import (
    DEFAULT_PAGE_KINDS,
    DEFAULT_SITES,
    HOURLY_TRAFFIC,
    PAGE_KINDS,
    PURCHASE,
    THEMES,
    Theme,
)
from crumb.simulator.population import Population, build_population
from crumb.simulator.sampling import StackedChoice, choose_rows, objects, zipf_weights

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_SITE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class SimulationSpec(BaseModel):
    """How much traffic, over what, from whom. Same spec and seed → the same traffic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cookies: int = Field(default=10_000, ge=1)
    days: int = Field(default=30, ge=1, le=3650)
    sites: tuple[str, ...] = DEFAULT_SITES
    seed: int = Field(default=0, ge=0)
    events: int | None = Field(default=None, ge=1)  # all types; None: cookies × events_per_cookie
    events_per_cookie: float = Field(default=20.0, gt=0)
    end: datetime | None = None  # the last moment of traffic; None: now (the only non-seeded input)
    interests: int = Field(default=12, ge=1)
    bot_share: float = Field(default=0.03, ge=0, le=1)
    fp_share: float = Field(default=0.4, ge=0, le=1)  # humans that also carry a first-party ID
    gdpr_share: float = Field(default=0.05, ge=0, le=1)  # GDPR applies; storage yes, profiling no
    gpc_share: float = Field(default=0.02, ge=0, le=1)  # Global Privacy Control on
    pages_per_site: int = Field(default=1000, ge=10)
    zipf_exponent: float = Field(default=1.1, gt=0)
    interest_focus: float = Field(default=0.75, ge=0, le=1)  # human sessions about own interests
    taxonomy_path: Path | None = None  # full IAB Content Taxonomy 3.1 TSV: more interests than built in

    @field_validator("sites")
    @classmethod
    def _site_names(cls, sites: tuple[str, ...]) -> tuple[str, ...]:
        if not sites or len(set(sites)) != len(sites):
            raise ValueError("sites must be a non-empty list of distinct names")
        for site in sites:
            if not _SITE_NAME.fullmatch(site):
                raise ValueError(f"site {site!r} is not 1-64 characters of [A-Za-z0-9_.-]")
        return sites

    @model_validator(mode="after")
    def _coherent(self) -> SimulationSpec:
        if self.total_events < self.cookies:
            raise ValueError("events must be at least cookies: every cookie sends one event or more")
        if self.gdpr_share + self.gpc_share > 1:
            raise ValueError("gdpr_share + gpc_share must not exceed 1")
        return self

    @property
    def total_events(self) -> int:
        return self.events if self.events is not None else round(self.cookies * self.events_per_cookie)

    def end_ms(self) -> int:
        end = self.end or datetime.now(UTC)
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        return int(end.timestamp() * 1000)


@dataclass(frozen=True)
class Site:
    name: str
    host: str

    @property
    def origin(self) -> str:
        return f"https://{self.host}"


@dataclass(frozen=True)
class Interest:
    name: str
    section: str
    categories: tuple[str, ...]  # most specific first
    sites: tuple[int, ...]  # indices into World.sites; the first gets most of the interest's traffic
    conversion: int  # PURCHASE or SIGNUP
    conversion_rate: float
    page_kinds: tuple[str, ...]  # what its pages are called: "article", "product", ...


@dataclass(frozen=True)
class Pages:
    """Every page of every site, ordered by section so a section's pages are one contiguous run."""

    site: np.ndarray  # int16 per page
    path: np.ndarray  # object: str
    url: np.ndarray  # object: str
    categories: np.ndarray  # object: list[str] (shared, never mutated)
    section_of: np.ndarray  # (sites, interests) → section, -1 when the site has no such section
    site_first_page: np.ndarray
    site_page_count: np.ndarray
    by_popularity: StackedChoice  # Zipf draw of a page within a section
    site_sections: StackedChoice  # a section of a site, in proportion to its pages
    site_section_ids: np.ndarray  # flat items of site_sections → section


@dataclass(frozen=True)
class DiurnalClock:
    """The window cut at UTC hours; each hour draws session starts in proportion to its traffic."""

    starts: np.ndarray  # int64 ms; the first is the window's start, the rest on the hour
    lengths: np.ndarray  # ms (the first and last hours may be partial)
    weights: np.ndarray

    @classmethod
    def over(cls, start_ms: int, end_ms: int) -> DiurnalClock:
        on_the_hour = np.arange(start_ms - start_ms % HOUR_MS + HOUR_MS, end_ms, HOUR_MS)
        starts = np.concatenate([[start_ms], on_the_hour])
        lengths = np.diff(np.append(starts, end_ms))
        weights = np.asarray(HOURLY_TRAFFIC)[(starts // HOUR_MS) % 24] * lengths / HOUR_MS
        return cls(starts.astype(np.int64), lengths, weights)

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        hour = choose_rows(self.weights, count, rng)
        return self.starts[hour] + (rng.random(count) * self.lengths[hour]).astype(np.int64)


@dataclass(frozen=True)
class World:
    """Everything but the events: fixed by the spec and its seed (and the clock, when spec.end is None)."""

    spec: SimulationSpec
    end_ms: int
    sites: tuple[Site, ...]
    interests: tuple[Interest, ...]
    pages: Pages
    cookies: Population
    clock: DiurnalClock

    @classmethod
    def build(cls, spec: SimulationSpec) -> World:
        rng = np.random.default_rng([spec.seed, 0])
        sites = tuple(_site(name) for name in spec.sites)
        interests = _interests(spec, sites, rng)
        end_ms = spec.end_ms()
        return cls(
            spec=spec, end_ms=end_ms, sites=sites, interests=interests,
            pages=_pages(spec, sites, interests, rng),
            cookies=build_population(spec, interests, np.random.default_rng([spec.seed, 1])),
            clock=DiurnalClock.over(end_ms - spec.days * DAY_MS, end_ms),
        )

    @property
    def start_ms(self) -> int:
        return self.end_ms - self.spec.days * DAY_MS

    def interest_index(self, name: str) -> int:
        return next(i for i, interest in enumerate(self.interests) if interest.name == name)

    def write_ground_truth(self, path: Path, assigned_ids: dict[int, str] | None = None) -> Path:
        from crumb.simulator.truth import write_ground_truth

        return write_ground_truth(self, path, assigned_ids)


def _site(name: str) -> Site:
    return Site(name=name, host=f"{name}.example")


# ---------------------------------------------------------------------------------- interests


def _interests(spec: SimulationSpec, sites: tuple[Site, ...],
               rng: np.random.Generator) -> tuple[Interest, ...]:
    themes = list(THEMES[:spec.interests])
    extra = spec.interests - len(THEMES)
    if extra > 0:
        if spec.taxonomy_path is None:
            raise ValueError(f"at most {len(THEMES)} interests without a taxonomy file (taxonomy_path)")
        themes += _taxonomy_themes(ContentTaxonomy.load(spec.taxonomy_path), extra, rng)
    return tuple(_place(theme, sites, rng) for theme in themes)


def _place(theme: Theme, sites: tuple[Site, ...], rng: np.random.Generator) -> Interest:
    """The theme's home site, and half the time a second site that also covers it."""
    hinted = [i for i, site in enumerate(sites) if theme.site_hint and theme.site_hint in site.name]
    home = hinted[0] if hinted else int(rng.integers(len(sites)))
    others = [i for i in range(len(sites)) if i != home]
    placed = (home,) + ((int(rng.choice(others)),) if others and rng.random() < 0.5 else ())
    kinds = PAGE_KINDS.get(theme.site_hint, DEFAULT_PAGE_KINDS)
    return Interest(theme.name, theme.section, theme.categories, placed, theme.conversion,
                    theme.conversion_rate, kinds)


def _taxonomy_themes(taxonomy: ContentTaxonomy, count: int, rng: np.random.Generator) -> list[Theme]:
    """Interests beyond the built-in ones, from the full taxonomy: a node tagged with two children."""
    children: dict[str, list[str]] = {}
    for node, parent in taxonomy.parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(node)
    used = {c for theme in THEMES for c in theme.categories}
    candidates = sorted(node for node, kids in children.items() if len(kids) >= 2 and node not in used)
    if count > len(candidates):
        raise ValueError(f"the taxonomy supports at most {len(THEMES) + len(candidates)} interests")
    picked = rng.permutation(candidates)[:count].tolist()
    return [_taxonomy_theme(node, children[node], taxonomy, rng) for node in picked]


def _taxonomy_theme(node: str, kids: list[str], taxonomy: ContentTaxonomy, rng: np.random.Generator) -> Theme:
    picked = tuple(str(kid) for kid in rng.choice(sorted(kids), size=2, replace=False))
    section = "/".join(_slug(taxonomy.name(part)) for part in (*taxonomy.ancestors(node), node))
    return Theme(f"{_slug(taxonomy.name(node))}-{node.lower()}", section, picked + (node,), "", PURCHASE)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "topic"


# -------------------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class _Section:
    site: int
    interest: int  # -1: the site's general pages
    paths: list[str]
    categories: list[list[str]]
    popularity: np.ndarray


def _pages(spec: SimulationSpec, sites: tuple[Site, ...], interests: tuple[Interest, ...],
           rng: np.random.Generator) -> Pages:
    sections = [_section(spec, site, k, interests, rng) for site, k in _layout(sites, interests)]
    site_of_page = np.repeat([s.site for s in sections], [len(s.paths) for s in sections]).astype(np.int16)
    section_of = np.full((len(sites), len(interests)), -1, dtype=np.int32)
    for index, section in enumerate(sections):
        if section.interest >= 0:
            section_of[section.site, section.interest] = index
    by_site = [[i for i, s in enumerate(sections) if s.site == site] for site in range(len(sites))]
    return Pages(
        site=site_of_page,
        path=objects([path for s in sections for path in s.paths]),
        url=objects([sites[s.site].origin + path for s in sections for path in s.paths]),
        categories=objects([tags for s in sections for tags in s.categories]),
        section_of=section_of,
        site_first_page=np.searchsorted(site_of_page, np.arange(len(sites))),
        site_page_count=np.bincount(site_of_page, minlength=len(sites)),
        by_popularity=StackedChoice([s.popularity for s in sections]),
        site_sections=StackedChoice([np.array([len(sections[i].paths) for i in ids], dtype=np.float64)
                                     for ids in by_site]),
        site_section_ids=np.concatenate([np.array(ids) for ids in by_site]),
    )


def _layout(sites: tuple[Site, ...], interests: tuple[Interest, ...]) -> list[tuple[int, int]]:
    """(site, interest) of every section, site by site; interest -1 is the site's general pages."""
    return [(site, interest) for site in range(len(sites))
            for interest in [-1] + [k for k, i in enumerate(interests) if site in i.sites]]


def _section(spec: SimulationSpec, site: int, interest: int, interests: tuple[Interest, ...],
             rng: np.random.Generator) -> _Section:
    sections_on_site = 1 + sum(site in i.sites for i in interests)
    count = max(5, spec.pages_per_site // sections_on_site)
    # Five digits at most: the collector's scrubber takes runs of 7+ digits for phone numbers.
    numbers = rng.choice(np.arange(100, 100_000), size=count, replace=False).tolist()
    if interest < 0:  # home page first: it leads its site's general pages
        paths = ["/"] + [f"/latest/page-{n}" for n in numbers[1:]]
        ranks = np.arange(1, count + 1, dtype=np.float64)
        return _Section(site, interest, paths, [[] for _ in paths], 1.0 / ranks ** spec.zipf_exponent)
    section, kinds = interests[interest].section, interests[interest].page_kinds
    kind_of_page = rng.choice(len(kinds), size=count)
    paths = [f"/{section}/{kinds[k]}-{n}" for k, n in zip(kind_of_page, numbers, strict=True)]
    categories = [_page_categories(interests, interest, rng) for _ in paths]
    return _Section(site, interest, paths, categories, zipf_weights(count, spec.zipf_exponent, rng))


def _page_categories(interests: tuple[Interest, ...], interest: int, rng: np.random.Generator) -> list[str]:
    """Mostly the interest's own IDs, sometimes only its broader one, rarely a mis-tag: noisy signal."""
    own = interests[interest].categories
    if rng.random() < 0.03:
        return [interests[int(rng.integers(len(interests)))].categories[0]]
    first = own[0] if len(own) == 1 or rng.random() < 0.7 else own[1]
    if len(own) > 1 and rng.random() < 0.5 and own[-1] != first:
        return [first, own[-1]]
    return [first]


class SimulationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: Literal["bulk", "http"]
    events: int  # loaded (bulk) or accepted by the collector (http)
    cookies: int
    bots: int
    sites: int
    duration_s: float
    truth_path: Path | None
    rejected: int = 0  # http: events the collector refused or that could not be delivered

    @computed_field  # type: ignore[prop-decorator]
    @property
    def events_per_s(self) -> float:
        return round(self.events / self.duration_s, 1) if self.duration_s > 0 else 0.0
