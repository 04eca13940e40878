"""Rule trees → one ClickHouse plan for all segments. Pure: no I/O.

How a build evaluates a hundred segments in one pass over the events:

1. Every distinct predicate (`host prefix "shop."`, `category is 483`, ...) is numbered, every
   distinct *matcher* (a set of predicates a row must satisfy together, and a window), and every
   distinct condition (a matcher and its bounds: counts, distinct days, engaged time).
2. One scan evaluates, per row, each predicate once (on LowCardinality columns ClickHouse
   evaluates them per dictionary value, not per row) and each matcher as a boolean.
3. Per ID, the matchers a row met are OR-ed into bit words; counts, day bitmasks and engaged
   time are aggregated only for the matchers whose conditions have bounds on them. A profile of
   linked IDs merges its IDs' words and aggregates (all of them merge by OR or sum).
4. Each condition is then a bit test plus its bounds, each segment a boolean over conditions,
   and the members are written in the same INSERT ... SELECT: nothing per (ID, condition) is
   ever materialised.

Every value a user wrote travels as a bound parameter. What reaches the SQL text is column
names from the allow-list, the numbers this module assigns, and SQL keywords.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

from audiences.definitions import (
    All,
    Any_,
    Condition,
    Not,
    Op,
    Predicate,
    Segment,
    SegmentRef,
    SegmentSet,
    references,
)
from collector.categories import ContentTaxonomy

EVENTS = "crumb.events"
VALUES = "crumb._build_values"
PROFILE_OF = "crumb._build_profile_of"
PROFILE_IDS = "crumb._build_profile_ids"
MEMBERS_NEXT = "crumb.id_segments_next"
OPTOUTS = "crumb.optouts"  # the ledger of opted-out IDs (the collector's)
# The opted-out IDs as a build read them at its start, one row per ID: every statement of its
# rule segments excludes exactly these, and its state records exactly these
# (`rollup.optout_digest`). An opt-out recorded while a build runs then reaches none of them,
# and the next build takes it as new, instead of reaching some (its links dropped, its rows
# counted) and not others. (The lookalike step reads the ledger: it scores every profile anew in
# every build, so a later opt-out leaves nothing behind there.)
BUILD_OPTOUTS = "crumb._build_optouts"
# The hour rows a build reads besides the rolled-up days' totals (`RollupRead.totals`): as_of's day
# of events, rolled up per ID and hour by the build (`today_statement`); in a build that recomputes
# some IDs only, those IDs' hours.
HOURS = "crumb._build_hours"
# Per typed ID, the segments it was in at the last build and when it entered each. A build's
# members keep their entry time, so an exit closes its history interval without searching the
# history for it.
ENTERED = "crumb._build_entered"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
DAY_BITS = 64  # a window of up to 63 days keeps its distinct days as a bitmask; a longer one, as a set


@dataclass(frozen=True)
class Tables:
    """Where the statements read and write. A build uses `BUILD`; a preview, scratch tables of its own."""

    events: str
    values: str
    profile_of: str
    profile_ids: str
    members: str
    optouts: str  # the opt-outs it excludes: a snapshot of the ledger (`snapshot_optouts`)

    @classmethod
    def scratch(cls, prefix: str) -> Tables:
        return cls(*(f"{prefix}{f.name}" for f in fields(cls)))


BUILD = Tables(EVENTS, VALUES, PROFILE_OF, PROFILE_IDS, MEMBERS_NEXT, BUILD_OPTOUTS)

# Allow-listed event fields and the SQL that reads each.
COLUMNS = {
    "url": "url", "path": "path", "host": "host", "referrer_host": "referrer_host",
    "utm_source": "utm_source", "utm_medium": "utm_medium", "utm_campaign": "utm_campaign",
    "utm_term": "utm_term", "utm_content": "utm_content", "type": "type", "site": "site",
    "device_type": "device_type", "os": "os", "browser": "browser",
}

# Who may be in a segment at all: no bots, profiling consent, an ID.
ELIGIBLE = "is_bot = 0 AND can_profile = 1 AND (cookie_id != '' OR fp_id != '')"
# The typed ID of a row: the third-party cookie when there is one (an event with both IDs links them).
ROW_ID = "if(cookie_id != '', concat('c:', cookie_id), concat('f:', fp_id))"


@dataclass(frozen=True)
class Matcher:
    """What one row must satisfy: all of `predicates`, inside the last `window_days`."""

    number: int
    predicates: tuple[int, ...]
    window_days: int


@dataclass(frozen=True)
class ConditionSpec:
    number: int
    predicates: tuple[int, ...]
    window_days: int
    min_count: int
    max_count: int | None
    min_days: int | None
    min_engaged_ms: int | None
    matcher: int = 0  # the number of its Matcher

    @property
    def counts(self) -> bool:
        return self.min_count > 1 or self.max_count is not None


@dataclass(frozen=True)
class Referenced:
    level: int  # 0 when it refers to no segment; else one more than the deepest it refers to
    boolean: str  # SQL over `h<condition>` and `seg<id>`


@dataclass
class Plan:
    """Numbered predicates, matchers and conditions, and each segment's boolean over conditions."""

    segments: list[Segment]
    predicates: list[Predicate] = field(default_factory=list)  # number = index + 1
    category_values: dict[int, list[str]] = field(default_factory=dict)  # `is` → the IDs it covers
    matchers: list[Matcher] = field(default_factory=list)  # number = index + 1
    conditions: list[ConditionSpec] = field(default_factory=list)  # number = index + 1
    expressions: dict[int, str] = field(default_factory=dict)  # segment id → SQL over `h<condition>`
    # A segment another refers to: its boolean, a column `seg<id>` the others read. Pasted in at
    # each reference instead (or as an alias, which ClickHouse expands), a chain of segments each
    # referring twice to the last doubled the statement per link, past ClickHouse's limits at 14.
    referenced: dict[int, Referenced] = field(default_factory=dict)

    @property
    def max_window_days(self) -> int:
        return max((c.window_days for c in self.conditions), default=1)

    def fields(self) -> list[str]:
        return sorted({p.field for p in self.predicates})

    def bounded(self, bound: str) -> list[int]:
        """The matchers that some condition bounds by `bound` ('counts', 'min_days', 'min_engaged_ms')."""
        return sorted({c.matcher for c in self.conditions if getattr(c, bound)})


