"""Page categories: the IAB Content Taxonomy 3.1, per-site URL rules, and cleaning of tag-sent IDs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from crumb.errors import CrumbError

MAX_CATEGORIES = 20
CATEGORY_ID = re.compile(r"[A-Za-z0-9]{1,16}")


class TaxonomyError(CrumbError, ValueError):
    """A taxonomy file that can't be read as one."""

    code = "invalid_taxonomy"


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed by identity, usable as a cache key
class ContentTaxonomy:
    names: Mapping[str, str]
    parents: Mapping[str, str | None]
    _descendants: Mapping[str, frozenset[str]]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str | None, str]]) -> ContentTaxonomy:
        """From (id, parent id or None, name) rows; every parent must be one of the IDs."""
        names: dict[str, str] = {}
        parents: dict[str, str | None] = {}
        for node_id, parent, name in rows:
            if node_id in names:
                raise TaxonomyError(f"{node_id}: listed twice")
            names[node_id], parents[node_id] = name, parent or None
        return cls(names, parents, _descendants_of(parents))

    @classmethod
    def load(cls, path: Path) -> ContentTaxonomy:
        """Read the IAB TSV: header row(s) up to the one naming "Unique ID", then one node a row."""
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return cls.from_rows(_tsv_rows(lines))
        except OSError as error:
            raise TaxonomyError(f"{path}: {error.strerror or error}") from error
        except (UnicodeDecodeError, TaxonomyError) as error:
            raise TaxonomyError(f"{path}: {error}") from error

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.names

    def __len__(self) -> int:
        return len(self.names)

    def name(self, node_id: str) -> str:
        return self.names[node_id]

    def parent(self, node_id: str) -> str | None:
        return self.parents[node_id]

    def ancestors(self, node_id: str) -> tuple[str, ...]:
        """From the top tier down to the parent; () for a top-tier node."""
        chain: list[str] = []
        parent = self.parents[node_id]
        while parent is not None:
            chain.append(parent)
            parent = self.parents[parent]
        return tuple(reversed(chain))

    def descendants(self, node_id: str) -> frozenset[str]:
        """The node and everything below it."""
        return self._descendants[node_id]

    def label(self, node_id: str) -> str:
        """A readable path such as "Sports > Soccer"; an unknown ID is shown as it is."""
        if node_id not in self.names:
            return node_id
        return " > ".join(self.names[part] for part in (*self.ancestors(node_id), node_id))


def _tsv_rows(lines: list[str]) -> list[tuple[str, str | None, str]]:
    header_at = next((i for i, line in enumerate(lines) if "Unique ID" in line.split("\t")), None)
    if header_at is None:
        raise TaxonomyError("no header row with a 'Unique ID' column")
    header = lines[header_at].split("\t")
    id_col, parent_col = header.index("Unique ID"), _column(header, ("Parent", "Parent ID"))
    name_col = _column(header, ("Name", "Condensed Name (1st, 2nd, Last Tier)"))
    rows = []
    for number, line in enumerate(lines[header_at + 1:], start=header_at + 2):
        cells = line.split("\t")
        if not line.strip():
            continue
        if len(cells) <= max(id_col, parent_col, name_col) or not cells[id_col].strip():
            raise TaxonomyError(f"line {number}: expected the ID, parent and name columns")
        rows.append((cells[id_col].strip(), cells[parent_col].strip() or None, cells[name_col].strip()))
    return rows


def _column(header: list[str], names: Sequence[str]) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise TaxonomyError(f"no column named {' or '.join(names)}")


def _descendants_of(parents: Mapping[str, str | None]) -> dict[str, frozenset[str]]:
    below: dict[str, set[str]] = {node_id: {node_id} for node_id in parents}
    for node_id in parents:
        for ancestor in _walk_up(node_id, parents):
            below[ancestor].add(node_id)
    return {node_id: frozenset(ids) for node_id, ids in below.items()}


