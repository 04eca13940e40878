"""Rule → SQL: golden plans, and proof that user text reaches ClickHouse only as parameters."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from audiences.builder import build
from audiences.compiler import (
    HOURS,
    Referenced,
    _balanced,
    compile_segments,
    membership_statement,
    roll_statement,
    today_statement,
    totals_statement,
    values_statements,
)
from audiences.definitions import SegmentSet, parse_segment
from audiences.rollup import ROLLUP, TOTALS, read_plan
from collector.categories import ContentTaxonomy

AS_OF = 2_000_000_000_000
TAXONOMY = ContentTaxonomy.from_rows([("483", None, "Sports"), ("533", "483", "Soccer"), ("1", None, "Autos")])


def segment(id: int, rule: dict[str, Any], **extra: Any) -> Any:
    return parse_segment({"id": id, "name": f"s{id}", "rule": rule, **extra})


def where(field: str, op: str, value: Any, **bounds: Any) -> dict[str, Any]:
    return {"where": [{"field": field, "op": op, "value": value}], **bounds}


def test_golden_plan_numbers_shared_predicates_once() -> None:
    segments = SegmentSet([
        segment(1, where("category", "is", "483", min_count=3), lookback_days=30),
        segment(2, {"all": [{"segment": 1}, {"not": where("host", "eq", "shop.example", within_days=7)}]},
                lookback_days=14),
    ])
    plan = compile_segments(segments, TAXONOMY)
    assert [(p.field, p.op.value, p.value) for p in plan.predicates] == [
        ("category", "is", "483"), ("host", "eq", "shop.example")]
    assert plan.category_values == {1: ["483", "533"]}
    assert [(c.predicates, c.window_days, c.min_count) for c in plan.conditions] == [
        ((), 30, 1), ((1,), 30, 3), ((), 14, 1), ((2,), 7, 1)]
    assert [(m.predicates, m.window_days) for m in plan.matchers] == [((), 30), ((1,), 30), ((), 14), ((2,), 7)]
    assert plan.expressions == {
        1: "(h1 AND h2)",
        2: "(h3 AND (seg1 AND (NOT h4)))",
    }
    assert plan.referenced == {1: Referenced(0, "(h1 AND h2)")}  # a column of its own, read by the others
    sql, params = membership_statement(plan, AS_OF, 7)
    # The fields share a mask word, a run of bits each; equality tests (a category's descendants
    # too) are one transform of the value, giving the field's bits at once.
    assert params["k1_values"] == ["483", "533"] and params["k1_bits"] == [1, 1]
    assert "transform(c, {k1_values:Array(String)}, {k1_bits:Array(UInt64)}, toUInt64(0))" in sql
    assert params["k2_values"] == ["shop.example"] and params["k2_bits"] == [2]
    assert "transform(host, {k2_values:Array(String)}" in sql and sql.count(" AS f0,") == 1 and " AS f1" not in sql
    # A one-predicate matcher over the whole window is a bit of the mask word; a narrower window
    # makes a compound matcher of its own, packed into a word of matchers.
    # Windows start at the start of a UTC day: as_of's day, 7 days before (inclusive).
    assert "bitTest(f0, 1) AND in7 AS m4" in sql and params["since7"] == AS_OF - AS_OF % 86_400_000 - 7 * 86_400_000
    assert "t >= fromUnixTimestamp64Milli({since7:Int64}, 'UTC') AS in7" in sql
    # A count: per row (or per rolled-up hour) a column of the matched rows; per ID, its sum.
    assert "toUInt32(bitTest(f0, 0)) AS c0" in sql and "sum(toUInt64(c0)) AS n0" in sql and params["min_n2"] == 3
    assert "(bitTest(f0_any, 0) AND bitAnd(n0, 4294967295) >= {min_n2:UInt64}) AS h2" in sql
    assert "(bitTest(w0_any, 2)) AS h4" in sql
    # A profile's array: the IDs of the segments whose booleans hold, in the plan's order.
    assert params["segment_ids"] == [1, 2]
    assert "arrayFilter((segment_id, held) -> held, {segment_ids:Array(UInt32)}, " \
           "[seg1, (h3 AND (seg1 AND (NOT h4)))]) AS segments" in sql
    assert "SELECT *, (h1 AND h2) AS seg1 FROM (" in sql


def test_a_segment_referred_to_many_times_is_written_once() -> None:
    # Each segment refers twice to the one before: pasted in at each reference, the statement
    # doubled per link (886 KB for 15 links, past ClickHouse's 256 KiB query size at 14).
    chain = [segment(1, where("host", "eq", "a.example"))]
    chain += [segment(n, {"all": [{"segment": n - 1}, {"any": [{"segment": n - 1}, where("host", "eq", f"h{n}")]}]})
              for n in range(2, 34)]  # 32 references deep, as deep as the definitions go
    plan = compile_segments(SegmentSet(chain))
    assert [(n, r.level) for n, r in plan.referenced.items()] == [(n, n - 1) for n in range(1, 33)]
    sql, _params = membership_statement(plan, AS_OF, 7)
    assert len(sql) < 60_000 and sql.count("AS seg32") == 1 and sql.count("SELECT *, ") == 32


def test_conditions_that_differ_only_in_bounds_share_a_matcher() -> None:
    segments = SegmentSet([
        segment(1, where("host", "eq", "a.example", min_count=2)),
        segment(2, where("host", "eq", "a.example", min_count=5, min_days=2)),
    ])
    plan = compile_segments(segments)
    assert len(plan.conditions) == 3 and len(plan.matchers) == 2
    sql, _params = membership_statement(plan, AS_OF, 7)
    assert sql.count("sum(toUInt64(c0))") == 1 and "groupBitOr(if(bitTest(f0, 0), day_bit, 0)) AS d0" in sql


def test_two_counts_and_two_short_day_masks_share_an_aggregate() -> None:
    segments = SegmentSet([segment(1, where("host", "eq", "a", min_count=2, min_days=2)),
                           segment(2, where("host", "eq", "b", min_count=3, min_days=2, within_days=40))])
    plan = compile_segments(segments)
    sql, _params = membership_statement(plan, AS_OF, 7)
    # Counts: halves of one sum. Day masks: a 30-day window fits 32 bits, a 40-day one does not.
    # (The 40-day condition is the scan's whole window, so it is a plain bit; the 30-day one, m2, is not.)
    assert "sum(toUInt64(if(in30, c0, 0)) + bitShiftLeft(toUInt64(c1), 32)) AS n0" in sql
    assert "bitShiftRight(n0, 32) >= {min_n3:UInt64}" in sql
    assert "groupBitOr(if(m2, day_bit, 0)) AS d0" in sql and "bitCount(bitAnd(d0, 4294967295))" in sql
    assert "groupBitOr(if(bitTest(f0, 1), day_bit, 0)) AS D3" in sql and "bitCount(D3) >=" in sql


def test_string_fields_with_patterns_are_looked_up_once_per_value() -> None:
    rule = {"all": [where("path", "prefix", "/sport"), where("path", "eq", "/home"), where("host", "prefix", "a.")]}
    plan = compile_segments(SegmentSet([segment(1, rule)]))
    (values_sql, values_params), = values_statements(plan, AS_OF)
    # The path's prefix and its equality are evaluated over its distinct values, into the lookup
    # table; the host (LowCardinality) is evaluated inline, per dictionary value.
    assert "SELECT DISTINCT path AS v" in values_sql and "startsWith(v, {p" in values_sql
    assert values_params["chunk"] == 1 and "bitShiftLeft(toUInt64(startsWith(v, {p1:String})), 1)" in values_sql
    sql, _params = membership_statement(plan, AS_OF, 7)
    assert "joinGet('crumb._build_values', 'bits', toUInt16(1), path)) AS f0" in sql
    assert "startsWith(host, {p" in sql


def test_long_windows_count_days_as_a_set() -> None:
    plan = compile_segments(SegmentSet([segment(1, where("host", "eq", "a", min_days=3, within_days=90),
                                                lookback_days=90)]))
    sql, _params = membership_statement(plan, AS_OF, 7)
    assert "groupUniqArrayIf(day, bitTest(f0, 0)) AS D2" in sql and "length(D2) >=" in sql


ATTACKS = [
    "'; DROP TABLE crumb.events; --",
    "\\' OR 1=1 --",
    "{evil:String}",
    "x') UNION ALL SELECT * FROM system.users --",
    "\u0000\u2028ß😀",
    '"; SELECT 1; "',
    "`backtick`",
]


def every_statement(segments: SegmentSet) -> list[tuple[str, dict[str, Any]]]:
    plan = compile_segments(segments, TAXONOMY)
    rollup = read_plan(plan, AS_OF)
    return [*values_statements(plan, AS_OF), membership_statement(plan, AS_OF, 7),
            *values_statements(plan, AS_OF, rollup=rollup, roll_days=[date(2024, 1, 1)]),
            roll_statement(plan, ROLLUP), today_statement(plan, AS_OF, rollup),
            totals_statement(plan, AS_OF, rollup),
            membership_statement(plan, AS_OF, 7, rollup=rollup, only="(SELECT id FROM crumb._build_recompute)")]


def test_a_build_reads_rolled_up_hours_and_the_events_of_as_of_s_day() -> None:
    plan = compile_segments(SegmentSet([segment(1, where("path", "prefix", "/a", min_count=2, within_days=2)),
                                        segment(2, where("host", "eq", "b", min_engaged_ms=1000))]))
    rollup = read_plan(plan, AS_OF)
    # Windows start at the start of a day, so every hour before as_of's day is read rolled up.
    assert rollup.raw_from_ms == AS_OF - AS_OF % 86_400_000
    roll_sql, _params = roll_statement(plan, ROLLUP)
    # Rolled per ID and hour: masks OR-ed, the count's and the engaged time's columns summed.
    assert "GROUP BY row_id, hour" in roll_sql and "groupBitOr(f0) AS f0" in roll_sql
    assert "sum(c0) AS c0" in roll_sql and "sum(g0) AS g0" in roll_sql
    assert "toUInt32(bitTest(f0, 1)) AS c0" in roll_sql and "if(bitTest(f0, 0), engaged_ms, 0) AS g0" in roll_sql
    # as_of's day is rolled up the same way, into the build's scratch table, up to as_of.
    today_sql, today_params = today_statement(plan, AS_OF, rollup)
    assert today_sql.startswith(f"INSERT INTO {HOURS} ") and "GROUP BY row_id, hour" in today_sql
    assert today_params["raw_from_ms"] == rollup.raw_from_ms and today_params["as_of_ms"] == AS_OF
    assert "ts >= fromUnixTimestamp64Milli({raw_from_ms:Int64}" in today_sql
    assert "ts <= fromUnixTimestamp64Milli({as_of_ms:Int64}" in today_sql
    # The rolled-up days are read as their totals per ID: the same per-ID aggregates, over the
    # window's rolled-up hours, for as_of's day.
    totals_sql, totals_params = totals_statement(plan, AS_OF, rollup)
    assert f"FROM {ROLLUP} WHERE hour >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC') AND hour < " in totals_sql
    assert totals_sql.endswith("GROUP BY row_id") and "groupUniqArrayArray(links) AS links" in totals_sql
    assert "sum(toUInt64(if(in2, c0, 0))) AS n0" in totals_sql and totals_params["raw_from_ms"] == rollup.raw_from_ms
    # The membership statement reads hour rows and totals only: no event, no per-event expression.
    sql, params = membership_statement(plan, AS_OF, 7, rollup=rollup)
    assert f"SELECT row_id, toDateTime64(hour, 3, 'UTC') AS t, f0, c0, g0 FROM {HOURS})" in sql
    assert ROLLUP + " " not in sql
    assert f"UNION ALL SELECT row_id, f0_any, w0_any, n0, e3 FROM {TOTALS} WHERE row_id NOT IN (" in sql
    assert params["raw_from_ms"] == rollup.raw_from_ms and "crumb.events" not in sql and "transform(" not in sql
    # Recomputing some IDs only: the hours of as_of's day hold theirs, and their totals are read.
    ids = "(SELECT id FROM crumb._build_recompute)"
    only_sql, _params = membership_statement(plan, AS_OF, 7, rollup=rollup, only=ids)
    assert f"FROM {TOTALS} WHERE row_id NOT IN (SELECT arrayJoin(" in only_sql and f"AND row_id IN {ids}" in only_sql
    assert "sum(toUInt64(if(in2, c0, 0))) AS n0" in sql  # the narrower window, on events and hours alike


def most_terms_at_one_level(sql: str, operator: str) -> int:
    """The most `operator`s between one pair of brackets (or at the top): a chain `a + b + c`
    has two, a tree `((a + b) + c)` one."""
    counts, most = [0], 0
    for position, char in enumerate(sql):
        if char == "(":
            counts.append(0)
        elif char == ")":
            counts.pop()
        elif sql.startswith(operator, position):
            counts[-1] += 1
            most = max(most, counts[-1])
    return most


def test_many_terms_nest_as_a_tree_not_a_chain() -> None:
    # ClickHouse names every node of an expression by its whole text, so a chain of 64 terms
    # (the per-row words of predicate bits, the packed counts) costs planning time quadratic in it.
    assert _balanced(["a", "b", "c", "d", "e"], "({} + {})") == "((a + b) + (c + (d + e)))"
    assert _balanced(["a", "b", "c"], "bitOr({}, {})") == "bitOr(a, bitOr(b, c))"
    with pytest.raises(ValueError):
        _balanced([], "({} + {})")
    plan = compile_segments(SegmentSet([segment(n, where("path", "prefix", f"/{n}", within_days=n % 5 + 1))
                                        for n in range(1, 129)]))
    rollup = read_plan(plan, AS_OF)
    assert most_terms_at_one_level(membership_statement(plan, AS_OF, 7, rollup=rollup)[0], " + ") == 1
    assert most_terms_at_one_level(today_statement(plan, AS_OF, rollup)[0], " + ") <= 1


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize(("field", "op"), [("url", "contains"), ("host", "eq"), ("path", "prefix"),
                                           ("utm_campaign", "neq"), ("prop.plan", "eq"), ("category", "is")])
def test_attack_strings_appear_only_in_parameters(field: str, op: str, attack: str) -> None:
    segments = SegmentSet([segment(1, where(field, op, attack))])
    statements = every_statement(segments)
    for sql, _params in statements:
        assert attack not in sql
    assert any(attack in values(params) for _sql, params in statements)


def values(params: Any) -> list[Any]:
    """Every leaf value of a parameter dict, flattened."""
    if isinstance(params, dict):
        return [leaf for value in params.values() for leaf in values(value)]
    if isinstance(params, list):
        return [leaf for value in params for leaf in values(value)]
    return [params]


def test_prop_names_travel_as_parameters_too() -> None:
    segments = SegmentSet([segment(1, where("prop.a-b:c", "eq", "1"))])
    for sql, _params in every_statement(segments):
        assert "a-b:c" not in sql


def test_attack_strings_survive_a_real_build(warehouse: Client) -> None:
    """The strings reach ClickHouse as values: the build runs and the tables are still there."""
    rules = [where("url", "contains", attack) for attack in ATTACKS] + [where("prop.x", "eq", ATTACKS[0])]
    segments = SegmentSet([segment(i + 1, rule) for i, rule in enumerate(rules)])
    result = build(warehouse, segments, TAXONOMY, as_of_ms=AS_OF)
    assert result.status == "succeeded"
    assert warehouse.query("EXISTS TABLE crumb.events").result_rows == [(1,)]
