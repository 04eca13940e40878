"""The builder against a plain-Python oracle: random events, random rule trees, the real warehouse.

Each example writes its events into the shared chdb warehouse and runs the real `build`, then
compares `crumb.segment_members` with `tests.audiences.oracle.members` (exact set equality of
(segment_id, id, id_type)).

Isolation: the builder reads every event in the warehouse, and other tests write there too. So
each example gets an as-of of its own far in the future (2071-01-01 + 14 days per example, every
example's events within (as_of - 12 days, as_of + 1 day]): other tests' rows, near today or in
their own earlier years (2033-2060 so far), fall outside every window (at most 10 days here).
A second build of an example, up to 31 hours later, may reach into the next slot's time range,
whose events are written only after it.
After 800 examples in one session the slots are reused, each cleared first, so timestamps stay
below the 2106 limit of the events TTL. Its IDs are fresh random hex, so its opt-outs touch no
one else; the opt-outs already in the warehouse are read and handed to the oracle rather than
assumed empty. The module's partitions are dropped when it ends.

`ORACLE_EXAMPLES=600` runs more examples than the default 60 (about 0.5 s each).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
import redis
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from audiences import rollup
from audiences.builder import build
from audiences.definitions import FIELDS, STRING_OPS, SegmentSet, parse_segment
from collector.categories import ContentTaxonomy
from crumb.privacy import erase
from tests.audiences import oracle
from tests.conftest import LiveServer

DAY = 86_400_000
HOUR = 3_600_000
BASE_AS_OF = int(datetime(2071, 1, 1, tzinfo=UTC).timestamp() * 1000)
EXAMPLE_SPACING = 14 * DAY  # an example's events span 13 days; its windows, at most 10
EXAMPLE_SLOTS = 800  # 2071 + 800 × 14 days ≈ 2101: the events TTL (toDateTime(ts) + 180 days) stays below 2106
SEGMENT_BASE = 9100  # segment IDs of this module: 9101, 9102, ...
_SALT = uuid.uuid4().hex
_COUNTER = itertools.count()
_MONTHS: set[int] = set()  # events partitions (toYYYYMM(ts)) this module wrote

# A tiny taxonomy: 1 > 2 > 3, 10 > 20; "99" and "5" are not in it.
TAXONOMY = ContentTaxonomy.from_rows([
    ("1", None, "One"), ("2", "1", "Two"), ("3", "2", "Three"), ("10", None, "Ten"), ("20", "10", "Twenty"),
])

# Small domains (with values that are prefixes of each other), so conditions match and collide.
DOMAIN: dict[str, list[str]] = {
    "site": ["s", "s1", "s10"],
    "type": ["pageview", "page", "click", "signup"],
    "host": ["a.com", "shop.a.com", "a.co", "b.com", ""],
    "path": ["/", "/a", "/ab", "/a/b", "/x.y", "/xzy", "/b", ""],
    "referrer_host": ["", "g.com", "go.com", "a.com"],
    "utm_source": ["", "x", "xy", "yx", "x.y"],
    "utm_medium": ["", "x", "xy", "cpc"],
    "utm_campaign": ["", "x", "xy", "yx", "x.y"],
    "utm_term": ["", "x", "ab"],
    "utm_content": ["", "y", "x.y"],
    "device_type": ["desktop", "mobile", "tablet", ""],
    "os": ["ios", "android", "windows", ""],
    "browser": ["chrome", "chromium", "safari", ""],
}
QUERIES = ["", "?q=b", "?x.y=1"]
CATEGORIES = ["1", "2", "3", "10", "20", "99"]
PROP_KEYS = ["k", "k2", "plan"]
PROP_VALUES = ["", "a", "ab", "b", "x.y"]
FRAGMENTS = ["", "a", "b", "/a", "x", "y", ".", "com", "https://a", "https://shop", "s", "zz"]
# Valid (and meaning the same) for RE2 and Python's re.
REGEXES = ["^/a", "b$", "x.y", "^$", "a|y", "[ab]", "^s", "com$", "^https://shop", r"\.co$", "a.*b", "^x$", "y"]
AS_OF_OFFSETS = [0, 1, HOUR, 12 * HOUR, DAY - 1]  # where the UTC midnights fall relative to the windows
# Around each window's start, the start of a UTC day: w days before as_of's day, for each of the
# as-of offsets. And rows a few hours into each window's first day.
EDGE_OFFSETS = sorted({-w * DAY - a + o for w in range(1, 11) for a in AS_OF_OFFSETS for o in (-1, 0, 1)}
                      | {-w * DAY + hours * HOUR for w in range(1, 11) for hours in (1, 3)} | {-1, 0, 1, DAY})
LATER = [0, HOUR, 3 * HOUR + 17 * 60_000, DAY + 7 * HOUR]  # a second build: none, hours later, a day on
EVENT_COLUMNS = [
    "event_id", "ts", "site", "type", "cookie_id", "fp_id", "url", "host", "path", "referrer_host",
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "categories", "device_type",
    "os", "browser", "is_bot", "engaged_ms", "props", "can_profile",
]


# -- cases -----------------------------------------------------------------------------------------

@dataclass
class Case:
    """Events with symbolic IDs (cookie / fp index) and times relative to as-of; realised per run."""

    events: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    taxonomy: ContentTaxonomy | None = None
    optout_cookies: Sequence[int] = ()
    optout_fps: Sequence[int] = ()
    as_of_offset: int = 0
    # A second build `later` ms after the first (0: none), after `late_events` arrived (times
    # relative to the first as-of): it reads the first build's rolled-up days, rolls up those
    # that changed or are new, and must agree with the oracle as of its own as-of. On the same
    # UTC day it follows the first: it recomputes only the profiles it finds touched.
    later: int = 0
    late_events: list[dict[str, Any]] = field(default_factory=list)
    late_optout_cookies: Sequence[int] = ()  # opted out between the two builds
    late_optout_fps: Sequence[int] = ()
    # Erased between the two builds, after the late events (`crumb.privacy.erase`: as the opt-out
    # worker erases each opted-out ID). The oracle reads the events that are left.
    erased_cookies: Sequence[int] = ()
    erased_fps: Sequence[int] = ()
    # The rolled-up rows a part of the totals takes (`rollup.ROWS_PER_TOTALS_PART`): 1 splits
    # them into up to `rollup.MAX_TOTALS_PARTS` parts of the IDs, as a large warehouse would.
    rows_per_totals_part: int = rollup.ROWS_PER_TOTALS_PART

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return (f"Case(as_of_offset={self.as_of_offset}, later={self.later}, "
                f"late_events={self.late_events!r}, taxonomy={'TAXONOMY' if self.taxonomy else None}, "
                f"optout_cookies={list(self.optout_cookies)}, optout_fps={list(self.optout_fps)}, "
                f"late_optout_cookies={list(self.late_optout_cookies)}, late_optout_fps={list(self.late_optout_fps)}, "
                f"erased_cookies={list(self.erased_cookies)}, erased_fps={list(self.erased_fps)}, "
                f"rows_per_totals_part={self.rows_per_totals_part},\n"
                f"  segments={json.dumps(self.segments)},\n  events=[\n"
                + "".join(f"    {e!r},\n" for e in self.events) + "  ])")


def event_row(cookie: int | None = None, fp: int | None = None, dt: int = 0, **values: Any) -> dict[str, Any]:
    """One symbolic event: `dt` ms relative to as-of; unnamed fields take plain defaults."""
    row: dict[str, Any] = {
        "cookie": cookie, "fp": fp, "dt": dt, "site": "s", "type": "pageview", "url": "", "host": "", "path": "",
        "referrer_host": "", "utm_source": "", "utm_medium": "", "utm_campaign": "", "utm_term": "",
        "utm_content": "", "categories": [], "device_type": "", "os": "", "browser": "", "is_bot": 0,
        "engaged_ms": 0, "props": {}, "can_profile": 1,
    }
    row.update(values)
    return row


def _hex_id(example: int, kind: str, index: int) -> str:
    return hashlib.md5(f"{_SALT}:{example}:{kind}{index}".encode()).hexdigest()


@dataclass
class Outcome:
    actual: set[oracle.Member]
    expected: set[oracle.Member]
    labels: dict[str, str]  # hex ID → "c3" / "f1"
    link_rounds: int = 0
    followed: bool = False  # the second build recomputed only the profiles it found touched

    def named(self, rows: set[oracle.Member]) -> set[tuple[int, str]]:
        return {(segment_id, self.labels.get(i, i)) for segment_id, i, _type in rows}


def run_case(warehouse: Client, case: Case, redis_client: redis.Redis | None = None) -> Outcome:
    """Write the case's events (at an as-of of its own), build, and read members and the oracle.
    Erasures need `redis_client` (they take the builds' lock)."""
    with mock.patch.object(rollup, "ROWS_PER_TOTALS_PART", case.rows_per_totals_part):
        return _run_case(warehouse, case, redis_client)


def _run_case(warehouse: Client, case: Case, redis_client: redis.Redis | None) -> Outcome:
    example = next(_COUNTER)
    slot_start = BASE_AS_OF + (example % EXAMPLE_SLOTS) * EXAMPLE_SPACING
    if example >= EXAMPLE_SLOTS:  # a slot used before in this session: clear it first
        warehouse.command("DELETE FROM crumb.events WHERE ts > fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
                          "AND ts < fromUnixTimestamp64Milli({hi:Int64}, 'UTC')",
                          parameters={"lo": slot_start - 13 * DAY, "hi": slot_start + 2 * DAY})
    as_of = slot_start + case.as_of_offset
    labels: dict[str, str] = {}

    def real(kind: str, index: int | None) -> str:
        if index is None:
            return ""
        value = _hex_id(example, kind, index)
        labels[value] = f"{kind}{index}"
        return value

    def realised(symbolic: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for e in symbolic:
            row = {k: v for k, v in e.items() if k not in ("cookie", "fp", "dt")}
            row.update(cookie_id=real("c", e["cookie"]), fp_id=real("f", e["fp"]), ts=as_of + e["dt"])
            rows.append(row)
            _MONTHS.add(int(datetime.fromtimestamp(row["ts"] / 1000, UTC).strftime("%Y%m")))
        return rows

    def insert(rows: list[dict[str, Any]]) -> None:
        if rows:
            warehouse.insert("crumb.events", [[uuid.uuid4() if c == "event_id" else e[c] for c in EVENT_COLUMNS]
                                              for e in rows], column_names=EVENT_COLUMNS)

    def opt_out(cookies: Sequence[int], fps: Sequence[int], after_the_build: bool = False) -> None:
        ids = [real("c", i) for i in cookies] + [real("f", i) for i in fps]
        at = as_of
        if after_the_build:  # recorded after everything the first build saw: it touches only these
            latest = warehouse.query("SELECT toUnixTimestamp64Milli(max(opted_out_at)) FROM crumb.optouts")
            at = int(latest.result_rows[0][0] or 0) + 1000
        if ids:
            warehouse.insert("crumb.optouts", [[i, at] for i in ids], column_names=["id", "opted_out_at"])

    events = realised(case.events)
    opt_out(case.optout_cookies, case.optout_fps)
    insert(events)
    segments = SegmentSet([parse_segment(s) for s in case.segments])

    result = build(warehouse, segments, case.taxonomy, as_of_ms=as_of)
    assert result.status == "succeeded", result.error
    if case.later:
        late = realised(case.late_events)
        insert(late)
        opt_out(case.late_optout_cookies, case.late_optout_fps, after_the_build=True)
        events += late
        erased = {real("c", i) for i in case.erased_cookies} | {real("f", i) for i in case.erased_fps}
        if erased:
            assert redis_client is not None, "erasures need Redis"
            erase(warehouse, redis_client, sorted(erased), "oracle")
            events = [e for e in events if e["cookie_id"] not in erased and e["fp_id"] not in erased]
        as_of += case.later
        result = build(warehouse, segments, case.taxonomy, as_of_ms=as_of)
        assert result.status == "succeeded", result.error
        again = set(case.late_optout_cookies) & set(case.optout_cookies) or set(case.late_optout_fps) & set(
            case.optout_fps)  # recorded a second time: then every opted-out ID is touched
        if result.followed and (case.late_optout_cookies or case.late_optout_fps) and not again:
            assert result.changes["optouts"] == "new"  # only they were touched, and the members agree
    rows = warehouse.query("SELECT segment_id, id, id_type FROM crumb.segment_members").result_rows
    actual = {(int(s), str(i), str(t)) for s, i, t in rows}
    optouts = [row[0] for row in warehouse.query("SELECT DISTINCT id FROM crumb.optouts").result_rows]
    expected = oracle.members(events, segments, as_of, optouts, case.taxonomy)
    return Outcome(actual, expected, labels, result.link_rounds, bool(result.followed))


def assert_agrees(outcome: Outcome) -> None:
    missing, extra = outcome.expected - outcome.actual, outcome.actual - outcome.expected
    assert not missing and not extra, (
        f"builder and oracle disagree:\n  missing from the builder: {sorted(outcome.named(missing))}"
        f"\n  extra in the builder: {sorted(outcome.named(extra))}")


@pytest.fixture(scope="module", autouse=True)
def _drop_our_partitions(warehouse: Client) -> Iterator[None]:
    yield
    for month in sorted(_MONTHS):  # only months of 2071+, which nothing else uses
        if month >= 207101:
            warehouse.command(f"ALTER TABLE crumb.events DROP PARTITION {month}")


# -- strategies ------------------------------------------------------------------------------------

PREDICATE_FIELDS = sorted(FIELDS) + [f"prop.{k}" for k in PROP_KEYS]


def _ops(field_name: str) -> list[str]:
    return sorted(op.value for op in FIELDS.get(field_name, STRING_OPS))


def _pool(field_name: str) -> list[str]:
    if field_name.startswith("prop."):
        return PROP_VALUES
    if field_name == "url":
        return [f"https://{h}{p}" for h in DOMAIN["host"][:2] for p in DOMAIN["path"][:4]] + [""]
    return DOMAIN[field_name]


@st.composite
def predicates(draw: st.DrawFn) -> dict[str, Any]:
    field_name = draw(st.sampled_from(PREDICATE_FIELDS))
    op = draw(st.sampled_from(_ops(field_name)))
    if op == "is":
        value: Any = draw(st.sampled_from([*CATEGORIES, "5"]))
    elif op == "in":
        value = draw(st.lists(st.sampled_from([*_pool(field_name), "zz"]), min_size=1, max_size=3, unique=True))
    elif op == "regex":
        value = draw(st.sampled_from(REGEXES))
    elif op in ("prefix", "contains"):
        value = draw(st.sampled_from(_pool(field_name) + FRAGMENTS))
    else:
        value = draw(st.sampled_from([*_pool(field_name), "zz"]))
    return {"field": field_name, "op": op, "value": value}


@st.composite
def conditions(draw: st.DrawFn, probe: bool = False) -> dict[str, Any]:
    size = draw(st.sampled_from([1, 1, 1, 2] if probe else [0, 1, 1, 1, 2, 2, 3]))
    condition: dict[str, Any] = {"where": draw(st.lists(predicates(), min_size=size, max_size=size))}
    min_count = draw(st.sampled_from([1, 1, 1, 2, 3]))
    if min_count > 1 or draw(st.booleans()):
        condition["min_count"] = min_count
    if draw(st.integers(0, 3)) == 0:
        condition["max_count"] = draw(st.integers(min_count, min_count + 2))
    if draw(st.integers(0, 3)) == 0:
        condition["min_days"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:
        condition["min_engaged_ms"] = draw(st.sampled_from([1, 500, 1000, 2500, 6000]))
    if draw(st.booleans()):
        # A window of N days spans N + 1 dates: a min_days past that is refused at load.
        condition["within_days"] = draw(st.integers(max(1, condition.get("min_days", 1) - 1), 10))
    return condition


@st.composite
def rules(draw: st.DrawFn, refs: Sequence[int], depth: int) -> dict[str, Any]:
    kinds = ["condition", "condition"] + ["segment"] * bool(refs) + ["all", "any", "not"] * (depth > 0)
    kind = draw(st.sampled_from(kinds))
    if kind == "condition":
        return draw(conditions())
    if kind == "segment":
        return {"segment": draw(st.sampled_from(list(refs)))}
    if kind == "not":
        return {"not": draw(rules(refs, depth - 1))}
    return {kind: draw(st.lists(rules(refs, depth - 1), min_size=1, max_size=3))}


@st.composite
def segment_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few probes (one flat condition each: every predicate and bound gets a direct say in the
    members), then a few rule trees, which may refer to any segment before them."""
    segments: list[dict[str, Any]] = []
    probes, trees = draw(st.integers(2, 8)), draw(st.integers(1, 4))
    for index in range(probes + trees):
        refs = [s["id"] for s in segments]
        segments.append({
            "id": SEGMENT_BASE + index + 1, "name": f"s{index + 1}",
            "lookback_days": draw(st.sampled_from([3, 7, 10, 10]) if index < probes else st.integers(1, 10)),
            "status": draw(st.sampled_from(["active", "active", "active", "paused"])),
            "rule": draw(conditions(probe=True)) if index < probes else draw(rules(refs, 3)),
        })
    return segments


@st.composite
def events(draw: st.DrawFn, cookies: int, fps: int) -> dict[str, Any]:
    # Mostly a few busy cookies (so counts, days and links add up), sometimes any of them, or none.
    cookie = draw(st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(0, cookies - 1), st.none()))
    fp = draw(st.integers(0, fps - 1)) if draw(st.integers(0, 2)) == 0 or cookie is None else None
    if cookie is None and draw(st.integers(0, 4)) == 0:
        fp = None  # no ID at all: never eligible
    host, path = draw(st.sampled_from(DOMAIN["host"])), draw(st.sampled_from(DOMAIN["path"]))
    values = {name: draw(st.sampled_from(pool)) for name, pool in DOMAIN.items() if name not in ("host", "path")}
    return event_row(
        cookie=cookie, fp=fp,
        dt=draw(st.sampled_from(EDGE_OFFSETS) | st.integers(-12 * DAY + 1, DAY)),
        host=host, path=path, url=f"https://{host}{path}{draw(st.sampled_from(QUERIES))}" if host else "",
        categories=draw(st.lists(st.sampled_from(CATEGORIES), max_size=3, unique=True)),
        props=draw(st.dictionaries(st.sampled_from(PROP_KEYS), st.sampled_from(PROP_VALUES), max_size=3)),
        is_bot=int(draw(st.integers(0, 9)) == 0), can_profile=int(draw(st.integers(0, 9)) != 0),
        engaged_ms=draw(st.sampled_from([0, 0, 1, 250, 999, 1000, 1500, 3000])),
        **values,
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    cookies, fps = draw(st.integers(8, 30)), 5
    erasing = draw(st.sampled_from([0, 0, 0, 1]))
    return Case(
        events=draw(st.lists(events(cookies, fps), min_size=draw(st.sampled_from([0, 10, 20, 20, 30])), max_size=40)),
        segments=draw(segment_lists()),
        taxonomy=draw(st.sampled_from([None, TAXONOMY])),
        optout_cookies=draw(st.lists(st.integers(0, cookies - 1), max_size=2, unique=True)),
        optout_fps=draw(st.lists(st.integers(0, fps - 1), max_size=2, unique=True)),
        as_of_offset=draw(st.sampled_from(AS_OF_OFFSETS)),
        later=draw(st.sampled_from(LATER)),
        late_events=draw(st.lists(events(cookies, fps), max_size=3)),
        late_optout_cookies=draw(st.lists(st.integers(0, cookies - 1), max_size=1)),
        late_optout_fps=draw(st.lists(st.integers(0, fps - 1), max_size=1)),
        # In about one case of four: an erasure's DELETEs cost seconds in a warehouse the whole
        # suite has filled, several times what the rest of a case costs.
        erased_cookies=draw(st.lists(st.integers(0, cookies - 1), max_size=erasing)),
        erased_fps=draw(st.lists(st.integers(0, fps - 1), max_size=erasing)),
        rows_per_totals_part=draw(st.sampled_from([rollup.ROWS_PER_TOTALS_PART, 1, 3])),
    )


# -- the property ----------------------------------------------------------------------------------

@settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=cases())
def test_builder_members_equal_the_oracle(warehouse: Client, live_server: LiveServer, case: Case) -> None:
    outcome = run_case(warehouse, case, live_server.crumb.runtime.redis)
    event("members: " + ("none" if not outcome.expected else "some"))
    first_as_of = BASE_AS_OF + case.as_of_offset  # slots start at midnight UTC
    same_day = case.later and (first_as_of // DAY == (first_as_of + case.later) // DAY)
    event("second build: " + ("none" if not case.later else "followed the first" if same_day else "full"))
    if case.later:
        event("erased between the builds: " + ("yes" if case.erased_cookies or case.erased_fps else "no"))
    assert outcome.followed == bool(same_day), "a second build the same day follows the first; others do not"
    for segment in case.segments:
        if segment["status"] == "active":
            event("active segment: " + ("empty" if all(m[0] != segment["id"] for m in outcome.expected)
                                        else "has members"))
    assert_agrees(outcome)


# -- explicit edges --------------------------------------------------------------------------------

def seg(rule: dict[str, Any], id: int = SEGMENT_BASE + 1, lookback_days: int = 5, **extra: Any) -> dict[str, Any]:
    return {"id": id, "name": f"s{id}", "lookback_days": lookback_days, "rule": rule, **extra}


ANY_EVENT: dict[str, Any] = {"where": []}
S1, S2 = SEGMENT_BASE + 1, SEGMENT_BASE + 2


def _edges_of_windows() -> list[Any]:
    w, past = 3, 20 * 60_000  # as_of 00:20: windows start at midnight, W days before as_of's day
    host = {"where": [{"field": "host", "op": "eq", "value": "a.com"}]}
    next_day = {"later": DAY, "as_of_offset": 12 * HOUR}  # a second build, a full one
    return [
        pytest.param(Case([event_row(cookie=0, dt=-w * DAY - past)], [seg({**ANY_EVENT, "within_days": w})],
                          as_of_offset=past),
                     {(S1, "c0")}, id="condition window: the start of as_of's day, W days before, is in"),
        pytest.param(Case([event_row(cookie=0, dt=-w * DAY - past - 1)], [seg({**ANY_EVENT, "within_days": w})],
                          as_of_offset=past),
                     set(), id="condition window: 1 ms before its start is out"),
        pytest.param(Case([event_row(cookie=0, dt=-w * DAY - 11 * HOUR)], [seg({**ANY_EVENT, "within_days": w})],
                          as_of_offset=12 * HOUR),
                     {(S1, "c0")}, id="condition window: the whole day W days before as_of's is in"),
        pytest.param(Case([event_row(cookie=0, dt=-w * DAY - 1), event_row(cookie=0, dt=-DAY)],
                          [seg({"where": [{"field": "type", "op": "eq", "value": "click"}], "within_days": w})]),
                     set(), id="condition window: a match just before the start does not count"),
        pytest.param(Case([event_row(cookie=0, dt=-w * DAY)], [seg({**ANY_EVENT, "within_days": w})]),
                     {(S1, "c0")}, id="condition window: as_of at midnight, as_of - W days is in"),
        pytest.param(Case([event_row(cookie=0, dt=-3 * DAY), event_row(cookie=1, dt=-2 * DAY - 11 * HOUR)],
                          [seg({**ANY_EVENT, "within_days": 3})], **next_day),
                     {(S1, "c1")}, id="next day: a row that left a window"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-2 * DAY, host="a.com"), event_row(cookie=1, dt=-DAY)],
                          [seg(host)], **next_day, late_optout_fps=[0]),
                     set(), id="next day: a first-party ID opted out whose events a cookie's rolled-up day holds"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-3 * DAY), event_row(fp=0, dt=-HOUR, host="a.com"),
                           event_row(cookie=0, dt=-DAY)],
                          [seg(host, lookback_days=3)], **next_day),
                     {(S1, "f0")}, id="next day: a link that left the window splits a profile"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-3 * DAY), event_row(cookie=0, dt=-HOUR, host="a.com"),
                           event_row(cookie=1, fp=0, dt=-DAY)],
                          [seg(host, lookback_days=3)], **next_day),
                     {(S1, "c0")}, id="next day: a link that left the window takes the other IDs out"),
        pytest.param(Case([event_row(cookie=0, dt=0)], [seg({**ANY_EVENT, "within_days": w})]),
                     {(S1, "c0")}, id="as_of itself is in"),
        pytest.param(Case([event_row(cookie=0, dt=1)], [seg(ANY_EVENT)]),
                     set(), id="as_of + 1 ms is out"),
        pytest.param(Case([event_row(cookie=0, dt=-5 * DAY - 12 * HOUR - 1),
                           event_row(cookie=1, dt=-5 * DAY - 12 * HOUR)],
                          [seg(ANY_EVENT, lookback_days=5)], as_of_offset=12 * HOUR),
                     {(S1, "c1")}, id="lookback (the universe) edge"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY), event_row(cookie=0, dt=-w * DAY - 12 * HOUR - 1, type="click"),
                           event_row(cookie=1, dt=-DAY), event_row(cookie=1, dt=-w * DAY - 12 * HOUR, type="click")],
                          [seg({"not": {"where": [{"field": "type", "op": "eq", "value": "click"}],
                                        "within_days": w}})], as_of_offset=12 * HOUR),
                     {(S1, "c0")}, id="not seen within W days, at the edge"),
    ]


def _edges_of_logic() -> list[Any]:
    nothing = {"where": [{"field": "host", "op": "eq", "value": "never.example"}]}
    return [
        pytest.param(Case([event_row(cookie=0, dt=-DAY), event_row(cookie=1, dt=-2 * DAY, host="a.com"),
                           event_row(fp=0, dt=-HOUR), event_row(cookie=2, dt=-9 * DAY)],
                          [seg({"not": nothing}, lookback_days=5)]),
                     {(S1, "c0"), (S1, "c1"), (S1, "f0")}, id="not of a condition matching nothing: the universe"),
        pytest.param(Case([event_row(cookie=0, fp=1, dt=-DAY), event_row(fp=1, dt=-HOUR, host="a.com"),
                           event_row(cookie=2, dt=-HOUR)],
                          [seg({"where": [{"field": "host", "op": "eq", "value": "a.com"}]})]),
                     {(S1, "c0"), (S1, "f1")}, id="a linked profile yields its cookie and its fp"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, fp=0), event_row(cookie=1, dt=-DAY, fp=0),
                           event_row(cookie=1, dt=-DAY, fp=1), event_row(fp=1, dt=-HOUR, path="/a")],
                          [seg({"where": [{"field": "path", "op": "prefix", "value": "/a"}]})]),
                     {(S1, "c0"), (S1, "c1"), (S1, "f0"), (S1, "f1")}, id="links are transitive"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, is_bot=1), event_row(cookie=1, dt=-DAY, is_bot=1),
                           event_row(cookie=1, dt=-2 * DAY)],
                          [seg({**ANY_EVENT, "min_count": 2})]),
                     set(), id="a bot event does not count"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, can_profile=0), event_row(cookie=1, dt=-DAY)],
                          [seg(ANY_EVENT)]),
                     {(S1, "c1")}, id="no profiling consent, no membership"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY), event_row(cookie=1, dt=-DAY), event_row(fp=2, dt=-DAY),
                           event_row(cookie=3, fp=2, dt=-DAY)],
                          [seg(ANY_EVENT)], optout_cookies=[0], optout_fps=[2]),
                     {(S1, "c1")}, id="an opted-out ID's events do not count (nor link)"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, categories=["3"]), event_row(cookie=1, dt=-DAY,
                                                                                      categories=["10", "99"])],
                          [seg({"where": [{"field": "category", "op": "is", "value": "1"}]}),
                           seg({"where": [{"field": "category", "op": "is", "value": "3"}]}, id=S2)],
                          taxonomy=TAXONOMY),
                     {(S1, "c0"), (S2, "c0")}, id="category is covers descendants"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, props={"k": "a"}), event_row(cookie=1, dt=-DAY)],
                          [seg({"where": [{"field": "prop.k", "op": "eq", "value": ""}]})]),
                     {(S1, "c1")}, id="a missing prop reads as empty"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY), event_row(cookie=1, dt=-9 * DAY)],
                          [seg(ANY_EVENT, lookback_days=2, status="paused"),
                           seg({"not": {"segment": S1}}, id=S2, lookback_days=10)]),
                     {(S2, "c1")}, id="a paused segment is not built but may be referenced"),
    ]


def _edges_of_bounds() -> list[Any]:
    day_start = -12 * HOUR  # as_of is 12:00 UTC in these cases
    return [
        pytest.param(Case([event_row(cookie=0, dt=day_start), event_row(cookie=0, dt=day_start - 1),
                           event_row(cookie=1, dt=day_start + 1), event_row(cookie=1, dt=0)],
                          [seg({**ANY_EVENT, "min_days": 2})], as_of_offset=12 * HOUR),
                     {(S1, "c0")}, id="min_days counts UTC dates"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, engaged_ms=600), event_row(cookie=0, dt=-HOUR,
                                                                                   engaged_ms=400),
                           event_row(cookie=1, dt=-DAY, engaged_ms=999)],
                          [seg({**ANY_EVENT, "min_engaged_ms": 1000})]),
                     {(S1, "c0")}, id="min_engaged_ms sums"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY), event_row(cookie=0, dt=-HOUR),
                           event_row(cookie=1, dt=-DAY), event_row(cookie=1, dt=-HOUR), event_row(cookie=1, dt=0),
                           event_row(cookie=2, dt=-HOUR)],
                          [seg({**ANY_EVENT, "min_count": 2, "max_count": 2})]),
                     {(S1, "c0")}, id="min_count and max_count are inclusive"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY, referrer_host="go.com"),
                           event_row(cookie=1, dt=-DAY, referrer_host="g.com")],
                          [seg({"where": [{"field": "referrer_host", "op": "regex", "value": "g.c"}]})]),
                     {(S1, "c1")}, id="regex is a search with RE2 dots"),
    ]


def _edges_of_following() -> list[Any]:
    """A second build an hour later, the same day: it recomputes only the profiles it finds
    touched, and each case changes a profile in one of the ways it must find."""
    host = {"where": [{"field": "host", "op": "eq", "value": "a.com"}]}
    later = {"later": HOUR, "as_of_offset": 12 * HOUR}
    return [
        pytest.param(Case([event_row(cookie=0, dt=-3 * DAY - 10 * HOUR)], [seg({**ANY_EVENT, "within_days": 3})],
                          **later),
                     {(S1, "c0")}, id="following: windows do not move within a day"),
        pytest.param(Case([event_row(cookie=0, dt=HOUR // 2, host="a.com"), event_row(cookie=1, dt=-DAY)],
                          [seg(host)], **later),
                     {(S1, "c0")}, id="following: an event since the last build"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY)], [seg(host)], **later,
                          late_events=[event_row(cookie=0, dt=-2 * DAY, host="a.com")]),
                     {(S1, "c0")}, id="following: a late event on a rolled-up day"),
        pytest.param(Case([event_row(cookie=0, dt=-DAY), event_row(cookie=1, dt=-3 * HOUR, host="a.com")], [seg(host)],
                          **later, late_events=[event_row(cookie=0, dt=-2 * HOUR, host="a.com")]),
                     {(S1, "c0"), (S1, "c1")}, id="following: a late event earlier today"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-DAY), event_row(fp=0, dt=-HOUR, host="a.com"),
                           event_row(cookie=1, fp=1, dt=-DAY), event_row(fp=1, dt=-HOUR, host="a.com")],
                          [seg(host)], **later, late_optout_fps=[0]),
                     {(S1, "c1"), (S1, "f1")}, id="following: a first-party ID opted out"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-2 * DAY, host="a.com"), event_row(cookie=1, dt=-DAY)],
                          [seg(host)], **later, late_optout_fps=[0]),
                     set(), id="following: a first-party ID opted out whose events a cookie's rolled-up day holds"),
        pytest.param(Case([event_row(fp=0, dt=-HOUR, host="a.com"), event_row(cookie=1, dt=-DAY)],
                          [seg(host)], **later, late_events=[event_row(cookie=1, fp=0, dt=-2 * HOUR)]),
                     {(S1, "c1"), (S1, "f0")}, id="following: a link that arrived late joins a profile"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-2 * DAY), event_row(fp=0, dt=-2 * HOUR, host="a.com"),
                           event_row(cookie=1, dt=-DAY, host="a.com")], [seg(host)], **later, erased_fps=[0]),
                     {(S1, "c1")}, id="following: an erased first-party ID leaves the cookie it was linked to"),
        pytest.param(Case([event_row(cookie=0, fp=0, dt=-2 * DAY, host="a.com"),
                           event_row(cookie=0, dt=-2 * DAY + HOUR, host="a.com"), event_row(cookie=1, dt=-DAY)],
                          [seg({**host, "min_count": 1, "max_count": 1})], **later, erased_fps=[0]),
                     {(S1, "c0")}, id="following: a cookie's day rolled up again without an erased ID's event"),
        pytest.param(Case([event_row(cookie=2, fp=0, dt=-DAY), event_row(fp=0, dt=-HOUR, host="a.com"),
                           event_row(cookie=2, dt=-2 * HOUR, host="a.com")],
                          [seg({**host, "min_count": 2})], **later,
                          late_events=[event_row(cookie=1, fp=0, dt=-2 * HOUR)]),
                     {(S1, "c1"), (S1, "c2"), (S1, "f0")}, id="following: a late link joins two profiles"),
    ]


@pytest.mark.parametrize(("case", "members"), _edges_of_following())
def test_a_following_build_finds_what_changed(warehouse: Client, live_server: LiveServer, case: Case,
                                              members: set[tuple[int, str]]) -> None:
    outcome = run_case(warehouse, case, live_server.crumb.runtime.redis)
    assert outcome.followed
    assert outcome.named(outcome.expected) == members, "the oracle is wrong"
    assert_agrees(outcome)


CHAIN = 60


def _long_chain() -> Case:
    # c0 - f0 - c1 - f1 - ... - c59 - f59: 119 links, far more than the builder's link rounds.
    n = CHAIN
    chain = [event_row(cookie=i, fp=i, dt=-DAY) for i in range(n)]
    chain += [event_row(cookie=i + 1, fp=i, dt=-DAY) for i in range(n - 1)]
    return Case(chain + [event_row(fp=n - 1, dt=-HOUR, host="a.com")],
                [seg({"where": [{"field": "host", "op": "eq", "value": "a.com"}]})])


@pytest.mark.parametrize(("case", "members"), [*_edges_of_windows(), *_edges_of_logic(), *_edges_of_bounds()])
def test_edges(warehouse: Client, case: Case, members: set[tuple[int, str]]) -> None:
    outcome = run_case(warehouse, case)
    assert outcome.named(outcome.expected) == members, "the oracle is wrong"
    assert_agrees(outcome)


def test_a_long_chain_of_links_is_one_profile(warehouse: Client) -> None:
    """A profile whose IDs are linked through a long chain (more hops than the builder's rounds)."""
    outcome = run_case(warehouse, _long_chain())
    assert outcome.named(outcome.expected) == {(S1, f"{k}{i}") for k in "cf" for i in range(CHAIN)}
    assert_agrees(outcome)
    # Logarithmic, not linear, in the chain's 120 IDs: min-label propagation took up to ~60 here.
    assert 1 <= outcome.link_rounds <= 16
