"""Rule → SQL: golden plans, and proof that user text reaches ClickHouse only as parameters."""

from __future__ import annotations

from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from audiences.builder import build
from audiences.compiler import compile_segments, lookup_statements, membership_statement, scan_statement
from audiences.definitions import SegmentSet, parse_segment
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
    assert plan.expressions == {
        1: "(has(held, 1) AND has(held, 2))",
        2: "(has(held, 3) AND ((has(held, 1) AND has(held, 2)) AND (NOT has(held, 4))))",
    }
    (host_sql, host_params), = [s for s in lookup_statements(plan, AS_OF) if s[1]["field"] == "host"]
    assert "if(v = {p2:String}, 2, 0)" in host_sql and host_params["p2"] == "shop.example"
    scan_sql, scan_params = scan_statement(plan, AS_OF)
    assert scan_params["need"] == [[], [1], [], [2]]
    assert scan_params["anchor"] == [[1, 3], [2], [4]]  # "any event" conditions anchor at predicate 0
    assert scan_params["since"] == [AS_OF - 30 * 86_400_000, AS_OF - 30 * 86_400_000,
                                    AS_OF - 14 * 86_400_000, AS_OF - 7 * 86_400_000]
    assert "GROUP BY profile, cond" in scan_sql


def test_broad_fields_do_not_anchor_a_condition() -> None:
    rule = {"where": [{"field": "type", "op": "eq", "value": "pageview"},
                      {"field": "path", "op": "prefix", "value": "/sale"}]}
    plan = compile_segments(SegmentSet([segment(1, rule)]))
    _sql, params = scan_statement(plan, AS_OF)
    path_number = 1 + [p.field for p in plan.predicates].index("path")
    assert 2 in params["anchor"][path_number]


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
    return [*lookup_statements(plan, AS_OF), scan_statement(plan, AS_OF), membership_statement(plan, 7)]


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
