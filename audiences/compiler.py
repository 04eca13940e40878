"""Rule trees → one ClickHouse plan for all segments. Pure: no I/O.

How a build reads far less than "one countIf per condition per row" would:

1. Every distinct predicate (`host prefix "shop."`, `category is 483`, ...) is numbered, and so is
   every distinct condition (its predicates, window and bounds), across all segments.
2. Predicates are evaluated once per *distinct value* of their field in the window (a few
   thousand hosts, not ten million rows) into a lookup table: value → predicate numbers.
3. One scan of the events looks each row's values up (a hash probe per field), finds the
   conditions whose predicates the row satisfies, and aggregates (profile, condition) →
   count, distinct days, engaged time.
4. Per profile, the conditions that hold are a small array; each segment is a boolean over
   `has(held, n)`, and the members are written in one INSERT ... SELECT.

Every value a user wrote travels as a bound parameter. What reaches the SQL text is column
names from the allow-list, the numbers this module assigns, and SQL keywords.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from audiences.definitions import All, Any_, Condition, Not, Op, Predicate, Segment, SegmentRef, SegmentSet
from collector.categories import ContentTaxonomy

EVENTS = "crumb.events"
LOOKUP = "crumb._build_lookup"
PROFILE_OF = "crumb._build_profile_of"
PROFILE_IDS = "crumb._build_profile_ids"
PROFILE_CONDITIONS = "crumb._build_profile_conditions"
MEMBERS_NEXT = "crumb.segment_members_next"
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Tables:
    """Where the statements read and write. A build uses `BUILD`; a preview, scratch tables of its own."""

    events: str
    lookup: str
    profile_of: str
    profile_ids: str
    profile_conditions: str
    members: str

    @classmethod
    def scratch(cls, prefix: str) -> Tables:
        return cls(*(f"{prefix}{f.name}" for f in fields(cls)))


BUILD = Tables(EVENTS, LOOKUP, PROFILE_OF, PROFILE_IDS, PROFILE_CONDITIONS, MEMBERS_NEXT)

# Allow-listed event fields and the SQL that reads each. Fields of few distinct values are bad
# anchors for a condition (almost every row has them), so they come last when choosing one.
COLUMNS = {
    "url": "url", "path": "path", "host": "host", "referrer_host": "referrer_host",
    "utm_source": "utm_source", "utm_medium": "utm_medium", "utm_campaign": "utm_campaign",
    "utm_term": "utm_term", "utm_content": "utm_content", "type": "type", "site": "site",
    "device_type": "device_type", "os": "os", "browser": "browser",
}
_BROAD_FIELDS = ("type", "site", "device_type", "os", "browser")

# Who may be in a segment at all: no bots, profiling consent, an ID.
ELIGIBLE = "is_bot = 0 AND can_profile = 1 AND (cookie_id != '' OR fp_id != '')"
# The typed ID of a row: the third-party cookie when there is one (an event with both IDs links them).
ROW_ID = "if(cookie_id != '', concat('c:', cookie_id), concat('f:', fp_id))"


@dataclass(frozen=True)
class ConditionSpec:
    number: int
    predicates: tuple[int, ...]
    window_days: int
    min_count: int
    max_count: int | None
    min_days: int | None
    min_engaged_ms: int | None


@dataclass
class Plan:
    """Numbered predicates and conditions, and each segment's boolean over them."""

    segments: list[Segment]
    predicates: list[Predicate] = field(default_factory=list)  # number = index + 1; 0 is "any event"
    category_values: dict[int, list[str]] = field(default_factory=dict)  # `is` → the IDs it covers
    conditions: list[ConditionSpec] = field(default_factory=list)  # number = index + 1
    expressions: dict[int, str] = field(default_factory=dict)  # segment id → SQL over `held`

    @property
    def max_window_days(self) -> int:
        return max((c.window_days for c in self.conditions), default=1)

    def fields(self) -> list[str]:
        return sorted({p.field for p in self.predicates})


