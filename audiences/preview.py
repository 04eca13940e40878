"""Preview: the size of an unsaved definition in seconds, from a sample, with its error.

The definition goes through the build's own statements (the compiler's lookups, scan and
membership), over a view of the events of a hash sample of IDs and into scratch tables of the
preview's own, so a preview never touches a running build's tables nor the members. The share of
sampled IDs that qualify, times the number of IDs seen in the lookback, is the estimate.
"""

from __future__ import annotations

import math
import time
import uuid

from clickhouse_connect.driver.client import Client

from audiences.builder import drop_scratch, make_scratch
from audiences.compiler import (
    AGGREGATION_SETTINGS,
    BUILD,
    EVENTS,
    ROW_ID,
    VALUES_SETTINGS,
    Plan,
    Tables,
    compile_segments,
    membership_statement,
    values_statements,
    window_filter,
    window_start,
)
from audiences.definitions import Segment, SegmentSet, Status, references
from audiences.errors import InvalidRequest
from collector.categories import ContentTaxonomy

SAMPLE_BUCKETS = 1_000_000  # an ID is sampled when cityHash64(typed ID) % SAMPLE_BUCKETS < buckets
Z_95 = 1.959964




def preview(
    client: Client, segment: Segment, segments: SegmentSet, taxonomy: ContentTaxonomy | None = None,
    as_of_ms: int | None = None, sample: float = 0.1,
) -> dict:
    """Estimate how many IDs `segment` would hold as of `as_of_ms` (default now), from a sample of
    `sample` of the IDs (0 < sample ≤ 1; 1 counts them all), with a 95% interval."""
    if not 0 < sample <= 1:
        raise InvalidRequest(f"a preview's sample is a share of the IDs, 0 < sample <= 1, not {sample}")
    if segment.kind == "lookalike":
        raise InvalidRequest(f"segment {segment.id} is a lookalike: it has no rule to preview, and its size is "
                             "its reach or size setting")
    started = time.perf_counter()
    as_of_ms = as_of_ms if as_of_ms is not None else int(time.time() * 1000)
    plan = compile_segments(preview_set(segment, segments), taxonomy)
    buckets = max(1, round(sample * SAMPLE_BUCKETS))
    sampled, members = _evaluate(client, plan, segment, as_of_ms, buckets)
    # Not every ID evaluated, the population is more than the sample: the sketch's count, or the
    # sample scaled up where the sketch counts fewer (at a share near 1, within its error), which
    # would read as every ID evaluated, and an interval of no width.
    population = sampled if buckets == SAMPLE_BUCKETS else \
        max(_population(client, segment, as_of_ms), math.ceil(sampled * SAMPLE_BUCKETS / buckets))
    low, high = wilson_interval(members, sampled, population)
    share = members / sampled if sampled else 0.0
    estimate, margin = round(share * population), math.ceil((high - low) / 2)
    return {
        "segment_id": segment.id, "name": segment.name, "as_of_ms": as_of_ms, "lookback_days": segment.lookback_days,
        "estimate": estimate, "interval": {"low": low, "high": high, "confidence": 0.95},
        "margin": margin, "relative_margin": round(margin / estimate, 4) if estimate else None,
        "share": round(share, 6), "sampled_profiles": sampled, "sampled_members": members,
        "population_profiles": population, "sample_fraction": buckets / SAMPLE_BUCKETS,
        "elapsed_s": round(time.perf_counter() - started, 3), "method": _method(buckets),
    }


def preview_set(segment: Segment, segments: SegmentSet) -> SegmentSet:
    """The new definition, active, with the saved segments it refers to (paused: compiled as the
    columns it reads, `compiler.Referenced`, not built themselves). Raises DefinitionError on an
    unknown ref or a cycle."""
    chosen = {segment.id: segment.model_copy(update={"status": Status.ACTIVE})}
    pending = list(references(segment.rule))
    while pending:
        ref = pending.pop()
        if ref not in chosen and ref in segments.by_id:
            chosen[ref] = segments.by_id[ref].model_copy(update={"status": Status.PAUSED})
            pending.extend(references(chosen[ref].rule))
    return SegmentSet(chosen.values())


