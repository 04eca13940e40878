"""Reports over the public tables: sizes, the daily trend, overlap, composition, history.

Every function reads `crumb.segment_members` (the last successful build) or the build's
append-only tables, never a running build's scratch tables, and returns plain JSON-safe values.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from audiences.compiler import EVENTS, window_filter, window_start
from audiences.definitions import SegmentSet
from audiences.errors import InvalidRequest, UnknownSegment
from crumb.warehouse import MAX_DAYS_BACK

MEMBERS = "crumb.segment_members"
SUCCEEDED = "SELECT build_id FROM crumb.builds FINAL WHERE status = 'succeeded'"
# Dimensions of composition: what each reads from an events row (one value, or an array of them).
DIMENSIONS = {"categories": "arrayJoin(categories)", "hosts": "host", "device_types": "device_type"}


def sizes(client: Client, segment_ids: list[int] | None = None, segments: SegmentSet | None = None) -> list[dict]:
    """Per segment of the current build: exact profiles, IDs by type, and the uniqCombined sketch's
    estimate of the profiles with its relative error. Asked-for segments without members show zeros;
    none asked for (None): every segment with members."""
    rows = client.query(
        "SELECT segment_id, uniqExact(profile_id), count(), countIf(id_type = 'cookie'), countIf(id_type = 'fp'), "
        f"uniqCombined(profile_id), max(build_id) FROM {MEMBERS} "
        "WHERE {all:Bool} OR has({ids:Array(UInt32)}, segment_id) "
        "GROUP BY segment_id ORDER BY segment_id",
        parameters={"all": segment_ids is None, "ids": segment_ids or []}).result_rows
    found = {int(row[0]): row for row in rows}
    wanted = sorted(found) if segment_ids is None else segment_ids
    return [_size(segment_id, found.get(segment_id), segments) for segment_id in wanted]


def check_defined(client: Client, segment_ids: Iterable[int], segments: SegmentSet) -> None:
    """A segment neither defined nor ever built has no members: its report would read as an empty
    segment's. (One retired from the definitions keeps its trend.)"""
    unknown = sorted(set(segment_ids) - segments.by_id.keys())
    if unknown:
        built = {int(row[0]) for row in client.query(
            "SELECT DISTINCT segment_id FROM crumb.segment_sizes WHERE has({ids:Array(UInt32)}, segment_id)",
            parameters={"ids": [i for i in unknown if 0 < i < 2**32]}).result_rows}
        unknown = [i for i in unknown if i not in built]
    if unknown:
        raise UnknownSegment(f"no segment {', '.join(map(str, unknown))} among the definitions or in any build")


def _size(segment_id: int, row: Sequence[Any] | None, segments: SegmentSet | None) -> dict:
    profiles, ids, cookies, fp_ids, estimate, build_id = (int(v) for v in row[1:]) if row else (0,) * 6
    return {
        "segment_id": segment_id, "name": _name(segment_id, segments), "profiles": profiles, "ids": ids,
        "cookies": cookies, "fp_ids": fp_ids, "estimate": estimate,
        "estimate_error": round((estimate - profiles) / profiles, 6) if profiles else 0.0,
        "build_id": build_id or None,
    }


def _name(segment_id: int, segments: SegmentSet | None) -> str | None:
    segment = segments.by_id.get(segment_id) if segments is not None else None
    return segment.name if segment is not None else None


def trend(client: Client, segment_id: int, days: int = 30, as_of_ms: int | None = None) -> list[dict]:
    """One entry per day of the `days` ending at `as_of_ms` (default now), oldest first: the size at
    the day's last successful build (None on a day without a build), and the IDs that entered and
    exited in that day's builds."""
    if not 1 <= days <= MAX_DAYS_BACK:
        raise InvalidRequest(f"a trend covers 1 to {MAX_DAYS_BACK} days, not {days}")
    end = _day(as_of_ms)
    first = end - timedelta(days=days - 1)
    params = {"segment_id": segment_id, "first": first, "end": end}
    built = client.query(
        "SELECT day, b.build_id, s.profiles, s.ids FROM ("
        " SELECT toDate(as_of) AS day, argMax(build_id, (as_of, build_id)) AS build_id FROM crumb.builds FINAL"
        " WHERE status = 'succeeded' AND toDate(as_of) BETWEEN {first:Date} AND {end:Date} GROUP BY day) AS b "
        "LEFT JOIN (SELECT build_id, profiles, ids FROM crumb.segment_sizes WHERE segment_id = {segment_id:UInt32})"
        " AS s ON s.build_id = b.build_id", parameters=params).result_rows
    changed = client.query(
        "SELECT toDate(built_at) AS day, countIf(has(entered, {segment_id:UInt32})), "
        "countIf(has(exited, {segment_id:UInt32})) FROM crumb.id_deltas "
        "WHERE toDate(built_at) BETWEEN {first:Date} AND {end:Date} "
        # A build writes its deltas before it swaps its members in; one that died kept them.
        f"AND build_id IN ({SUCCEEDED}) "
        "AND (has(entered, {segment_id:UInt32}) OR has(exited, {segment_id:UInt32})) "
        "GROUP BY day", parameters=params).result_rows
    by_day = {row[0]: row[1:] for row in built}
    moves = {row[0]: row[1:] for row in changed}
    return [_trend_day(first + timedelta(days=i), by_day, moves) for i in range(days)]