def compile_segments(segments: SegmentSet, taxonomy: ContentTaxonomy | None = None) -> Plan:
    """Number the predicates, matchers and conditions of the active segments and write their booleans."""
    plan = Plan(segments=[s for s in segments.active() if s.kind == "rule"])  # lookalikes are a model's
    predicate_numbers: dict[str, int] = {}
    matcher_numbers: dict[tuple[tuple[int, ...], int], int] = {}
    condition_numbers: dict[tuple[Any, ...], int] = {}

    def predicate(p: Predicate) -> int:
        key = p.model_dump_json()
        if key not in predicate_numbers:
            plan.predicates.append(p)
            predicate_numbers[key] = len(plan.predicates)
            if p.op is Op.IS:
                plan.category_values[len(plan.predicates)] = _category_ids(str(p.value), taxonomy)
        return predicate_numbers[key]

    def matcher(numbers: tuple[int, ...], window_days: int) -> int:
        if (numbers, window_days) not in matcher_numbers:
            plan.matchers.append(Matcher(len(plan.matchers) + 1, numbers, window_days))
            matcher_numbers[numbers, window_days] = len(plan.matchers)
        return matcher_numbers[numbers, window_days]

    def condition(c: Condition, lookback_days: int) -> int:
        numbers = tuple(sorted({predicate(p) for p in c.where}))
        spec = (numbers, c.within_days or lookback_days, c.min_count, c.max_count, c.min_days, c.min_engaged_ms)
        if spec not in condition_numbers:
            plan.conditions.append(ConditionSpec(len(plan.conditions) + 1, *spec, matcher=matcher(*spec[:2])))
            condition_numbers[spec] = len(plan.conditions)
        return condition_numbers[spec]

    def expression(segment: Segment) -> str:
        universe = condition(Condition(), segment.lookback_days)  # seen at all in the lookback
        return f"(h{universe} AND {rule(segment.rule, segment.lookback_days)})"

    def rule(node: Any, lookback_days: int) -> str:
        if isinstance(node, Condition):
            return f"h{condition(node, lookback_days)}"
        if isinstance(node, All):
            return "(" + " AND ".join(rule(child, lookback_days) for child in node.all) + ")"
        if isinstance(node, Any_):
            return "(" + " OR ".join(rule(child, lookback_days) for child in node.any) + ")"
        if isinstance(node, Not):
            return f"(NOT {rule(node.not_, lookback_days)})"
        if isinstance(node, SegmentRef):
            if node.segment not in plan.referenced:
                boolean = expression(segments.by_id[node.segment])
                plan.referenced[node.segment] = Referenced(level(node.segment), boolean)
            return f"seg{node.segment}"
        raise TypeError(f"unknown rule node {type(node).__name__}")

    def level(segment_id: int) -> int:  # its references are compiled already
        refs = [plan.referenced[ref].level for ref in references(segments.by_id[segment_id].rule)]
        return 1 + max(refs) if refs else 0

    for segment in plan.segments:
        plan.expressions[segment.id] = expression(segment)
    return plan


def _category_ids(category: str, taxonomy: ContentTaxonomy | None) -> list[str]:
    if taxonomy is not None and category in taxonomy:
        return sorted(taxonomy.descendants(category))
    return [category]


# -- SQL -------------------------------------------------------------------------------------------

Statement = tuple[str, dict[str, Any]]

# ClickHouse adds the comparisons an AND chain implies (a < b AND b < c: a < c). Over the hundreds
# of ANDs of the conditions and segments, that pass was most of planning the membership statement
# (0.56 s with no rows to read, against 0.23 s without it); our comparisons are against
# constants, so it never finds anything.
PLANNING_SETTINGS = {"optimize_and_compare_chain": 0}
# The statements that aggregate events (rolling them up per ID and hour, a preview's membership
# statement) or many rolled-up rows (the totals) run once a day or an hour: ClickHouse's JIT would
# wait for a third run of the same expressions before compiling them, so it is asked to compile at
# once (the aggregates of one row then update in one pass, not one pass per function). Measured
# when the membership statement read the window's events: without filter push-down it ran faster
# in each of five paired runs on the 100-segment benchmark (median 10.5 s against 12.2 s). The
# totals of that benchmark still take 3.8-4.3 s so, against 4.7 s without compiling.
AGGREGATION_SETTINGS = {**PLANNING_SETTINGS, "min_count_to_compile_expression": 0,
                        "min_count_to_compile_aggregate_expression": 0, "query_plan_filter_push_down": 0}
# The members step's statement, in a full build, compiles no expressions: it aggregates a row per
# ID (their totals, and as_of's day's hours), and compiling its expressions, anew in each full
# build (their constants are the day's), cost more than it saved. The 100-segment benchmark's
# members step took 3.9-4.1 s against 5.7-6.5 s in a nightly full build, and 3.2-4.0 s against
# 4.4-4.7 s in a first build (separate processes, interleaved).
MEMBERS_SETTINGS = {**AGGREGATION_SETTINGS, "compile_expressions": 0}
# A build following the last one (about 1% of the IDs) compiles no expressions: compiling them
# cost more than it saved there, and compiled them again in each new process (the
# benchmark's hourly members statement: 0.16-0.30 s without, 0.16-0.61 s with, 10 interleaved runs).
FOLLOWING_SETTINGS = {**PLANNING_SETTINGS, "compile_expressions": 0}
# The lookup's `WHERE bits != 0` would be pushed below its DISTINCT, testing every row, not every
# distinct value: measured 2.1 s against 0.56 s for the path of the 100-segment benchmark.
VALUES_SETTINGS = {"query_plan_filter_push_down": 0}


def opted_in(optouts: str = OPTOUTS) -> str:
    """Events rows of IDs opted in: the rows of an ID that opted out count nowhere."""
    return f"cookie_id NOT IN (SELECT id FROM {optouts}) AND fp_id NOT IN (SELECT id FROM {optouts})"


def opted_out_typed(optouts: str) -> str:
    """The opted-out IDs, typed as a row's ID is (both types of each: an opt-out names no type)."""
    return f"SELECT arrayJoin([concat('c:', id), concat('f:', id)]) AS typed FROM {optouts}"


