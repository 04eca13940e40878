"""A plain-Python evaluation of segment rules: the reference the builder's SQL is checked against.

Deliberately naive and independent of `audiences.compiler`: it walks the rule trees over a list
of events held in memory, one profile at a time. It uses only the definitions' models (to read
the rules) and the taxonomy's parent links (for `category is`).

Semantics (see tests/audiences/test_oracle.py for the property that ties it to the builder):

- An event is eligible when is_bot = 0, can_profile = 1, it has a cookie_id or an fp_id, neither
  of its IDs is an opted-out ID, and start(max_window) <= ts <= as_of, where max_window is the
  largest window of any condition the build evaluates (each segment's universe included), and
  start(w) is the start of as_of's UTC day, w days earlier: a window counts as_of's day so far and
  the w whole days before it.
- An event's typed ID is 'c:<cookie_id>' when it has a cookie ID, else 'f:<fp_id>'.
- Eligible events carrying both IDs link them; a profile is a connected component, named by its
  smallest typed ID.
- A condition holds for a profile when its matching events (every predicate true and
  ts >= start(window)) number n >= max(1, min_count), n <= max_count, span at least min_days
  distinct UTC dates and sum to at least min_engaged_ms.
- A segment's members are the profiles seen in its lookback (the universe) whose rule holds;
  every typed ID of a member profile is one output row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from audiences.definitions import All, Any_, Condition, Not, Predicate, Segment, SegmentRef, SegmentSet, Status
from collector.categories import ContentTaxonomy

DAY_MS = 86_400_000

Event = Mapping[str, Any]
Member = tuple[int, str, str]  # (segment_id, id, id_type)


def typed_id(event: Event) -> str:
    return "c:" + event["cookie_id"] if event.get("cookie_id") else "f:" + event["fp_id"]


def field_values(event: Event, field: str) -> list[str]:
    """The values a predicate on `field` tests: one, or every category of the event."""
    if field == "category":
        return list(event.get("categories") or [])
    if field.startswith("prop."):
        return [(event.get("props") or {}).get(field[len("prop."):], "")]
    return [event.get(field, "")]


def category_is(category: str, wanted: str, taxonomy: ContentTaxonomy | None) -> bool:
    """`category is wanted`: the category itself, or one of its ancestors, is `wanted`."""
    if category == wanted:
        return True
    if taxonomy is None or category not in taxonomy:
        return False
    node: str | None = category
    seen = set()
    while node is not None and node in taxonomy and node not in seen:
        if node == wanted:
            return True
        seen.add(node)
        node = taxonomy.parent(node)
    return False


def predicate_holds(p: Predicate, event: Event, taxonomy: ContentTaxonomy | None) -> bool:
    op, x = p.op.value, p.value
    if p.field == "category":
        assert op == "is"
        return any(category_is(v, str(x), taxonomy) for v in field_values(event, "category"))
    (v,) = field_values(event, p.field)
    if op == "eq":
        return v == x
    if op == "neq":
        return v != x
    if op == "in":
        return v in x
    if op == "prefix":
        return v.startswith(x)
    if op == "contains":
        return x in v
    if op == "regex":
        return re.search(str(x), v) is not None
    raise AssertionError(f"unexpected op {op!r} on {p.field}")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the root is always the smallest ID


def _windows(segment: Segment, by_id: Mapping[int, Segment]) -> Iterable[int]:
    """Every window (days) the build evaluates for a segment: its universe, its conditions, and
    those of the segments it refers to (with their own lookbacks)."""
    yield segment.lookback_days

    def walk(node: Any, lookback: int) -> Iterable[int]:
        if isinstance(node, Condition):
            yield node.within_days or lookback
        elif isinstance(node, All):
            for child in node.all:
                yield from walk(child, lookback)
        elif isinstance(node, Any_):
            for child in node.any:
                yield from walk(child, lookback)
        elif isinstance(node, Not):
            yield from walk(node.not_, lookback)
        elif isinstance(node, SegmentRef):
            yield from _windows(by_id[node.segment], by_id)
        else:
            raise TypeError(type(node).__name__)

    yield from walk(segment.rule, segment.lookback_days)


def members(
    events: Iterable[Event], segments: SegmentSet | Iterable[Segment], as_of_ms: int,
    optouts: Iterable[str] = (), taxonomy: ContentTaxonomy | None = None,
) -> set[Member]:
    """(segment_id, id, id_type) for every active rule segment's member IDs as of `as_of_ms`.

    Lookalike segments (a model's output) are outside the oracle: they are ignored.
    """
    by_id = segments.by_id if isinstance(segments, SegmentSet) else {s.id: s for s in segments}
    active = [s for s in by_id.values() if s.status is Status.ACTIVE and s.kind == "rule"]
    if not active:
        return set()
    max_window = max(w for s in active for w in _windows(s, by_id))
    def start(window_days: int) -> int:
        return as_of_ms - as_of_ms % DAY_MS - window_days * DAY_MS

    since = start(max_window)
    opted_out = set(optouts)

    eligible = [
        e for e in events
        if e.get("is_bot", 0) == 0 and e.get("can_profile", 1) == 1
        and (e.get("cookie_id") or e.get("fp_id"))
        and e.get("cookie_id", "") not in opted_out and e.get("fp_id", "") not in opted_out
        and since <= e["ts"] <= as_of_ms
    ]

    links = _UnionFind()
    for e in eligible:
        links.find(typed_id(e))
        if e.get("cookie_id") and e.get("fp_id"):
            links.union("c:" + e["cookie_id"], "f:" + e["fp_id"])
    ids_of: dict[str, set[str]] = {}
    for node in list(links.parent):
        ids_of.setdefault(links.find(node), set()).add(node)
    events_of: dict[str, list[Event]] = {profile: [] for profile in ids_of}
    for e in eligible:
        events_of[links.find(typed_id(e))].append(e)

    def condition_holds(c: Condition, lookback: int, profile: str) -> bool:
        since = start(c.within_days or lookback)
        matching = [e for e in events_of[profile]
                    if e["ts"] >= since and all(predicate_holds(p, e, taxonomy) for p in c.where)]
        n = len(matching)
        days = len({e["ts"] // DAY_MS for e in matching})  # UTC dates (ts >= 0 here)
        engaged = sum(e.get("engaged_ms", 0) for e in matching)
        return (n >= 1 and n >= c.min_count and (c.max_count is None or n <= c.max_count)
                and days >= (c.min_days or 0) and engaged >= (c.min_engaged_ms or 0))

    def rule_holds(node: Any, lookback: int, profile: str) -> bool:
        if isinstance(node, Condition):
            return condition_holds(node, lookback, profile)
        if isinstance(node, All):
            return all(rule_holds(child, lookback, profile) for child in node.all)
        if isinstance(node, Any_):
            return any(rule_holds(child, lookback, profile) for child in node.any)
        if isinstance(node, Not):
            return not rule_holds(node.not_, lookback, profile)
        if isinstance(node, SegmentRef):
            return is_member(by_id[node.segment], profile)
        raise TypeError(type(node).__name__)

    def is_member(segment: Segment, profile: str) -> bool:
        universe = condition_holds(Condition(), segment.lookback_days, profile)
        return universe and rule_holds(segment.rule, segment.lookback_days, profile)

    out: set[Member] = set()
    for segment in active:
        for profile, ids in ids_of.items():
            if is_member(segment, profile):
                for typed in ids:
                    out.add((segment.id, typed[2:], "cookie" if typed.startswith("c:") else "fp"))
    return out