def _trend_day(day: date, by_day: dict[date, Sequence[Any]], moves: dict[date, Sequence[Any]]) -> dict:
    build_id, profiles, ids = by_day.get(day, (None, None, None))
    entered, exited = moves.get(day, (0, 0))
    return {
        "day": day.isoformat(), "build_id": build_id, "profiles": None if build_id is None else int(profiles),
        "ids": None if build_id is None else int(ids), "entered": int(entered), "exited": int(exited),
    }


def _day(at_ms: int | None) -> date:
    at_ms = at_ms if at_ms is not None else int(time.time() * 1000)
    return datetime.fromtimestamp(at_ms / 1000, UTC).date()


def overlap(client: Client, segment_ids: list[int], segments: SegmentSet | None = None) -> dict:
    """Profiles in both of each pair of segments, and their Jaccard index, in one query: a bitmap of
    64-bit hashes of the profile IDs per segment (a collision is ~n²/2⁶⁵: none at any real size)."""
    rows = client.query(
        "WITH bitmaps AS (SELECT segment_id, groupBitmapState(cityHash64(profile_id)) AS bm "
        f" FROM {MEMBERS} WHERE has({{ids:Array(UInt32)}}, segment_id) GROUP BY segment_id) "
        "SELECT a.segment_id, b.segment_id, bitmapAndCardinality(a.bm, b.bm), bitmapOrCardinality(a.bm, b.bm) "
        "FROM bitmaps AS a CROSS JOIN bitmaps AS b", parameters={"ids": segment_ids}).result_rows
    cells = {(int(a), int(b)): (int(both), int(either)) for a, b, both, either in rows}
    pairs = [[cells.get((a, b), (0, 0)) for b in segment_ids] for a in segment_ids]
    return {
        "segments": [{"segment_id": s, "name": _name(s, segments)} for s in segment_ids],
        "sizes": [pairs[i][i][0] for i in range(len(segment_ids))],
        "intersection": [[both for both, _ in row] for row in pairs],
        "jaccard": [[round(both / either, 6) if either else 0.0 for both, either in row] for row in pairs],
    }


def composition(
    client: Client, segment_id: int, lookback_days: int = 30, top: int = 10, as_of_ms: int | None = None,
) -> dict:
    """What the segment's members did in the window against everyone eligible (no bots, profiling
    consent, not opted out): per dimension the top values by the members' events, each with its
    share of the members' events, its share of all events and the index 100 × the first / the second."""
    as_of_ms = as_of_ms if as_of_ms is not None else int(time.time() * 1000)
    params = {"segment_id": segment_id, "since_ms": window_start(as_of_ms, lookback_days), "as_of_ms": as_of_ms,
              "top": top}
    in_segment = (
        f"(cookie_id IN (SELECT id FROM {MEMBERS} WHERE segment_id = {{segment_id:UInt32}} AND id_type = 'cookie') "
        f"OR fp_id IN (SELECT id FROM {MEMBERS} WHERE segment_id = {{segment_id:UInt32}} AND id_type = 'fp'))")
    seg_events, all_events = client.query(
        f"SELECT countIf({in_segment}), count() FROM {EVENTS} WHERE {window_filter()}", parameters=params,
    ).result_rows[0]
    result: dict[str, Any] = {"segment_id": segment_id, "lookback_days": lookback_days,
                              "segment_events": int(seg_events), "population_events": int(all_events)}
    for name, value in DIMENSIONS.items():
        rows = client.query(
            f"SELECT value, seg, pop FROM (SELECT {value} AS value, countIf(in_seg) AS seg, count() AS pop FROM ("
            f" SELECT categories, host, device_type, {in_segment} AS in_seg FROM {EVENTS} WHERE {window_filter()}"
            ") GROUP BY value) "
            "WHERE seg > 0 ORDER BY seg DESC, value LIMIT {top:UInt32}", parameters=params).result_rows
        result[name] = [_share(value, seg, pop, seg_events, all_events) for value, seg, pop in rows]
    return result


def _share(value: str, seg: int, pop: int, seg_total: int, pop_total: int) -> dict:
    share_segment, share_population = seg / seg_total, pop / pop_total
    return {
        "value": value, "segment_events": int(seg), "population_events": int(pop),
        "share_segment": round(share_segment, 6), "share_population": round(share_population, 6),
        "index": round(100 * share_segment / share_population, 1),
    }


def history_at(client: Client, segment_id: int, at_ms: int) -> int:
    """How many IDs were in the segment at `at_ms`: entered_at <= T < exited_at."""
    return int(client.query(
        "SELECT count() FROM crumb.segment_history WHERE segment_id = {segment_id:UInt32} "
        "AND entered_at <= fromUnixTimestamp64Milli({at_ms:Int64}, 'UTC') "
        "AND exited_at > fromUnixTimestamp64Milli({at_ms:Int64}, 'UTC')",
        parameters={"segment_id": segment_id, "at_ms": at_ms}).result_rows[0][0])