def compile_segments(segments: SegmentSet, taxonomy: ContentTaxonomy | None = None) -> Plan:
    """Number the predicates and conditions of the active segments and write their booleans."""
    plan = Plan(segments=[s for s in segments.active() if s.kind == "rule"])  # lookalikes are a model's
    predicate_numbers: dict[str, int] = {}
    condition_numbers: dict[tuple[Any, ...], int] = {}

    def predicate(p: Predicate) -> int:
        key = p.model_dump_json()
        if key not in predicate_numbers:
            plan.predicates.append(p)
            predicate_numbers[key] = len(plan.predicates)
            if p.op is Op.IS:
                plan.category_values[len(plan.predicates)] = _category_ids(str(p.value), taxonomy)
        return predicate_numbers[key]

    def condition(c: Condition, lookback_days: int) -> int:
        numbers = tuple(sorted({predicate(p) for p in c.where}))
        spec = (numbers, c.within_days or lookback_days, c.min_count, c.max_count, c.min_days, c.min_engaged_ms)
        if spec not in condition_numbers:
            plan.conditions.append(ConditionSpec(len(plan.conditions) + 1, *spec))
            condition_numbers[spec] = len(plan.conditions)
        return condition_numbers[spec]

    def expression(segment: Segment) -> str:
        universe = condition(Condition(), segment.lookback_days)  # seen at all in the lookback
        return f"(has(held, {universe}) AND {rule(segment.rule, segment.lookback_days)})"

    def rule(node: Any, lookback_days: int) -> str:
        if isinstance(node, Condition):
            return f"has(held, {condition(node, lookback_days)})"
        if isinstance(node, All):
            return "(" + " AND ".join(rule(child, lookback_days) for child in node.all) + ")"
        if isinstance(node, Any_):
            return "(" + " OR ".join(rule(child, lookback_days) for child in node.any) + ")"
        if isinstance(node, Not):
            return f"(NOT {rule(node.not_, lookback_days)})"
        if isinstance(node, SegmentRef):
            return expression(segments.by_id[node.segment])
        raise TypeError(f"unknown rule node {type(node).__name__}")

    for segment in plan.segments:
        plan.expressions[segment.id] = expression(segment)
    return plan


def _category_ids(category: str, taxonomy: ContentTaxonomy | None) -> list[str]:
    if taxonomy is not None and category in taxonomy:
        return sorted(taxonomy.descendants(category))
    return [category]


# -- SQL -------------------------------------------------------------------------------------------

Statement = tuple[str, dict[str, Any]]


def window_filter() -> str:
    return (f"{ELIGIBLE} AND ts > fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC') "
            "AND cookie_id NOT IN (SELECT id FROM crumb.optouts) AND fp_id NOT IN (SELECT id FROM crumb.optouts)")


def window_params(plan: Plan, as_of_ms: int) -> dict[str, Any]:
    return {"since_ms": as_of_ms - plan.max_window_days * DAY_MS, "as_of_ms": as_of_ms}


def lookup_statements(plan: Plan, as_of_ms: int, tables: Tables = BUILD) -> Iterator[Statement]:
    """One INSERT per field: its distinct values in the window → the predicates each satisfies."""
    for field_name in plan.fields():
        numbered = [(n, p) for n, p in enumerate(plan.predicates, 1) if p.field == field_name]
        params: dict[str, Any] = {"field": field_name, **window_params(plan, as_of_ms)}
        tests = []
        for number, p in numbered:
            params[f"p{number}"] = plan.category_values.get(number, p.value)
            tests.append(f"if({predicate_sql(p, number)}, {number}, 0)")
        value = _value_sql(field_name, params, distinct=True)
        sql = (
            f"INSERT INTO {tables.lookup} (field, value, preds) "
            f"SELECT {{field:String}}, v, arrayFilter(x -> x != 0, [{', '.join(tests)}]) AS preds "
            f"FROM (SELECT DISTINCT {value} AS v FROM {tables.events} WHERE {window_filter()}) WHERE notEmpty(preds)"
        )
        yield sql, params


def predicate_sql(p: Predicate, number: int) -> str:
    """A predicate over `v`, its value bound as parameter `p<number>`."""
    param = f"p{number}"
    if p.op in (Op.IN, Op.IS):
        return f"has({{{param}:Array(String)}}, v)"
    return {
        Op.EQ: f"v = {{{param}:String}}",
        Op.NEQ: f"v != {{{param}:String}}",
        Op.PREFIX: f"startsWith(v, {{{param}:String}})",
        Op.CONTAINS: f"position(v, {{{param}:String}}) > 0",
        Op.REGEX: f"match(v, {{{param}:String}})",
    }[p.op]


def _value_sql(field_name: str, params: dict[str, Any], distinct: bool = False) -> str:
    """The SQL reading a field's value from an events row; a prop's name is a bound parameter."""
    if field_name == "category":
        return "arrayJoin(categories)" if distinct else "categories"
    if field_name.startswith("prop."):
        params["prop_name"] = field_name[len("prop."):]
        return "props[{prop_name:String}]"
    return COLUMNS[field_name]