def snapshot_optouts(tables: Tables) -> str:
    """The statement that takes the build's (or a preview's) snapshot of the opt-outs."""
    return (f"CREATE TABLE {tables.optouts} ENGINE = Memory AS "
            f"SELECT id, max(opted_out_at) AS opted_out_at FROM {OPTOUTS} GROUP BY id")


def window_start(as_of_ms: int, days: int) -> int:
    """Where a window of `days` ending at `as_of_ms` starts (inclusive): at the start of the UTC
    day, `days` before as_of's day. A window counts as_of's day so far and the `days` whole days
    before it, as DMPs count "the last N days" (a 7-day window of a build on the 9th at 14:37
    reaches back to the 2nd, 00:00). So every past day is wholly in or out of every window, and a
    build reads it rolled up (`audiences.rollup`) rather than as events; and within a day no event
    leaves any window, so an hourly build recomputes only the IDs with new events
    (`audiences.incremental`)."""
    return as_of_ms - as_of_ms % DAY_MS - days * DAY_MS


def window_filter(optouts: str = OPTOUTS) -> str:
    """The eligible events rows of the window (parameters `since_ms`, `as_of_ms`) of IDs opted in:
    by the ledger, or by a build's snapshot of it."""
    return (f"{ELIGIBLE} AND ts >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC') "
            f"AND ts <= fromUnixTimestamp64Milli({{as_of_ms:Int64}}, 'UTC') AND {opted_in(optouts)}")


def window_params(plan: Plan, as_of_ms: int) -> dict[str, Any]:
    return {"since_ms": window_start(as_of_ms, plan.max_window_days), "as_of_ms": as_of_ms}


def predicate_sql(p: Predicate, number: int, value: str = "v") -> str:
    """A predicate over one value (`v` unless told), its value bound as parameter `p<number>`."""
    param = f"p{number}"
    if p.op in (Op.IN, Op.IS):
        return f"{value} IN {{{param}:Array(String)}}"
    return {
        Op.EQ: f"{value} = {{{param}:String}}",
        Op.NEQ: f"{value} != {{{param}:String}}",
        Op.PREFIX: f"startsWith({value}, {{{param}:String}})",
        Op.CONTAINS: f"position({value}, {{{param}:String}}) > 0",
        Op.REGEX: f"match({value}, {{{param}:String}})",
    }[p.op]


def row_predicate_sql(plan: Plan, number: int, params: dict[str, Any]) -> str:
    """Predicate `number` on an events row, as a boolean. Categories are a list: the row matches
    when one of them does."""
    p = plan.predicates[number - 1]
    params[f"p{number}"] = plan.category_values.get(number, p.value)
    if p.field == "category":
        if p.op in (Op.IN, Op.IS):
            return f"hasAny(categories, {{p{number}:Array(String)}})"
        if p.op is Op.EQ:
            return f"has(categories, {{p{number}:String}})"
        return f"arrayExists(v -> {predicate_sql(p, number)}, categories)"
    return predicate_sql(p, number, _value_sql(plan, p.field, params))


LITERAL_OPS = (Op.EQ, Op.IN, Op.IS)
# Stored as LowCardinality: ClickHouse can evaluate a function of one per dictionary value, so
# their tests stay inline; plain String fields with patterns get a lookup table instead.
LOW_CARDINALITY = {"host", "referrer_host", "utm_source", "utm_medium", "type", "site", "device_type", "os", "browser"}


def looked_up(plan: Plan, field_name: str, numbers: list[int]) -> bool:
    """A plain String field with a test other than equality (a path prefix, a URL regex) is
    evaluated once per distinct value of the window into a lookup table, not once per row."""
    return (field_name not in LOW_CARDINALITY and field_name != "category"
            and any(plan.predicates[n - 1].op not in LITERAL_OPS for n in numbers))


@dataclass(frozen=True)
class _Chunk:
    """Up to 64 predicates of one field, at bits `offset`.. of the row's mask word `word`."""

    index: int
    field_name: str
    numbers: list[int]
    word: str
    offset: int