def _walk_up(node_id: str, parents: Mapping[str, str | None]) -> Iterable[str]:
    seen = {node_id}
    parent = parents[node_id]
    while parent is not None:
        if parent not in parents:
            raise TaxonomyError(f"{node_id}: parent {parent} is not in the taxonomy")
        if parent in seen:
            raise TaxonomyError(f"{node_id}: its parents form a cycle")
        seen.add(parent)
        yield parent
        parent = parents[parent]


# Real Content Taxonomy 3.1 entries (id, parent, name): enough for the demo and simulator to run
# without the full file. tests/collector/test_categories.py checks them against it.
_BUILTIN_ROWS = (
    ("1", None, "Automotive"),
    ("2", "1", "Auto Body Styles"),
    ("30", "1", "Auto Buying and Selling"),
    ("27", "1", "Motorcycles"),
    ("52", None, "Business and Finance"),
    ("53", "52", "Business"),
    ("JLBCU7", None, "Entertainment"),
    ("324", "JLBCU7", "Movies"),
    ("338", "JLBCU7", "Music"),
    ("210", None, "Food & Drink"),
    ("216", "210", "Cooking"),
    ("223", None, "Healthy Living"),
    ("225", "223", "Fitness and Exercise"),
    ("274", None, "Home & Garden"),
    ("275", "274", "Gardening"),
    ("391", None, "Personal Finance"),
    ("398", "391", "Insurance"),
    ("410", "391", "Personal Investing"),
    ("483", None, "Sports"),
    ("533", "483", "Soccer"),
    ("547", "483", "Basketball"),
    ("539", "483", "Tennis"),
    ("512", "483", "Golf"),
    ("552", None, "Style & Fashion"),
    ("553", "552", "Beauty"),
    ("560", "552", "Women's Fashion"),
    ("579", "552", "Men's Fashion"),
    ("596", None, "Technology & Computing"),
    ("597", "596", "Artificial Intelligence"),
    ("632", "596", "Consumer Electronics"),
    ("653", None, "Travel"),
    ("655", "653", "Travel Locations"),
    ("680", None, "Video Gaming"),
    ("681", "680", "Console Games"),
)
BUILTIN = ContentTaxonomy.from_rows(_BUILTIN_ROWS)


Rules = Iterable[tuple[str | re.Pattern[str], Iterable[str]]]


class CategoryRules:
    """Per site, ordered (regex searched in the URL path, category IDs) rules."""

    def __init__(self, rules_by_site: Mapping[str, Rules]):
        self._rules = {
            site: tuple((re.compile(pattern), tuple(ids)) for pattern, ids in rules)
            for site, rules in rules_by_site.items()
        }
        # Per instance, so a reloaded config starts with a fresh cache and the old one is freed.
        self.categories_for = lru_cache(maxsize=16_384)(self._categories_for)

    def __len__(self) -> int:
        return sum(len(rules) for rules in self._rules.values())

    def __reduce__(self) -> tuple[type[CategoryRules], tuple[Mapping[str, Rules]]]:
        return CategoryRules, (self._rules,)  # rebuilt by the constructor: its cache does not pickle

    def _categories_for(self, site: str, path: str) -> tuple[str, ...]:
        """IDs of every rule of the site whose pattern is found in the path, in rule order, once each."""
        found: dict[str, None] = {}
        for pattern, ids in self._rules.get(site, ()):
            if pattern.search(path):
                found.update(dict.fromkeys(ids))
        return tuple(found)


def clean_categories(ids: Iterable[str], taxonomy: ContentTaxonomy | None) -> tuple[str, ...]:
    """At most 20 distinct IDs of the allowed form (and in the taxonomy, when there is one)."""
    kept: dict[str, None] = {}
    for category in ids:
        if not isinstance(category, str) or not CATEGORY_ID.fullmatch(category):
            continue
        if taxonomy is None or category in taxonomy:
            kept[category] = None
            if len(kept) == MAX_CATEGORIES:
                break
    return tuple(kept)