def scan_statement(plan: Plan, as_of_ms: int, tables: Tables = BUILD) -> Statement:
    """The one scan: each eligible row → the conditions it satisfies → per-profile aggregates."""
    params: dict[str, Any] = window_params(plan, as_of_ms)
    params["need"] = [list(c.predicates) for c in plan.conditions]
    params["since"] = [as_of_ms - c.window_days * DAY_MS for c in plan.conditions]
    params["anchor"] = _anchors(plan)
    lookups = ["[toUInt32(0)]"]
    for index, field_name in enumerate(plan.fields()):
        key = f"field{index}"
        params[key] = field_name
        value = _value_sql(field_name, params)
        if field_name.startswith("prop."):  # each prop reads its own name
            params[f"prop{index}"] = params.pop("prop_name")
            value = f"props[{{prop{index}:String}}]"
        probe = f"joinGet('{tables.lookup}', 'preds', {{{key}:String}}, "
        if field_name == "category":  # an array: each category is looked up
            lookups.append(f"arrayFlatten(arrayMap(c -> {probe}c), {value}))")
        else:
            lookups.append(f"{probe}{value})")
    sql = f"""
INSERT INTO {tables.profile_conditions} (profile, cond, n, days, engaged)
SELECT profile, cond, count(), uniqExact(toDate(ts)), sum(engaged_ms)
FROM (
    SELECT
        {ROW_ID} AS row_id, joinGet('{tables.profile_of}', 'profile', row_id) AS linked,
        if(linked = '', row_id, linked) AS profile, ts, engaged_ms, toUnixTimestamp64Milli(ts) AS ts_ms,
        arrayConcat({', '.join(lookups)}) AS preds,
        arrayJoin(arrayFilter(
            c -> ts_ms > {{since:Array(Int64)}}[c] AND hasAll(preds, {{need:Array(Array(UInt32))}}[c]),
            arrayDistinct(arrayFlatten(arrayMap(p -> {{anchor:Array(Array(UInt32))}}[p + 1], preds)))
        )) AS cond
    FROM {tables.events}
    WHERE {window_filter()}
)
GROUP BY profile, cond"""
    return sql, params


def _anchors(plan: Plan) -> list[list[int]]:
    """For each predicate number (0 first), the conditions it anchors: a row is tested only
    against conditions anchored by a predicate it satisfies, not against all of them."""
    anchors: list[list[int]] = [[] for _ in range(len(plan.predicates) + 1)]
    for c in plan.conditions:
        anchors[_anchor(plan, c)].append(c.number)
    return anchors


def _anchor(plan: Plan, c: ConditionSpec) -> int:
    if not c.predicates:
        return 0
    return min(c.predicates, key=lambda n: (plan.predicates[n - 1].field in _BROAD_FIELDS, n))


def membership_statement(plan: Plan, build_id: int, tables: Tables = BUILD) -> Statement:
    """Per profile: the conditions that hold, each segment's boolean, one row per (segment, ID)."""
    conditions = plan.conditions
    params: dict[str, Any] = {
        "build_id": build_id,
        "min_n": [c.min_count for c in conditions],
        "max_n": [c.max_count or 2**63 - 1 for c in conditions],
        "min_days": [c.min_days or 0 for c in conditions],
        "min_engaged": [c.min_engaged_ms or 0 for c in conditions],
    }
    picks = ", ".join(f"if({expr}, toUInt32({segment_id}), toUInt32(0))"
                      for segment_id, expr in plan.expressions.items())
    sql = f"""
INSERT INTO {tables.members} (segment_id, id, id_type, profile_id, build_id)
SELECT segment_id, substring(typed_id, 3), if(startsWith(typed_id, 'c:'), 'cookie', 'fp'), profile,
       {{build_id:UInt64}}
FROM (
    SELECT profile, arrayFilter(
        (c, n, d, e) -> n >= {{min_n:Array(UInt64)}}[c] AND n <= {{max_n:Array(UInt64)}}[c]
            AND d >= {{min_days:Array(UInt64)}}[c] AND e >= {{min_engaged:Array(UInt64)}}[c],
        cs, ns, ds, es) AS held
    FROM (
        SELECT profile, groupArray(cond) cs, groupArray(n) ns, groupArray(days) ds, groupArray(engaged) es
        FROM {tables.profile_conditions} GROUP BY profile
    )
    WHERE profile NOT IN (
        SELECT if(linked = '', typed, linked) FROM (
            SELECT arrayJoin([concat('c:', id), concat('f:', id)]) AS typed,
                   joinGet('{tables.profile_of}', 'profile', typed) AS linked
            FROM crumb.optouts)
    )
)
ARRAY JOIN arrayFilter(s -> s != 0, [{picks}]) AS segment_id
ARRAY JOIN if(empty(joinGet('{tables.profile_ids}', 'ids', profile) AS ids), [profile], ids) AS typed_id"""
    return sql, params
