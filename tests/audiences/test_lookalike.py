"""Lookalikes on simulated traffic with planted interests, in the shared warehouse.

The traffic ends in 2060 on sites of its own, so only these events fall inside these windows.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from audiences.builder import build
from audiences.definitions import Lookalike, SegmentSet, parse_segment
from audiences.errors import DefinitionError, InvalidRequest
from audiences.features import Window
from audiences.lookalike import LookalikeRun, Seed, describe, render_table, run_lookalike
from crumb.simulator import GroundTruth, SimulationSpec, load_bulk, read_ground_truth
from tests.audiences.events import cookie, insert_events

END = datetime(2060, 6, 1, tzinfo=UTC)
END_MS = int(END.timestamp() * 1000)
INTEREST = "soccer"
SEGMENT_IDS = itertools.count(7_000_000)
SMALL_END_MS = int(datetime(2061, 6, 1, tzinfo=UTC).timestamp() * 1000)  # a window of the small world's own


@pytest.fixture(scope="module")
def world(warehouse: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundTruth, list[str]]:
    tag = uuid.uuid4().hex[:6]
    spec = SimulationSpec(cookies=3000, days=14, seed=7, end=END, events_per_cookie=15,
                          sites=tuple(f"la{tag}-{kind}" for kind in ("news", "shop", "travel", "sports")))
    truth_path = tmp_path_factory.mktemp("lookalike") / "truth.jsonl"
    load_bulk(warehouse, spec, truth_path=truth_path)
    truth = read_ground_truth(truth_path)
    profiled = [c for c in truth.with_interest(INTEREST) if not c.is_bot and c.consent == "open"]
    rng = random.Random(3)
    seed = sorted(f"c:{c.cookie_id}" for c in rng.sample(profiled, len(profiled) // 2))
    return truth, seed


def run(warehouse: Client, seed: list[str], **options: Any) -> LookalikeRun:
    spec = Lookalike(seed=1, reach=options.pop("reach", 0.05), exclude_seed=options.pop("exclude_seed", True),
                     min_similarity=options.pop("min_similarity", 0.0))
    segment_id = next(SEGMENT_IDS)  # a run replaces the scores of its segment's earlier runs
    lookalike = LookalikeRun(warehouse, spec, Seed(1, profiles=tuple(seed)), Window(END_MS, 14), segment_id,
                             **options)
    lookalike.run()
    return lookalike


def audience(warehouse: Client, lookalike: LookalikeRun) -> list[str]:
    sql, params = lookalike.audience_sql()
    return [row[0] for row in warehouse.query(sql, parameters=params).result_rows]


def lift(truth: GroundTruth, seed: list[str], chosen: list[str], population: int) -> float:
    others = {f"c:{c.cookie_id}" for c in truth.with_interest(INTEREST)} - set(seed)
    recall = len(others & set(chosen)) / len(others)
    return recall / (len(chosen) / population)


def test_lookalike_recovers_the_planted_interest_better_than_random_and_the_centroid(
        warehouse: Client, world: tuple[GroundTruth, list[str]]) -> None:
    truth, seed = world
    best = run(warehouse, seed)
    centroid = run(warehouse, seed, method="centroid")
    result = best.result
    assert result["status"] == "ok" and result["method"] in ("sgd", "centroid")
    chosen = audience(warehouse, best)
    assert len(chosen) == round(0.05 * result["population"])
    assert not set(chosen) & set(seed)  # exclude_seed
    best_lift = lift(truth, seed, chosen, result["population"])
    centroid_lift = lift(truth, seed, audience(warehouse, centroid), result["population"])
    assert best_lift >= 3
    assert best_lift >= centroid_lift * 0.95
    methods = result["methods"]
    assert methods[result["method"]]["auc"] >= methods["centroid"]["auc"] > 0.6
    assert methods[result["method"]]["lift_at_reach"] > 3
    assert list(methods["sgd"]["recall"]) == [f"{k}%" for k in range(1, 11)]


def test_evaluation_reads_like_the_interest(warehouse: Client, world: tuple[GroundTruth, list[str]]) -> None:
    _, seed = world
    result = run(warehouse, seed).result
    labels = " ".join(f["label"] for f in result["top_features"])
    assert "Soccer" in labels or "/sports/soccer" in labels
    assert [p["reach"] for p in result["curve"]][:3] == [0.01, 0.02, 0.05]
    similarities = [p["similarity"] for p in result["curve"]]
    assert similarities == sorted(similarities, reverse=True)
    table = render_table(result)
    assert "AUC" in table and "top features" in table and "visits" in table


def test_scoring_streams_in_chunks_and_min_similarity_cuts(
        warehouse: Client, world: tuple[GroundTruth, list[str]]) -> None:
    _, seed = world
    lookalike = run(warehouse, seed, chunk_size=500, min_similarity=0.99, reach=0.5)
    population = lookalike.result["population"]
    assert lookalike.chunks >= population // 700  # about 500 a chunk, never the population at once
    scored = warehouse.query("SELECT count(), min(score) >= 0, max(score) <= 1 FROM crumb.lookalike_scores "
                             "WHERE run_id = {r:UInt64}", parameters={"r": lookalike.run_id}).result_rows[0]
    assert scored == (population, 1, 1)
    assert len(audience(warehouse, lookalike)) < 0.5 * population
    sql, params = lookalike.audience_sql()
    assert all(row[1] >= 0.99 - 1e-6 for row in warehouse.query(sql, parameters=params).result_rows)


def test_bots_opted_out_and_non_consented_are_never_scored(
        warehouse: Client, world: tuple[GroundTruth, list[str]]) -> None:
    truth, seed = world
    out = next(c for c in truth.with_interest(INTEREST) if f"c:{c.cookie_id}" not in seed and c.consent == "open"
               and not c.is_bot)
    warehouse.insert("crumb.optouts", [[out.cookie_id, END_MS]], column_names=["id", "opted_out_at"])
    lookalike = run(warehouse, seed, reach=1.0)
    scored = {r[0] for r in warehouse.query("SELECT profile FROM crumb.lookalike_scores WHERE run_id = {r:UInt64}",
                                            parameters={"r": lookalike.run_id}).result_rows}
    never = {f"c:{c.cookie_id}" for c in truth.cookies if c.is_bot or c.consent == "gdpr_no_profile"}
    never.add(f"c:{out.cookie_id}")
    assert scored and not scored & never


def test_a_tiny_seed_gives_an_empty_audience_not_an_error(warehouse: Client) -> None:
    lookalike = LookalikeRun(warehouse, Lookalike(seed=1, size=10), Seed(1, profiles=("c:nobody",)),
                             Window(END_MS, 14))
    assert lookalike.run()["status"] == "seed_too_small"
    assert "seed_too_small" in render_table(lookalike.result)


@pytest.fixture(scope="module")
def small_world(warehouse: Client) -> Iterator[list[str]]:
    """80 profiles on a site of their own in May 2061."""
    cookies = [cookie() for _ in range(80)]
    insert_events(warehouse, [{"ts": SMALL_END_MS - (i + 1) * 3_600_000, "cookie_id": c, "path": f"/p{i % 4}"}
                              for i, c in enumerate(cookies)], site="lookalike-small", host="small.la.example")
    yield [f"c:{c}" for c in cookies]
    warehouse.command("ALTER TABLE crumb.events DROP PARTITION 206105")


def test_a_seed_of_everyone_gives_an_empty_audience_not_an_error(warehouse: Client, small_world: list[str]) -> None:
    lookalike = LookalikeRun(warehouse, Lookalike(seed=1, reach=0.05), Seed(1, profiles=tuple(small_world)),
                             Window(SMALL_END_MS, 14))
    result = lookalike.run()
    assert (result["status"], result["audience"], result["seed_profiles"]) == ("too_few_unlabelled", 0, 80)
    assert "80 of the 80 profiles in the window are in the seed" in render_table(result)


def test_a_seed_the_holdout_takes_none_of_gives_an_empty_audience(warehouse: Client, small_world: list[str]) -> None:
    (never_held,) = warehouse.query(
        "SELECT groupArray(10)(p) FROM (SELECT arrayJoin({ids:Array(String)}) AS p) "
        "WHERE modulo(cityHash64(p, 'holdout'), 5) != 0", parameters={"ids": small_world}).result_rows[0]
    lookalike = LookalikeRun(warehouse, Lookalike(seed=1, reach=0.05), Seed(1, profiles=tuple(never_held)),
                             Window(SMALL_END_MS, 14))
    result = lookalike.run()
    assert (result["status"], result["audience"], result["training"]["held_out"]) == ("seed_too_small", 0, 0)
    assert "too few to hold some out" in render_table(result)


def test_a_build_with_a_lookalike_of_everyone_succeeds(warehouse: Client, small_world: list[str]) -> None:
    rule_id, lookalike_id = next(SEGMENT_IDS), next(SEGMENT_IDS)
    segments = SegmentSet([
        parse_segment({"id": rule_id, "name": "everyone", "lookback_days": 14,
                       "rule": {"where": [{"field": "site", "op": "eq", "value": "lookalike-small"}]}}),
        parse_segment({"id": lookalike_id, "name": "like everyone", "kind": "lookalike", "lookback_days": 14,
                       "lookalike": {"seed": rule_id, "reach": "5%"}}),
    ])
    result = build(warehouse, segments, as_of_ms=SMALL_END_MS)
    assert result.status == "succeeded" and result.lookalikes[lookalike_id]["status"] == "too_few_unlabelled"
    assert warehouse.query("SELECT segment_id, count() FROM crumb.segment_members WHERE segment_id IN "
                           "({r:UInt32}, {l:UInt32}) GROUP BY segment_id", parameters={"r": rule_id, "l": lookalike_id}
                           ).result_rows == [(rule_id, 80)]


@pytest.mark.parametrize(("options", "error"), [
    ({"size": 0}, "lookalike --size: Input should be greater than or equal to 1"),
    ({"reach": 0.05, "min_similarity": 2}, "lookalike --min-similarity: Input should be less than or equal to 1"),
    ({}, "lookalike: a lookalike takes one of reach"),
])
def test_run_lookalike_names_the_option_out_of_range(warehouse: Client, options: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidRequest, match=error):
        run_lookalike(warehouse, 1, **options)


def test_build_rebuilds_a_lookalike_of_a_rule_segment(
        warehouse: Client, world: tuple[GroundTruth, list[str]]) -> None:
    truth, _ = world
    sports_site = next(s["name"] for s in truth.world["sites"] if s["name"].endswith("-sports"))
    segments = SegmentSet([
        parse_segment({"id": 901, "name": "soccer readers", "lookback_days": 14, "rule": {"where": [
            {"field": "site", "op": "eq", "value": sports_site},
            {"field": "path", "op": "prefix", "value": "/sports/soccer"}], "min_count": 2}}),
        parse_segment({"id": 902, "name": "soccer lookalike", "kind": "lookalike", "lookback_days": 14,
                       "lookalike": {"seed": 901, "reach": "5%"}}),
        # Many of the lookalike's members are in this one too: their IDs have two rows with segments.
        parse_segment({"id": 903, "name": "sports readers", "lookback_days": 14, "rule": {"where": [
            {"field": "site", "op": "eq", "value": sports_site}]}}),
    ])
    result = build(warehouse, segments, as_of_ms=END_MS)
    assert result.lookalikes[902]["status"] == "ok" and "lookalikes" in result.timings
    rows = warehouse.query("SELECT segment_id, id FROM crumb.segment_members WHERE segment_id IN (901, 902) "
                           "AND id_type = 'cookie'").result_rows
    seed = {i for s, i in rows if s == 901}
    expanded = {i for s, i in rows if s == 902}
    assert seed and expanded and not seed & expanded
    soccer = {c.cookie_id for c in truth.with_interest(INTEREST)}
    base_rate = len(soccer - seed) / max(result.lookalikes[902]["population"] - len(seed), 1)
    # The rule took the keenest fans; the rest of the interest is harder to find, yet well above chance.
    assert len(expanded & soccer) / len(expanded) > 1.5 * base_rate
    deltas = warehouse.query("SELECT count() FROM crumb.segment_deltas WHERE build_id = {b:UInt64} "
                             "AND segment_id = 902 AND id_type = 'cookie'",
                             parameters={"b": result.build_id}).result_rows[0][0]
    assert deltas == len(expanded)

    # An hour later, the same day: the build follows this one (recomputing the touched profiles,
    # the lookalike scoring every profile again), and a full build right after agrees with it.
    later = build(warehouse, segments, as_of_ms=END_MS + 3_600_000)
    assert later.followed == result.build_id and later.lookalikes[902]["status"] == "ok"
    followed = set(warehouse.query("SELECT segment_id, id, profile_id FROM crumb.segment_members").result_rows)
    full = build(warehouse, segments, as_of_ms=END_MS + 3_600_000, follow=False)
    assert full.followed == 0 and full.entered == full.exited == 0
    assert set(warehouse.query("SELECT segment_id, id, profile_id FROM crumb.segment_members").result_rows) == followed
    # Every membership, the lookalike's too, kept when it entered: the build of its latest entry.
    memberships, unknown, differ = warehouse.query(
        "SELECT count(), countIf(e = 0), countIf(e != h) FROM ("
        " SELECT segment_id, id, e FROM crumb.id_segments ARRAY JOIN segments AS segment_id, entered AS e"
        " WHERE segment_id IN (901, 902, 903)) AS m LEFT JOIN ("
        " SELECT segment_id, id, max(built_at) AS h FROM crumb.segment_deltas"
        " WHERE segment_id IN (901, 902, 903) AND change = 'enter' GROUP BY segment_id, id) AS o USING (segment_id, id)"
    ).result_rows[0]
    assert memberships > len(seed) and unknown == differ == 0
    # The lookalike removed the same day: the next build does not follow (its rows must all go).
    removed = build(warehouse, SegmentSet([segments.by_id[901]]), as_of_ms=END_MS + 2 * 3_600_000)
    assert removed.followed == 0 and not warehouse.query(
        "SELECT count() FROM crumb.segment_members WHERE segment_id = 902").result_rows[0][0]


@pytest.mark.parametrize(("definition", "error"), [
    ({"id": 2, "name": "x", "kind": "lookalike", "lookalike": {"seed": 9, "reach": 0.05}}, "unknown seed"),
    ({"id": 2, "name": "x", "kind": "lookalike", "lookalike": {"seed": 3, "reach": 0.05}}, "seeds are rule"),
    ({"id": 2, "name": "x", "rule": {"segment": 3}}, "rules can't"),
])
def test_definitions_keep_seeds_to_rule_segments(definition: dict[str, Any], error: str) -> None:
    rule = parse_segment({"id": 1, "name": "r", "rule": {"where": []}})
    other = parse_segment({"id": 3, "name": "l", "kind": "lookalike", "lookalike": {"seed": 1, "size": 10}})
    with pytest.raises(DefinitionError, match=error):
        SegmentSet([rule, other, parse_segment(definition)])


@pytest.mark.parametrize(("lookalike", "error"), [
    ({"seed": 1}, "one of reach"), ({"seed": 1, "reach": 0.1, "size": 5}, "one of reach"),
    ({"seed": 1, "reach": 2}, "less than or equal"),
])
def test_lookalike_definitions_are_validated(lookalike: dict[str, Any], error: str) -> None:
    with pytest.raises(DefinitionError, match=error):
        parse_segment({"id": 2, "name": "x", "kind": "lookalike", "lookalike": lookalike})
    with pytest.raises(DefinitionError, match="takes a rule"):
        parse_segment({"id": 2, "name": "x", "lookalike": {"seed": 1, "reach": 0.1}})


def test_reach_reads_percentages_and_the_example_loads() -> None:
    assert Lookalike(seed=1, reach="5%").reach == pytest.approx(0.05)  # type: ignore[arg-type]
    from audiences.definitions import load_segments

    examples = Path(__file__).resolve().parents[2] / "audiences" / "examples"
    assert any(s.kind == "lookalike" for s in load_segments(examples).by_id.values())


@pytest.mark.parametrize(("token", "label"), [
    ("cat:533", "visits Sports > Soccer"), ("dev:mobile", "mobile"), ("host:shop.example", "on shop.example"),
    ("p2:/sports/soccer", "reads /sports/soccer"), ("freq:3", "8-15 events"),
])
def test_features_read_as_words(token: str, label: str) -> None:
    assert describe(token) == label


def test_the_cli_function_uses_the_last_builds_members(warehouse: Client, world: Any) -> None:
    result = run_lookalike(warehouse, 901, reach=0.05, lookback_days=14, as_of_ms=END_MS)
    assert result["status"] in ("ok", "seed_too_small")  # 901 exists once the build test ran
    assert "run_id" in result
