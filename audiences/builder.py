"""The batch build: all active segments in one scan of the events, entirely inside ClickHouse.

Steps (each timed, and recorded in `crumb.builds`):
  profiles  link IDs seen together on an event into profiles (connected components)
  lookups   evaluate every predicate once per distinct value of its field
  scan      one pass over the window: (profile, condition) → count, days, engaged time
  members   each segment's boolean per profile → `segment_members_next`, per ID
  lookalikes  each lookalike segment's model over this build's seed members → `segment_members_next`
  deltas    entered / exited against the previous build → `segment_deltas`, `segment_history`
  swap      exchange `segment_members_next` and `segment_members` atomically

A build that fails leaves the previous members in place and its partial deltas removed. The
Python process holds no members at any point: every step is INSERT ... SELECT.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from audiences.compiler import (
    BUILD,
    ELIGIBLE,
    EVENTS,
    PROFILE_IDS,
    PROFILE_OF,
    Plan,
    Tables,
    compile_segments,
    lookup_statements,
    membership_statement,
    scan_statement,
    window_filter,
    window_params,
)
from audiences.definitions import SegmentSet
from audiences.errors import BuildError
from audiences.lookalike import build_lookalikes
from collector.categories import ContentTaxonomy
from crumb.progress import SILENT, Progress

OPEN_INTERVAL = "2106-01-01 00:00:00.000"
# The scratch tables of a build (or a preview), by their field in `Tables`.
SCRATCH_TABLES = {
    "lookup": "(field String, value String, preds Array(UInt32)) ENGINE = Join(ANY, LEFT, field, value)",
    "profile_of": "(id String, profile String) ENGINE = Join(ANY, LEFT, id)",
    "profile_ids": "(profile String, ids Array(String)) ENGINE = Join(ANY, LEFT, profile)",
    "profile_conditions": "(profile String, cond UInt32, n UInt64, days UInt64, engaged UInt64) ENGINE = Memory",
}
MAX_LINK_ROUNDS = 64  # log2 of the longest chain of linked IDs, with room to spare


@dataclass
class BuildResult:
    build_id: int
    as_of_ms: int
    status: str = "running"
    segments: int = 0
    conditions: int = 0
    profiles: int = 0
    members: int = 0
    entered: int = 0
    exited: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    lookalikes: dict[int, dict[str, Any]] = field(default_factory=dict)  # segment id → evaluation

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Steps:
    def __init__(self, result: BuildResult, progress: Progress) -> None:
        self._result = result
        self._progress = progress

    def run(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.monotonic()
        self._progress.note(f"build {self._result.build_id}: {name} ...")
        value = work()
        self._result.timings[name] = round(time.monotonic() - started, 3)
        self._progress.note(f"build {self._result.build_id}: {name} done in {self._result.timings[name]:.2f}s")
        return value


def build(
    client: Client, segments: SegmentSet, taxonomy: ContentTaxonomy | None = None,
    progress: Progress = SILENT, as_of_ms: int | None = None,
) -> BuildResult:
    """Build every active segment as of `as_of_ms` (default: now). Raises BuildError on failure."""
    as_of_ms = as_of_ms if as_of_ms is not None else int(time.time() * 1000)
    result = BuildResult(build_id=_next_build_id(client), as_of_ms=as_of_ms)
    plan = compile_segments(segments.rule_segments(), taxonomy)
    result.segments, result.conditions = len(plan.segments) + len(segments.lookalikes()), len(plan.conditions)
    steps = _Steps(result, progress)
    started_ms = int(time.time() * 1000)
    _record(client, result, started_ms)
    try:
        _discard_incomplete_builds(client, result.build_id)
        drop_scratch(client)
        _drop_link_tables(client)
        make_scratch(client)
        steps.run("profiles", lambda: _resolve_profiles(client, plan, as_of_ms))
        if plan.segments:
            steps.run("lookups", lambda: _run(client, lookup_statements(plan, as_of_ms)))
            steps.run("scan", lambda: _run(client, [scan_statement(plan, as_of_ms)]))
            client.command("TRUNCATE TABLE crumb.segment_members_next")
            steps.run("members", lambda: _run(client, [membership_statement(plan, result.build_id)]))
        else:
            client.command("TRUNCATE TABLE crumb.segment_members_next")
        if segments.lookalikes():
            result.lookalikes = steps.run("lookalikes", lambda: build_lookalikes(
                client, segments, result.build_id, as_of_ms, taxonomy, progress))
        steps.run("deltas", lambda: _write_deltas(client, result.build_id, as_of_ms))
        _count(client, result)
        steps.run("swap", lambda: _swap(client))
        result.status = "succeeded"
    except Exception as exc:
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
        _discard_build(client, result.build_id)
        _record(client, result, started_ms)
        raise BuildError(f"build {result.build_id} failed, the previous build stays in place: {result.error}") from exc
    finally:
        drop_scratch(client)
        _drop_link_tables(client)
    _record(client, result, started_ms)
    return result


def _run(client: Client, statements: Iterable[tuple[str, dict[str, Any]]]) -> None:
    for sql, parameters in statements:
        client.command(sql, parameters=parameters)


def _next_build_id(client: Client) -> int:
    last = client.query("SELECT max(build_id) FROM crumb.builds").result_rows[0][0] or 0
    return max(int(last) + 1, int(time.time()))


def _record(client: Client, result: BuildResult, started_ms: int) -> None:
    client.insert("crumb.builds", [[
        result.build_id, started_ms, int(time.time() * 1000), result.as_of_ms, result.status, result.segments,
        result.conditions, result.profiles, result.members, result.entered, result.exited, result.timings,
        result.error, time.time_ns(),
    ]], column_names=["build_id", "started_at", "finished_at", "as_of", "status", "segments", "conditions",
                      "profiles", "members", "entered", "exited", "timings", "error", "version"])


def make_scratch(client: Client, tables: Tables = BUILD) -> None:
    for name, definition in SCRATCH_TABLES.items():
        client.command(f"CREATE TABLE {getattr(tables, name)} {definition}")


def drop_scratch(client: Client, tables: Tables = BUILD) -> None:
    for name in SCRATCH_TABLES:
        client.command(f"DROP TABLE IF EXISTS {getattr(tables, name)}")


def _drop_link_tables(client: Client) -> None:
    for table in ("crumb._build_edges", "crumb._build_labels", "crumb._build_labels_next", "crumb._build_jump"):
        client.command(f"DROP TABLE IF EXISTS {table}")


def _resolve_profiles(client: Client, plan: Plan, as_of_ms: int) -> None:
    """IDs seen on one event are one profile: connected components by label propagation.

    The label of a component is its smallest typed ID ('c:<cookie>' sorts before 'f:<fp>').
    """
    params = window_params(plan, as_of_ms)
    client.command(
        "CREATE TABLE crumb._build_edges ENGINE = Memory AS "
        "SELECT DISTINCT concat('c:', cookie_id) AS a, concat('f:', fp_id) AS b "
        f"FROM {EVENTS} WHERE {window_filter()} AND cookie_id != '' AND fp_id != ''", parameters=params)
    client.command(
        "CREATE TABLE crumb._build_labels ENGINE = Memory AS SELECT node, min(other) AS label FROM ("
        " SELECT a AS node, least(a, b) AS other FROM crumb._build_edges"
        " UNION ALL SELECT b, least(a, b) FROM crumb._build_edges) GROUP BY node")
    for _ in range(MAX_LINK_ROUNDS):
        # Each round takes the smallest label among neighbours, then jumps to the label's own label:
        # a chain of n links is one profile after about log2(n) rounds, not n.
        client.command(
            "CREATE TABLE crumb._build_labels_next ENGINE = Memory AS "
            "SELECT d.node AS node, min(l.label) AS label FROM ("
            " SELECT a AS node, b AS other FROM crumb._build_edges"
            " UNION ALL SELECT b, a FROM crumb._build_edges"
            " UNION ALL SELECT node, node FROM crumb._build_labels) AS d "
            "INNER JOIN crumb._build_labels AS l ON l.node = d.other GROUP BY d.node")
        client.command(
            "CREATE TABLE crumb._build_jump ENGINE = Memory AS "
            "SELECT n.node AS node, least(n.label, j.label) AS label FROM crumb._build_labels_next AS n "
            "INNER JOIN crumb._build_labels_next AS j ON j.node = n.label")
        changed = client.query(
            "SELECT count() FROM crumb._build_jump AS n INNER JOIN crumb._build_labels AS o "
            "ON o.node = n.node WHERE o.label != n.label").result_rows[0][0]
        for table in ("crumb._build_labels", "crumb._build_labels_next"):
            client.command(f"DROP TABLE {table}")
        client.command("RENAME TABLE crumb._build_jump TO crumb._build_labels")
        if not changed:
            break
    else:
        raise BuildError(f"profile links did not settle in {MAX_LINK_ROUNDS} rounds")
    client.command(f"INSERT INTO {PROFILE_OF} SELECT node, label FROM crumb._build_labels")
    client.command(f"INSERT INTO {PROFILE_IDS} SELECT label, groupArray(node) FROM crumb._build_labels GROUP BY label")


def _write_deltas(client: Client, build_id: int, as_of_ms: int) -> None:
    params = {"build_id": build_id, "at": as_of_ms}
    at = "fromUnixTimestamp64Milli({at:Int64}, 'UTC')"
    # One sort-merge FULL JOIN of the new members against the old: both sides are ordered by
    # (segment_id, id), and it measured 4× faster than two anti-joins on 1M events.
    client.command(
        f"INSERT INTO crumb.segment_deltas SELECT {{build_id:UInt64}}, {at}, "
        "if(empty(n.id), o.segment_id, n.segment_id), if(empty(n.id), o.id, n.id), "
        "if(empty(n.id), o.id_type, n.id_type), if(empty(n.id), 'exit', 'enter') "
        "FROM crumb.segment_members_next AS n FULL OUTER JOIN crumb.segment_members AS o "
        "ON o.segment_id = n.segment_id AND o.id = n.id WHERE empty(n.id) OR empty(o.id)",
        parameters=params, settings={"join_algorithm": "full_sorting_merge"})
    client.command(
        f"INSERT INTO crumb.segment_history SELECT segment_id, id, id_type, {at}, '{OPEN_INTERVAL}', "
        "{build_id:UInt64} FROM crumb.segment_deltas WHERE build_id = {build_id:UInt64} AND change = 'enter'",
        parameters=params)
    client.command(
        f"INSERT INTO crumb.segment_history SELECT h.segment_id, h.id, h.id_type, h.entered_at, {at}, "
        "{build_id:UInt64} FROM crumb.segment_history AS h FINAL INNER JOIN ("
        " SELECT segment_id, id FROM crumb.segment_deltas WHERE build_id = {build_id:UInt64} AND change = 'exit'"
        f") AS d ON d.segment_id = h.segment_id AND d.id = h.id WHERE h.exited_at = '{OPEN_INTERVAL}'",
        parameters=params)
    client.command(
        f"INSERT INTO crumb.segment_sizes SELECT {{build_id:UInt64}}, {at}, segment_id, uniqExact(profile_id), count() "
        "FROM crumb.segment_members_next GROUP BY segment_id", parameters=params)


def _count(client: Client, result: BuildResult) -> None:
    params = {"build_id": result.build_id}
    result.members, result.profiles = client.query(
        "SELECT count(), uniqExact(profile_id) FROM crumb.segment_members_next").result_rows[0]
    result.entered, result.exited = client.query(
        "SELECT countIf(change = 'enter'), countIf(change = 'exit') FROM crumb.segment_deltas "
        "WHERE build_id = {build_id:UInt64}", parameters=params).result_rows[0]


def _swap(client: Client) -> None:
    client.command("EXCHANGE TABLES crumb.segment_members AND crumb.segment_members_next")
    client.command("TRUNCATE TABLE crumb.segment_members_next")


def _discard_build(client: Client, build_id: int) -> None:
    """Remove what a failed build wrote, so activation never sees its deltas."""
    params = {"build_id": build_id}
    for table, column in (("segment_deltas", "build_id"), ("segment_history", "version"),
                          ("segment_sizes", "build_id")):
        try:
            client.command(f"DELETE FROM crumb.{table} WHERE {column} = {{build_id:UInt64}}", parameters=params)
        except Exception:  # the build failed already; the next build discards leftovers again
            pass


def _discard_incomplete_builds(client: Client, current: int) -> None:
    """A build that died mid-way (the process was killed) left status 'running': clean up after it,
    once, and mark it failed. (A build that failed in the open cleaned up after itself.)"""
    rows = client.query(
        "SELECT build_id FROM crumb.builds FINAL WHERE status = 'running' AND build_id != {b:UInt64}",
        parameters={"b": current}).result_rows
    for (build_id,) in rows:
        _discard_build(client, int(build_id))
        client.command(
            "INSERT INTO crumb.builds SELECT build_id, started_at, now64(3), as_of, 'failed', segments, conditions, "
            "profiles, members, entered, exited, timings, 'interrupted: the process running it stopped', "
            "{version:UInt64} FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
            parameters={"b": int(build_id), "version": time.time_ns()})


__all__ = ["ELIGIBLE", "BuildResult", "build"]