@dataclass
class _Layout:
    """Where each predicate and matcher lives in the per-row and per-ID columns.

    A row's predicates are bits of a few mask words (`f<k>`): each field's predicates take a run
    of bits, its equality tests one `transform` of its value giving them all, the rest a bit
    each. A matcher of a single predicate over the scan's whole window is then just that bit,
    and its presence per ID is a bit of the OR of the words; only the other matchers (several
    predicates, or a narrower window) are booleans of their own, packed into words `w<j>`.
    Per-row work and per-ID aggregates follow the number of words, not of conditions.
    """

    chunks: list[_Chunk] = field(default_factory=list)
    bit_of: dict[int, tuple[str, int]] = field(default_factory=dict)  # predicate → (word, bit)
    packed: dict[int, tuple[str, int]] = field(default_factory=dict)  # compound matcher → (word, bit)
    # Window-free, so that an hour of an ID's rows can be rolled up into one row: predicates that
    # must hold on one row together (→ a bit of an `x<j>` word), and the predicate sets whose
    # rows are counted (→ `c<i>`) or whose engaged time is summed (→ `g<i>`).
    sets: dict[tuple[int, ...], tuple[str, int]] = field(default_factory=dict)
    counted: dict[tuple[int, ...], str] = field(default_factory=dict)
    engaged: dict[tuple[int, ...], str] = field(default_factory=dict)

    @classmethod
    def of(cls, plan: Plan) -> _Layout:
        layout = cls()
        words: list[int] = []  # bits used in each mask word
        for field_name in plan.fields():
            numbers = [n for n, p in enumerate(plan.predicates, 1) if p.field == field_name]
            for start in range(0, len(numbers), 64):
                part = numbers[start:start + 64]
                word = next((w for w, used in enumerate(words) if used + len(part) <= 64), len(words))
                if word == len(words):
                    words.append(0)
                chunk = _Chunk(len(layout.chunks), field_name, part, f"f{word}", words[word])
                layout.chunks.append(chunk)
                words[word] += len(part)
                for bit, number in enumerate(part, chunk.offset):
                    layout.bit_of[number] = (chunk.word, bit)
        compound = [m.number for m in plan.matchers if not layout.plain(plan, m.number)]
        for index, number in enumerate(compound):
            layout.packed[number] = (f"w{index // 64}", index % 64)
        together = sorted({m.predicates for m in plan.matchers if len(m.predicates) > 1})
        for index, predicates in enumerate(together):
            layout.sets[predicates] = (f"x{index // 64}", index % 64)
        for bound, slots, prefix in (("counts", layout.counted, "c"), ("min_engaged_ms", layout.engaged, "g")):
            for number in plan.bounded(bound):
                slots.setdefault(plan.matchers[number - 1].predicates, f"{prefix}{len(slots)}")
        return layout

    @staticmethod
    def plain(plan: Plan, matcher: int) -> bool:
        m = plan.matchers[matcher - 1]
        return len(m.predicates) == 1 and m.window_days == plan.max_window_days

    def mask_words(self) -> list[str]:
        return list(dict.fromkeys(chunk.word for chunk in self.chunks))

    def words(self) -> list[str]:
        return sorted({word for word, _bit in self.packed.values()}, key=lambda w: int(w[1:]))

    def set_words(self) -> list[str]:
        return sorted({word for word, _bit in self.sets.values()}, key=lambda w: int(w[1:]))

    def set_test(self, predicates: tuple[int, ...]) -> str:
        """All of `predicates` held on one row (of an hour, on a rolled-up row)."""
        if not predicates:
            return "1"
        if len(predicates) == 1:
            return "bitTest({}, {})".format(*self.bit_of[predicates[0]])
        return "bitTest({}, {})".format(*self.sets[predicates])

    def hour_columns(self) -> list[tuple[str, str, str]]:
        """The rolled-up row's columns after (row_id, hour): (name, type, how an hour rolls it up)."""
        return ([(word, "UInt64", "groupBitOr") for word in [*self.mask_words(), *self.set_words()]]
                + [(name, "UInt32", "sum") for name in self.counted.values()]
                + [(name, "UInt64", "sum") for name in self.engaged.values()])

    def hour_names(self) -> list[str]:
        return [name for name, _type, _how in self.hour_columns()]

    def row_test(self, plan: Plan, matcher: int) -> str:
        """The matcher on one row."""
        if matcher in self.packed:
            return f"m{matcher}"
        word, bit = self.bit_of[plan.matchers[matcher - 1].predicates[0]]
        return f"bitTest({word}, {bit})"

    def presence(self, plan: Plan, matcher: int) -> str:
        """Some row of the ID (or profile) met the matcher: a bit of the OR-ed words."""
        if matcher in self.packed:
            return "bitTest({}_any, {})".format(*self.packed[matcher])
        return "bitTest({}_any, {})".format(*self.bit_of[plan.matchers[matcher - 1].predicates[0]])


def _mask_sql(plan: Plan, chunk: _Chunk, params: dict[str, Any], value: str = "") -> str:
    """A chunk's predicates as bits of a UInt64 (from its offset): over the events row, or over `value`."""
    parts = []
    keys: dict[str, int] = {}
    for bit, number in enumerate(chunk.numbers, chunk.offset):
        p = plan.predicates[number - 1]
        if p.op in LITERAL_OPS:
            literals = plan.category_values.get(number) or (p.value if isinstance(p.value, list) else [p.value])
            for literal in literals:
                keys[str(literal)] = keys.get(str(literal), 0) | 1 << bit
        else:
            if value:  # over the lookup's distinct values
                params[f"p{number}"] = p.value
                test = predicate_sql(p, number, value)
            else:
                test = row_predicate_sql(plan, number, params)
            parts.append(f"bitShiftLeft(toUInt64({test}), {bit})")
    if keys:
        name = f"k{chunk.numbers[0]}"
        params[f"{name}_values"], params[f"{name}_bits"] = list(keys), list(keys.values())
        table = f"{{{name}_values:Array(String)}}, {{{name}_bits:Array(UInt64)}}, toUInt64(0)"
        if chunk.field_name == "category":  # the OR over the row's categories
            parts.append(f"arrayReduce('groupBitOr', arrayMap(c -> transform(c, {table}), categories))")
        else:
            parts.append(f"transform({value or _value_sql(plan, chunk.field_name, params)}, {table})")
    return _bit_or(parts)


def _bit_or(parts: list[str]) -> str:
    return _balanced(parts, "bitOr({}, {})")


def _sum(parts: list[str]) -> str:
    return _balanced(parts, "({} + {})")


def _balanced(parts: list[str], pair: str) -> str:
    """Binary operations over many terms as a balanced tree, not a chain. ClickHouse names each
    node of an expression by its whole text: along a chain of 64 terms the names add up to 32
    times the terms' text, and planning the statement took seconds where a tree takes a tenth."""
    if not parts:
        raise ValueError("no terms to combine")
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return pair.format(_balanced(parts[:middle], pair), _balanced(parts[middle:], pair))


def _value_sql(plan: Plan, field_name: str, params: dict[str, Any]) -> str:
    """A scalar field of an events row; a prop's name is a parameter, one per name."""
    if field_name.startswith("prop."):
        key = f"prop{[f for f in plan.fields() if f.startswith('prop.')].index(field_name)}"
        params[key] = field_name[len("prop."):]
        return f"props[{{{key}:String}}]"
    return COLUMNS[field_name]