def _evaluate(client: Client, plan: Plan, segment: Segment, as_of_ms: int, buckets: int) -> tuple[int, int]:
    """(sampled IDs seen in the lookback, those that qualify), by the build's statements on scratch tables."""
    tables = Tables.scratch(f"crumb._preview_{uuid.uuid4().hex[:12]}_")
    try:
        _make_scratch(client, tables, buckets)
        for sql, parameters in values_statements(plan, as_of_ms, tables):
            client.command(sql, parameters=parameters, settings=VALUES_SETTINGS)
        sql, parameters = membership_statement(plan, as_of_ms, 0, tables)
        client.command(sql, parameters=parameters, settings=AGGREGATION_SETTINGS)
        sampled = client.query(
            f"SELECT uniqExact({ROW_ID}) FROM {tables.events} WHERE {window_filter(tables.optouts)}",
            parameters={"since_ms": window_start(as_of_ms, segment.lookback_days), "as_of_ms": as_of_ms},
        ).result_rows[0][0]
        members = client.query(f"SELECT uniqExact(profile_id) FROM {tables.members}").result_rows[0][0]
    finally:
        _drop_scratch(client, tables)
    return int(sampled), int(members)


def _make_scratch(client: Client, tables: Tables, buckets: int) -> None:
    make_scratch(client, tables)
    client.command(f"CREATE TABLE {tables.members} AS {BUILD.members} ENGINE = Memory")
    # The sample: whole IDs, so each sampled ID keeps every event. `buckets` is an int we computed.
    client.command(f"CREATE VIEW {tables.events} AS SELECT * FROM {EVENTS} "
                   f"WHERE cityHash64({ROW_ID}) % {SAMPLE_BUCKETS} < {int(buckets)}")


def _drop_scratch(client: Client, tables: Tables) -> None:
    drop_scratch(client, tables)
    client.command(f"DROP TABLE IF EXISTS {tables.members} SYNC")
    client.command(f"DROP VIEW IF EXISTS {tables.events}")


def _population(client: Client, segment: Segment, as_of_ms: int) -> int:
    """IDs with an eligible event in the lookback, by the uniqCombined sketch (error ≈ 0.3%)."""
    return int(client.query(
        f"SELECT uniqCombined({ROW_ID}) FROM {EVENTS} WHERE {window_filter()}",
        parameters={"since_ms": window_start(as_of_ms, segment.lookback_days), "as_of_ms": as_of_ms},
    ).result_rows[0][0])


def wilson_interval(successes: int, n: int, population: int, z: float = Z_95) -> tuple[int, int]:
    """The 95% interval of successes/n scaled to `population`: a Wilson score interval (sound near
    0 and 1, where p ± z·sqrt(p(1-p)/n) collapses to a point), with the finite population correction."""
    if n == 0:
        return 0, population
    if n >= population:
        return successes, successes
    n_eff = n * (population - 1) / (population - n)  # sampling without replacement: a larger effective n
    p = successes / n
    centre = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z / (1 + z * z / n_eff) * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff))
    return max(0, math.floor((centre - half) * population)), min(population, math.ceil((centre + half) * population))


def _method(buckets: int) -> dict:
    return {
        "sampling": f"IDs with cityHash64(typed ID) % {SAMPLE_BUCKETS} < {buckets}, with all their events",
        "evaluation": "the build's lookup, scan and membership statements, on the sample",
        "scaling": "none: every ID evaluated" if buckets == SAMPLE_BUCKETS else
                   "share of sampled IDs seen in the lookback that qualify × IDs seen in the lookback (uniqCombined)",
        "interval": "95% Wilson score interval with finite population correction: the error of sampling "
                    "IDs (none when every ID is evaluated), not the difference linking makes (see note), nor "
                    "the sketch's (about 0.3%) in the IDs seen",
        "profile_resolution": False,
        "note": "linked IDs are not merged on the sample: each typed ID (the cookie of an event, or its "
                "first-party ID when it has no cookie) counts as its own profile. A build merges them, so it "
                "can count fewer profiles (linked IDs that qualify each on its own are one), or more (a "
                "profile whose IDs meet the rule together, none of them alone)",
    }
