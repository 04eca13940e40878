"""Preview against the real warehouse: a synthetic population of a few thousand cookies.

This module's events live in June 2051 (no other test's window reaches them); segment IDs 51xxx.
The cookie IDs come from a seeded generator, so which cookies the hash sample picks is fixed too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client

from audiences.builder import build
from audiences.definitions import Segment, SegmentSet, Status, parse_segment
from audiences.errors import InvalidRequest
from audiences.preview import preview, wilson_interval

DAY = 86_400_000
T = int(datetime(2051, 6, 15, tzinfo=UTC).timestamp() * 1000)
COOKIES = 4000


@dataclass(frozen=True)
class Population:
    sports_fans: int  # humans with 2 or more sports pages in the last 20 days
    desktop_fans: int  # of those, the ones on desktop


@pytest.fixture(scope="module")
def population(warehouse: Client) -> Iterator[Population]:
    rng = np.random.default_rng(51)
    ids = np.array([rng.bytes(16).hex() for _ in range(COOKIES)])
    bot = rng.random(COOKIES) < 0.05
    fan = rng.random(COOKIES) < 0.3
    desktop = rng.random(COOKIES) < 0.6
    per_cookie = 1 + rng.poisson(4, COOKIES)
    owner = np.repeat(np.arange(COOKIES), per_cookie)
    sports = rng.random(len(owner)) < np.where(fan[owner], 0.5, 0.02)
    ts = T - rng.integers(0, 20 * DAY, len(owner))
    columns = {
        "event_id": [uuid.UUID(bytes=rng.bytes(16)) for _ in owner], "ts": ts.tolist(), "received_at": ts.tolist(),
        "site": ["preview-test"] * len(owner), "type": ["pageview"] * len(owner), "cookie_id": ids[owner].tolist(),
        "path": np.where(sports, "/p51/sports/page", "/p51/other").tolist(),
        "device_type": np.where(desktop[owner], "desktop", "mobile").tolist(),
        "is_bot": bot[owner].astype(int).tolist(), "can_profile": [1] * len(owner),
    }
    warehouse.insert("crumb.events", list(columns.values()), column_names=list(columns), column_oriented=True)
    qualifies = (np.bincount(owner, weights=sports, minlength=COOKIES) >= 2) & ~bot
    yield Population(int(qualifies.sum()), int((qualifies & desktop).sum()))
    warehouse.command("ALTER TABLE crumb.events DROP PARTITION 205105")
    warehouse.command("ALTER TABLE crumb.events DROP PARTITION 205106")


DESKTOP = parse_segment({"id": 51002, "name": "desktop", "status": "paused",
                         "rule": {"where": [{"field": "device_type", "op": "eq", "value": "desktop"}]}})
SAVED = SegmentSet([DESKTOP])
SPORTS = {"where": [{"field": "path", "op": "prefix", "value": "/p51/sports"}], "min_count": 2}


def draft(rule: dict, id: int = 51001) -> Segment:
    return parse_segment({"id": id, "name": "draft", "status": "draft", "rule": rule})


def test_a_full_sample_is_exact(warehouse: Client, population: Population) -> None:
    result = preview(warehouse, draft(SPORTS), SAVED, as_of_ms=T, sample=1.0)
    assert result["estimate"] == population.sports_fans
    assert result["interval"] == {"low": population.sports_fans, "high": population.sports_fans, "confidence": 0.95}
    assert result["method"]["profile_resolution"] is False


def test_a_tenth_of_the_ids_brackets_the_true_size(warehouse: Client, population: Population) -> None:
    result = preview(warehouse, draft(SPORTS), SAVED, as_of_ms=T, sample=0.1)
    low, high = result["interval"]["low"], result["interval"]["high"]
    assert low <= population.sports_fans <= high
    assert high - low < 0.4 * population.sports_fans  # and the interval says something
    assert 250 < result["sampled_profiles"] < 500  # about a tenth of the ~3,800 humans
    assert result["sample_fraction"] == 0.1
    assert result["elapsed_s"] > 0
    json.dumps(result)  # the CLI prints it as it is


def test_a_sample_short_of_every_id_never_reads_as_exact(warehouse: Client, population: Population) -> None:
    # The sketch's count of the IDs can fall below the sample's at a share near 1 (within its error):
    # taken as the population, the sample read as every ID, and the interval as exact.
    result = preview(warehouse, draft(SPORTS), SAVED, as_of_ms=T, sample=0.9999)
    assert result["population_profiles"] > result["sampled_profiles"]
    assert result["interval"]["low"] <= population.sports_fans <= result["interval"]["high"]
    assert result["interval"]["high"] > result["interval"]["low"]


def test_references_to_saved_segments_are_compiled_in(warehouse: Client, population: Population) -> None:
    result = preview(warehouse, draft({"all": [SPORTS, {"segment": 51002}]}), SAVED, as_of_ms=T, sample=1.0)
    assert result["estimate"] == population.desktop_fans


def test_a_preview_leaves_the_members_and_no_tables_behind(warehouse: Client, population: Population) -> None:
    assert build(warehouse, SegmentSet([DESKTOP.model_copy(update={"status": Status.ACTIVE})]), as_of_ms=T).members > 0
    before = warehouse.query("SELECT count(), sum(cityHash64(id)) FROM crumb.segment_members").result_rows
    preview(warehouse, draft(SPORTS, id=51002), SAVED, as_of_ms=T, sample=0.2)  # even under a saved ID
    assert warehouse.query("SELECT count(), sum(cityHash64(id)) FROM crumb.segment_members").result_rows == before
    left = warehouse.query("SELECT name FROM system.tables WHERE database = 'crumb' AND name LIKE '%preview%'")
    assert left.result_rows == []


def test_the_interval_is_sound_at_the_edges() -> None:
    assert wilson_interval(0, 0, 1000) == (0, 1000)
    assert wilson_interval(7, 100, 100) == (7, 7)
    low, high = wilson_interval(0, 100, 1000)
    assert low == 0 and 0 < high < 60
    low, high = wilson_interval(50, 100, 1000)
    assert low < 500 < high and high - low < 200


@pytest.mark.parametrize("sample", [0, -0.1, 1.5, float("nan")])
def test_a_sample_outside_0_1_is_refused(warehouse: Client, sample: float) -> None:
    with pytest.raises(InvalidRequest, match="0 < sample <= 1"):
        preview(warehouse, draft(SPORTS), SAVED, as_of_ms=T, sample=sample)


def test_a_lookalike_is_not_previewed_but_told_why(warehouse: Client) -> None:
    lookalike = parse_segment({"id": 51003, "name": "like desktop", "kind": "lookalike",
                               "lookalike": {"seed": 51002, "reach": "5%"}})
    with pytest.raises(InvalidRequest, match="51003 is a lookalike: .* its reach or size setting"):
        preview(warehouse, lookalike, SAVED, as_of_ms=T)