@dataclass(frozen=True)
class RollupRead:
    """A build that reads rolled-up hours (`audiences.rollup`): from `table`, every hour of the
    window before `raw_from_ms` (the start of as_of's day); the events from then on, rolled up
    the same way into the build's scratch table `HOURS` first (`today_statement`). Windows start
    at the start of a day, so no rolled-up hour is cut by one.

    The membership statement reads the rolled-up hours as `totals`: per ID, their aggregates
    (`totals_statement`). Within a day those do not change (its windows and day bits are the
    day's), so the first build of a day writes them, and the builds that follow it read the rows
    of the IDs they recompute, instead of every rolled-up hour to find theirs."""

    table: str
    raw_from_ms: int
    totals: str

    def params(self) -> dict[str, Any]:
        return {"raw_from_ms": self.raw_from_ms,
                "raw_day": dt.date.fromordinal(EPOCH_ORDINAL + self.raw_from_ms // DAY_MS)}

    def raw_rows(self) -> str:
        """The events read as events. Their day is named too: the events key starts with
        `toDate(ts)`, and its index is used for dates, not for ranges of `ts`."""
        return "(toDate(ts) >= {raw_day:Date} AND ts >= fromUnixTimestamp64Milli({raw_from_ms:Int64}, 'UTC'))"

    def totals_rows(self, optouts: str, only: str | None = None) -> str:
        """The totals of IDs opted in (by `optouts`), and with `only` (a subquery of typed IDs), of those."""
        return f"row_id NOT IN ({opted_out_typed(optouts)})" + (f" AND row_id IN {only}" if only else "")


ROLL_DAYS = "toDate(ts) IN {roll_days:Array(Date)}"


def values_statements(plan: Plan, as_of_ms: int, tables: Tables = BUILD, rollup: RollupRead | None = None,
                      roll_days: list[Any] | None = None) -> list[Statement]:
    """For each looked-up chunk: its field's distinct values → its bits, where any. The values are
    those of the rows the build reads as events (the window, or with a rollup, the rows it does
    not roll up) and of the whole days it rolls up. On `ts` alone: a value of an ineligible row
    costs a row here, nothing more."""
    rows = ("ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC')")
    scope: dict[str, Any] = window_params(plan, as_of_ms)
    if rollup is not None:
        rows = f"({rows} AND {rollup.raw_rows()})"
        scope.update(rollup.params())
    if roll_days:
        rows = f"({rows} OR {ROLL_DAYS})"
        scope["roll_days"] = roll_days
    statements = []
    for chunk in _Layout.of(plan).chunks:
        if looked_up(plan, chunk.field_name, chunk.numbers):
            params: dict[str, Any] = {**scope, "chunk": chunk.index}
            value = _value_sql(plan, chunk.field_name, params)
            statements.append((
                f"INSERT INTO {tables.values} (chunk, value, bits) SELECT {{chunk:UInt16}}, v, bits FROM ("
                f"SELECT v, {_mask_sql(plan, chunk, params, 'v')} AS bits FROM ("
                f"SELECT DISTINCT {value} AS v FROM {tables.events} WHERE {rows})) WHERE bits != 0", params))
    return statements


def event_columns(plan: Plan, layout: _Layout, params: dict[str, Any], tables: Tables) -> list[str]:
    """Per events row, the columns of an hour row (`_Layout.hour_columns`): the mask words, the
    words of predicates that hold together (`x<j>`), and the row's contribution to each count
    (`c<i>`) and engaged-time sum (`g<i>`). Rolled up over an hour of an ID, they OR and add."""
    words = _mask_words(plan, layout, params, tables)
    return [f"{sql} AS {word}" for word, sql in words.items()] + _word_columns(layout)


def _mask_words(plan: Plan, layout: _Layout, params: dict[str, Any], tables: Tables) -> dict[str, str]:
    """Per events row, its predicates' bits in mask words: word (`f<k>`) → its expression."""
    parts: dict[str, list[str]] = {}
    for chunk in layout.chunks:
        if looked_up(plan, chunk.field_name, chunk.numbers):
            value = _value_sql(plan, chunk.field_name, params)
            part = f"joinGet('{tables.values}', 'bits', toUInt16({chunk.index}), {value})"
        else:
            part = _mask_sql(plan, chunk, params)
        parts.setdefault(chunk.word, []).append(part)
    return {word: _bit_or(word_parts) for word, word_parts in parts.items()}


def _word_columns(layout: _Layout) -> list[str]:
    """The columns of an hour row read off a row's mask words (and `engaged_ms`): `x<j>`, `c<i>`
    and `g<i>` (`event_columns`)."""
    columns = []
    for word in layout.set_words():
        bits = _sum([
            f"bitShiftLeft(toUInt64({' AND '.join('bitTest({}, {})'.format(*layout.bit_of[n]) for n in predicates)}),"
            f" {bit})" for predicates, (w, bit) in layout.sets.items() if w == word])
        columns.append(f"{bits} AS {word}")
    columns += [f"toUInt32({layout.set_test(predicates)}) AS {name}" for predicates, name in layout.counted.items()]
    columns += [f"if({layout.set_test(predicates)}, engaged_ms, 0) AS {name}"
                for predicates, name in layout.engaged.items()]
    return columns


def rollup_columns(plan: Plan) -> list[tuple[str, str]]:
    """The columns of the rollup table for this plan: (name, type)."""
    return [("row_id", "String"), ("hour", "DateTime('UTC')"), ("links", "Array(String)"),
            *((name, kind) for name, kind, _how in _Layout.of(plan).hour_columns())]


def roll_statement(plan: Plan, table: str, tables: Tables = BUILD, id_days: str | None = None) -> Statement:
    """Whole days of events (parameter `roll_days`), rolled up per ID and hour into `table`. The
    statement's text and parameters, but for the days, are what the rolled rows depend on. With
    `id_days` (a table of cookies' `row_id` and a `day`), only those cookies' days: found by the
    events' key (a day, then the cookie), not by reading the days whole."""
    where = f"{ELIGIBLE} AND {ROLL_DAYS} AND {opted_in(tables.optouts)}"
    if id_days:
        where += (f" AND cookie_id IN (SELECT substring(row_id, 3) FROM {id_days} WHERE startsWith(row_id, 'c:'))"
                  f" AND ({ROW_ID}, toDate(ts)) IN (SELECT row_id, day FROM {id_days})")
    return _roll(plan, table, tables, where, {})


def today_statement(plan: Plan, as_of_ms: int, rollup: RollupRead, tables: Tables = BUILD,
                    only: str | None = None) -> Statement:
    """The events of as_of's day up to as_of (of the IDs in `only`, a subquery of typed IDs, when
    given), rolled up per ID and hour into `HOURS`, as `roll_statement` rolls past days.

    The membership statement then reads rows of one shape, none of them an event. That is what
    makes it cheap to plan: ClickHouse names each computed column by its whole expression, and
    the per-event mask words (a `transform` with its value lists, ~1.5 KB of text each) were
    named again in every one of the hundreds of columns built on them. With no rows to read, that
    statement took 1.9 s, and 0.7 s reading hour rows only; rolling the day first costs ~0.15 s."""
    params = {**window_params(plan, as_of_ms), **rollup.params()}
    rows = f"{window_filter(tables.optouts)} AND {rollup.raw_rows()}" + (f" AND {ROW_ID} IN {only}" if only else "")
    return _roll(plan, HOURS, tables, rows, params)


def totals_statement(plan: Plan, as_of_ms: int, rollup: RollupRead, part: tuple[int, int] | None = None,
                     only: str | None = None) -> Statement:
    """Per ID, the aggregates of its rolled-up hours of the window, as the membership statement
    takes them per ID (`_aggregates`), with the first-party IDs it was seen with: the SELECT of
    `rollup.totals` (of every ID: opted-out IDs are left out where it is read). It holds for
    as_of's day: its windows and day bits are that day's. With `part` (k, n), of the IDs whose
    hash is k modulo n only (parameters `part`, `parts`); with `only` (a subquery of typed IDs),
    of those."""
    params: dict[str, Any] = {**window_params(plan, as_of_ms), **rollup.params()}
    layout = _Layout.of(plan)
    hours = ", ".join(["row_id", "toDateTime64(hour, 3, 'UTC') AS t", "links", *layout.hour_names()])
    window = ("hour >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC') "
              "AND hour < fromUnixTimestamp64Milli({raw_from_ms:Int64}, 'UTC')")
    if part:
        params["part"], params["parts"] = part
        window = f"cityHash64(row_id) % {{parts:UInt32}} = {{part:UInt32}} AND {window}"
    if only:
        window = f"row_id IN {only} AND {window}"
    per_id, _names = _per_id(plan, layout, as_of_ms, params, f"SELECT {hours} FROM {rollup.table} WHERE {window}",
                             links=True)
    return per_id, params


def _per_id(plan: Plan, layout: _Layout, as_of_ms: int, params: dict[str, Any], source: str,
            links: bool = False) -> tuple[str, list[str]]:
    """Per ID, the aggregates of `source`'s hour rows (`_aggregates`, each window's test and day
    bits as of as_of), and with `links`, the first-party IDs it was seen with; and the aggregates'
    names. The one query a build's totals and its membership statement both total IDs with."""
    rows = ", ".join(layout.hour_names() + _window_columns(plan, layout, as_of_ms, params))
    per_id = [id_side for id_side, _profile_side in _aggregates(plan, layout, _Bounded.of(plan))]
    names = [aggregate.rsplit(" AS ", 1)[1] for aggregate in per_id]
    if links:
        per_id.insert(0, "groupUniqArrayArray(links) AS links")
    return (f"SELECT row_id, {', '.join(per_id)} FROM (SELECT row_id, t, {'links, ' if links else ''}{rows} "
            f"FROM ({source})) GROUP BY row_id"), names


def _roll(plan: Plan, table: str, tables: Tables, where: str, params: dict[str, Any]) -> Statement:
    layout = _Layout.of(plan)
    # `links`: the first-party IDs a cookie was seen with, for the profiles (the row's own ID is
    # the cookie whenever there is one).
    rolled = ", ".join(["row_id", "toStartOfHour(ts) AS hour",
                        "groupUniqArrayIf(fp_id, cookie_id != '' AND fp_id != '') AS links",
                        *(f"{how}({name}) AS {name}" for name, _kind, how in layout.hour_columns())])
    # The mask words are computed in a query of their own, and the other columns read them as
    # columns. As aliases, each word's expression (a `transform` with its value lists) was repeated,
    # and planned, in every column built on it: rolling as_of's day up planned in 0.23 s, against
    # 0.11 s so, and a day of the 100-segment benchmark rolled in 0.31 s, against 0.18 s.
    words = _mask_words(plan, layout, params, tables)
    events = ", ".join([f"{ROW_ID} AS row_id", "ts", "cookie_id", "fp_id", "engaged_ms",
                        *(f"{sql} AS {word}" for word, sql in words.items())])
    rows = ", ".join(["row_id", "ts", "cookie_id", "fp_id", *words, *_word_columns(layout)])
    sql = (f"INSERT INTO {table} ({', '.join(['row_id', 'hour', 'links', *layout.hour_names()])}) "
           f"SELECT {rolled} FROM (SELECT {rows} FROM (SELECT {events} FROM {tables.events} WHERE {where})) "
           "GROUP BY row_id, hour")
    return sql, params


def _source_sql(plan: Plan, layout: _Layout, params: dict[str, Any], tables: Tables,
                rollup: RollupRead | None, only: str | None = None) -> str:
    """The rows a build aggregates, in the hour row's columns with their time `t`: the events,
    or with `rollup`, the hours of as_of's day (`HOURS`: the rolled-up days are read as their
    totals). With `only` (a subquery of typed IDs), the rows of those IDs (all that `HOURS` holds)."""
    if rollup is None:
        columns = ", ".join([f"{ROW_ID} AS row_id", "ts AS t", *event_columns(plan, layout, params, tables)])
        return (f"SELECT {columns} FROM {tables.events} WHERE {window_filter(tables.optouts)}"
                + (f" AND {ROW_ID} IN {only}" if only else ""))
    params.update(rollup.params())
    rolled = ", ".join(["row_id", "toDateTime64(hour, 3, 'UTC') AS t", *layout.hour_names()])
    return f"SELECT {rolled} FROM {HOURS}"


def _window_columns(plan: Plan, layout: _Layout, as_of_ms: int, params: dict[str, Any]) -> list[str]:
    """Per row (an event, or a rolled-up hour: `t` is its time, or its hour's start): each window
    narrower than the scan's (`in<days>`), each compound matcher (`m<n>`) and their words, and the
    row's day as a bit (`day_bit`) and a date (`day`). A rolled-up hour is never cut by a window:
    windows start at the start of a day (`window_start`)."""
    columns = []
    for days in sorted({m.window_days for m in plan.matchers if m.window_days < plan.max_window_days}):
        params[f"since{days}"] = window_start(as_of_ms, days)
        columns.append(f"t >= fromUnixTimestamp64Milli({{since{days}:Int64}}, 'UTC') AS in{days}")
    for number in layout.packed:
        m = plan.matchers[number - 1]
        tests = [layout.set_test(m.predicates)] if m.predicates else []
        if m.window_days < plan.max_window_days:
            tests.append(f"in{m.window_days}")
        columns.append(f"{' AND '.join(tests) or '1'} AS m{number}")
    for word in layout.words():
        bits = _sum([f"bitShiftLeft(toUInt64(m{number}), {bit})"
                     for number, (w, bit) in layout.packed.items() if w == word])
        columns.append(f"{bits} AS {word}")
    # Days before as_of, 0 for as_of's own date: bit d of a day mask. Clamped so that rows of a
    # longer window do not shift past the word (their masks are never read).
    columns.append(f"toDate(t) AS day, bitShiftLeft(toUInt64(1), least(toUInt8(dateDiff('day', day, "
                   f"toDate(fromUnixTimestamp64Milli({{as_of_ms:Int64}}, 'UTC')))), {DAY_BITS - 1})) AS day_bit")
    return columns


HALF = 32  # two counters, or two day masks of windows up to 31 days, share one UInt64 aggregate
LOW_HALF = 2**HALF - 1


def _halves(matchers: list[int], prefix: str) -> dict[int, tuple[str, int]]:
    """Matchers paired into UInt64 aggregates: matcher → (aggregate name, shift of its half)."""
    return {m: (f"{prefix}{i // 2}", HALF * (i % 2)) for i, m in enumerate(matchers)}


def _read_half(name: str, shift: int) -> str:
    return f"bitShiftRight({name}, {shift})" if shift else f"bitAnd({name}, {LOW_HALF})"


@dataclass
class _Bounded:
    """Where the bounded aggregates of each matcher are: counts and short day masks by halves
    (a count never nears 2^32 events; a window of 31 days has at most 32 dates), the rest whole."""

    counts: dict[int, tuple[str, int]]
    short_days: dict[int, tuple[str, int]]
    long_days: list[int]  # 32 to 63 days: a UInt64 mask each
    day_sets: list[int]  # longer: the set of dates
    engaged: list[int]

    @classmethod
    def of(cls, plan: Plan) -> _Bounded:
        days = plan.bounded("min_days")
        window = {m: plan.matchers[m - 1].window_days for m in days}
        return cls(
            counts=_halves(plan.bounded("counts"), "n"),
            short_days=_halves([m for m in days if window[m] < HALF], "d"),
            long_days=[m for m in days if HALF <= window[m] < DAY_BITS],
            day_sets=[m for m in days if window[m] >= DAY_BITS],
            engaged=plan.bounded("min_engaged_ms"),
        )

    def count(self, matcher: int) -> str:
        return _read_half(*self.counts[matcher])

    def days(self, matcher: int) -> str:
        if matcher in self.short_days:
            return f"bitCount({_read_half(*self.short_days[matcher])})"
        return f"bitCount(D{matcher})" if matcher in self.long_days else f"length(D{matcher})"


def _aggregates(plan: Plan, layout: _Layout, bounded: _Bounded) -> list[tuple[str, str]]:
    """(per ID, per profile) aggregates: the second merges the first over a profile's IDs."""
    # `<mask>_any`: a mask's OR over rows, named apart from the row's mask that other aggregates read.
    aggregates = [(f"groupBitOr({name}) AS {name}_any", f"groupBitOr({name}_any) AS {name}_any")
                  for name in [*layout.mask_words(), *layout.words()]]

    def packed(slots: dict[int, tuple[str, int]], term: str) -> dict[str, str]:
        terms: dict[str, list[str]] = {}
        for m, (name, shift) in slots.items():
            value = term.format(layout.row_test(plan, m))
            terms.setdefault(name, []).append(f"bitShiftLeft({value}, {shift})" if shift else value)
        return {name: " + ".join(parts) for name, parts in terms.items()}

    def windowed(matcher: int, column: str) -> str:
        """A count or a sum of the matcher's predicates, taken only where the row is in its window."""
        m = plan.matchers[matcher - 1]
        return f"if(in{m.window_days}, {column}, 0)" if m.window_days < plan.max_window_days else column

    counts: dict[str, list[str]] = {}
    for m, (name, shift) in bounded.counts.items():
        value = f"toUInt64({windowed(m, layout.counted[plan.matchers[m - 1].predicates])})"
        counts.setdefault(name, []).append(f"bitShiftLeft({value}, {shift})" if shift else value)
    for name, parts in counts.items():
        aggregates.append((f"sum({' + '.join(parts)}) AS {name}", f"sum({name}) AS {name}"))
    for name, mask in packed(bounded.short_days, "if({}, day_bit, 0)").items():
        aggregates.append((f"groupBitOr({mask}) AS {name}", f"groupBitOr({name}) AS {name}"))
    for m in bounded.long_days:
        test = layout.row_test(plan, m)
        aggregates.append((f"groupBitOr(if({test}, day_bit, 0)) AS D{m}", f"groupBitOr(D{m}) AS D{m}"))
    for m in bounded.day_sets:
        test = layout.row_test(plan, m)
        aggregates.append((f"groupUniqArrayIf(day, {test}) AS D{m}", f"groupUniqArrayArray(D{m}) AS D{m}"))
    for m in bounded.engaged:
        total = windowed(m, layout.engaged[plan.matchers[m - 1].predicates])
        aggregates.append((f"sum({total}) AS e{m}", f"sum(e{m}) AS e{m}"))
    return aggregates


def _held_columns(plan: Plan, layout: _Layout, bounded: _Bounded, params: dict[str, Any]) -> list[str]:
    """Per profile: condition `h<n>` holds when its matcher met a row and its bounds hold."""
    columns = []
    for c in plan.conditions:
        tests = [layout.presence(plan, c.matcher)]
        if c.min_count > 1:
            params[f"min_n{c.number}"] = c.min_count
            tests.append(f"{bounded.count(c.matcher)} >= {{min_n{c.number}:UInt64}}")
        if c.max_count is not None:
            params[f"max_n{c.number}"] = c.max_count
            tests.append(f"{bounded.count(c.matcher)} <= {{max_n{c.number}:UInt64}}")
        if c.min_days:
            params[f"min_days{c.number}"] = c.min_days
            tests.append(f"{bounded.days(c.matcher)} >= {{min_days{c.number}:UInt64}}")
        if c.min_engaged_ms:
            params[f"min_engaged{c.number}"] = c.min_engaged_ms
            tests.append(f"e{c.matcher} >= {{min_engaged{c.number}:UInt64}}")
        columns.append(f"({' AND '.join(tests)}) AS h{c.number}")
    return columns


def _segment_arrays(plan: Plan, params: dict[str, Any]) -> str:
    """`segments`: the IDs of the segments whose booleans hold, in the plan's order. One array of
    the booleans filtered, not a word of bits per 64 segments: the bits' sums of shifted booleans
    were most of the statement's text. A full build's members step of the 100-segment benchmark
    took 4.7 s instead of 6.1 s, and a following build's 0.43-0.58 s instead of 0.44-0.73 s.
    A segment another refers to is its column `seg<id>` (`_with_referenced`)."""
    items = list(plan.expressions.items())
    params["segment_ids"] = [segment_id for segment_id, _expr in items]
    held = ", ".join(f"seg{segment_id}" if segment_id in plan.referenced else expr for segment_id, expr in items)
    return f"arrayFilter((segment_id, held) -> held, {{segment_ids:Array(UInt32)}}, [{held}]) AS segments"


def _with_referenced(plan: Plan, select: str) -> str:
    """`select` (a row per profile with its `h<condition>` columns) with a column `seg<id>` per
    segment referred to, a query level per level of references: a column reads those below."""
    for level in sorted({r.level for r in plan.referenced.values()}):
        named = ", ".join(f"{r.boolean} AS seg{segment_id}" for segment_id, r in plan.referenced.items()
                          if r.level == level)
        select = f"SELECT *, {named} FROM ({select})"
    return select


def membership_statement(plan: Plan, as_of_ms: int, build_id: int, tables: Tables = BUILD,
                         rollup: RollupRead | None = None, only: str | None = None,
                         keep_entered: bool = False) -> Statement:
    """The build in one statement: the scan (of events, or with `rollup`, of as_of's day's hours,
    `HOURS`, and the rolled-up days' totals per ID), per-ID and per-profile aggregates, each
    segment's boolean, and a row per ID with its segments into `tables.members`. With `only` (a
    subquery of typed IDs holding every ID of each profile it touches), just those IDs' rows and
    profiles. With `keep_entered`, each row keeps when its ID entered each segment (`member_rows`).

    Opted-out IDs need no other test here: the rows read are of IDs opted in (`window_filter`, and
    the totals' filter below), and so are the links the profiles are made of, so no profile holds one.
    Every statement of a build's rule segments reads the same opt-outs, its snapshot
    (`tables.optouts`): one recorded while it runs is the next build's to take in."""
    params: dict[str, Any] = {**window_params(plan, as_of_ms), "build_id": build_id}
    layout = _Layout.of(plan)
    source = _source_sql(plan, layout, params, tables, rollup, only)
    bounded = _Bounded.of(plan)
    per_profile = [profile_side for _id_side, profile_side in _aggregates(plan, layout, bounded)]
    per_id_rows, names = _per_id(plan, layout, as_of_ms, params, source)
    if rollup:  # an ID's hours of as_of's day, and its rolled-up days' totals: merged with its profile's
        per_id_rows += (f" UNION ALL SELECT row_id, {', '.join(names)} FROM {rollup.totals} "
                        f"WHERE {rollup.totals_rows(tables.optouts, only)}")
    held = ", ".join(_held_columns(plan, layout, bounded, params))
    segments = _segment_arrays(plan, params)
    # The conditions (`held`) are columns of their own query, not aliases the segments' expressions
    # repeat: the statement planned in 0.42 s, not 0.52 s, and ran in 0.68 s, not 0.81 s, for
    # the 100-segment benchmark's following build (medians of 9).
    conditions = f"""
            SELECT profile, {held}
            FROM (
                SELECT if(linked = '', row_id, linked) AS profile, {', '.join(per_profile)}
                FROM (
                    SELECT row_id, joinGet('{tables.profile_of}', 'profile', row_id) AS linked, {', '.join(names)}
                    FROM ({per_id_rows})
                )
                GROUP BY profile
            )"""
    members = f"""
SELECT typed_id, profile AS profile_id, segments, {{build_id:UInt64}} AS build_id
FROM (
    SELECT profile, segments FROM (
        SELECT profile, {segments}
        FROM ({_with_referenced(plan, conditions)}
        )
    )
    WHERE notEmpty(segments)
)
ARRAY JOIN if(empty(joinGet('{tables.profile_ids}', 'ids', profile) AS ids), [profile], ids) AS typed_id"""
    if not keep_entered:
        return f"INSERT INTO {tables.members} (id, id_type, profile_id, segments, build_id)\n" + \
            f"SELECT {UNTYPED}, profile_id, segments, build_id FROM ({members})", params
    return (f"INSERT INTO {tables.members} (id, id_type, profile_id, segments, entered, build_id)\n" +
            member_rows(members)), params


AS_OF = "fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC')"  # the build's as_of, from its parameter
# A typed ID ('c:<cookie>' or 'f:<first-party ID>') as the id and id_type columns of a member row.
UNTYPED = "substring(typed_id, 3), if(startsWith(typed_id, 'c:'), 'cookie', 'fp')"


def member_rows(rows: str) -> str:
    """`rows` (typed_id, profile_id, segments, build_id) as rows of `id_segments` with `entered`:
    when the ID entered each segment. The last build's time (`ENTERED`) where it was in the
    segment then; as_of (parameter `as_of_ms`) where it is new to it.

    An ID whose segments are the last build's (most IDs, in a nightly full build) takes the last
    build's times as they are: the lambda copies `was` and `was_at` once per segment of the row,
    which for the benchmark's 1.2M rows cost ~1 s of a full build's members step, and is skipped
    (short-circuit evaluation) where the arrays are equal: 3.0-3.6 s against 3.5-3.9 s."""
    return (f"SELECT {UNTYPED}, profile_id, segments, "
            f"if(segments = was, was_at, arrayMap(s -> if(has(was, s), was_at[indexOf(was, s)], {AS_OF}), segments)), "
            "build_id FROM ("
            f"SELECT *, joinGet('{ENTERED}', 'segments', typed_id) AS was, "
            f"joinGet('{ENTERED}', 'entered', typed_id) AS was_at FROM ({rows}))")
