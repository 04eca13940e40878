"""Rolled-up hours: what a build needs of the events, per ID and hour, kept from build to build.

A build used to read every event of its window (30 days: ten million rows, each tested against
every predicate). Past days do not change, so a build rolls each whole day up once, per ID and
hour, into the columns the membership statement aggregates (`compiler.event_columns`: predicate
bits OR-ed, counts and engaged time summed), and later builds read those rows instead:

  window:   since ──────────────────────────────────────────────────── as_of
  read as:  [rolled-up hours of whole days, totalled per ID ...]     [events of as_of's day]

Rolled-up rows are about a third of the events, and need no predicate work. The events of as_of's
day are rolled up by each build too, into a scratch table (`compiler.today_statement`), so that
the membership statement reads hour rows and the rolled-up days' totals per ID (`write_totals`),
no event.

The rolled rows depend on the plan's predicates: the table carries a fingerprint of the roll
statement (text and parameters), and a plan with another one starts a new table. A day is rolled
again when its events changed since (late arrivals, a spool replayed, an erasure): each rolled
day records the count and an order-free digest of its event IDs, compared before each build,
and the table it went into (its UUID). So is a day where a first-party ID that opted out since
shared events with a cookie: each day's record also holds the opt-outs its rows leave out. On a
cluster the rollup is the node's own, made by the builds that talk to it, while the record is
replicated: a build on another node rolls its window up there before it reads it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from audiences.compiler import (
    BUILD,
    DAY_MS,
    EVENTS,
    Plan,
    RollupRead,
    Tables,
    roll_statement,
    rollup_columns,
    totals_statement,
    values_statements,
    window_start,
)
from crumb.warehouse import on_cluster

ROLLUP = "crumb.segment_rollup"
ROLLED_DAYS = "crumb.segment_rollup_days"  # migration audiences_0006
# Per ID, its rolled-up hours' aggregates as of a day (`compiler.totals_statement`): written by
# the first build of the day that finds them missing (or keyed otherwise), read by every build
# that day. Its comment says for which rollup, plan and day; rolling a day up again drops it.
TOTALS = "crumb.segment_rollup_totals"
# Each rolled day's record also holds the opt-outs its rows leave out (`Optouts`), as the build's
# snapshot that rolled it said, or that found it needs no rolling for those since (migration
# audiences_0016). A rolled row is a cookie's hour, and holds the events it shared with
# first-party IDs. When one of those opts out later, the totals leave out its own rows, but its
# events stay in the cookie's: those days are rolled up again (a cookie that opts out is a row of
# its own).
# IDs' days to roll up again, left by erasures (`note_erasure`), node-local as the rollup: the
# days a cookie shared events with an erased first-party ID (always a cookie's: a row holds links
# only when it is a cookie's). The erasure deletes the cookie's rows
# of those days, and takes the erased events out of the days' records, so that the next build
# rolls up those rows (`roll_pending`), not the whole days.
PENDING = "crumb.segment_rollup_pending"
# The day's first build reads the rollup whole, to total it per ID. Its counts and bit words
# compress 3-10x, but decompressing them was much of that read: stored plain (its hours too), the
# hourly build of bench/segments, which read the rollup whole then, took a tenth less CPU (3.10 s
# against 3.50 s, median of 5 interleaved pairs), for twice the disk (496 MB against 234 MB for 3M
# rows, about the size of the events they came from). The IDs and links stay compressed: they
# compress little, and reading them plain saved nothing.
COMPRESSED_KINDS = ("String", "Array(String)")  # the rest is stored plain
# Both tables are stored unsorted (ORDER BY tuple()): every reader reads them whole (a window of
# whole days, found by partition; a following build's IDs, spread over every granule), so a sort
# key bought nothing, and sorting the rows as they were written was a sixth of the rollup's time
# and a fifth of the totals' (bench/segments, 100 segments: a week rolled up in 2.35-2.54 s against
# 2.82-3.07 s; the totals written in 2.72-3.34 s against 3.53-4.40 s, interleaved runs).
LAYOUT = 2  # of the table; in the fingerprint, so that a table of an older layout is rolled up anew


@dataclass(frozen=True)
class Optouts:
    """The opted-out IDs, as a build saw them: how many, the XOR of their hashes, and the latest
    time one was recorded (epoch ms)."""

    count: int = 0
    digest: int = 0
    through_ms: int = 0

    def same(self, other: Optouts) -> bool:
        return (self.count, self.digest) == (other.count, other.digest)

    def plus(self, other: Optouts) -> Optouts:
        """Both sets as one, when they have no ID in common."""
        return Optouts(self.count + other.count, self.digest ^ other.digest, max(self.through_ms, other.through_ms))

    def only_added(self, added: Optouts, now: Optouts) -> bool:
        """Whether `added` (of `now`, those recorded after this set's latest) make up all that
        changed since this set: they are the new ones. An opt-out recorded late with an earlier
        time, one recorded again, or one removed breaks the sum: then any may be new."""
        return self.plus(added).same(now)


def optout_digest(client: Client, snapshot: str, after_ms: int = 0) -> tuple[Optouts, Optouts]:
    """The opted-out IDs of the build's snapshot (`compiler.snapshot_optouts`), and those of them
    recorded after `after_ms`: what every statement of the build excludes, so what its state says."""
    now_count, now_digest, now_through, count, digest, through = client.query(
        "SELECT count(), groupBitXor(h), toUnixTimestamp64Milli(max(at)), countIf(later), groupBitXorIf(h, later), "
        "toUnixTimestamp64Milli(maxIf(at, later)) FROM ("
        " SELECT cityHash64(id) AS h, opted_out_at AS at, at > fromUnixTimestamp64Milli({after:Int64}, 'UTC') "
        f" AS later FROM {snapshot})", parameters={"after": after_ms}).result_rows[0]
    return (Optouts(int(now_count), int(now_digest), int(now_through) if now_count else 0),
            Optouts(int(count), int(digest), int(through) if count else 0))


def fingerprint(plan: Plan, tables: Tables = BUILD) -> str:
    """What the rolled rows mean: the roll statement, and the value lookups it reads (a path
    prefix's value is a parameter of its lookup, not of the roll), without their time scope."""
    lookups = [(sql, {k: v for k, v in params.items() if k not in ("since_ms", "as_of_ms")})
               for sql, params in values_statements(plan, 0, tables)]
    content = [roll_statement(plan, ROLLUP, tables), lookups, LAYOUT]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_plan(plan: Plan, as_of_ms: int) -> RollupRead:
    """How the build reads: rolled-up hours before as_of's day, events from its start on."""
    return RollupRead(ROLLUP, raw_from_ms=as_of_ms - as_of_ms % DAY_MS, totals=TOTALS)


DayDigests = dict[dt.date, tuple[int, int]]  # day → (events, XOR of their event IDs' hashes)


def days_to_roll(client: Client, plan: Plan, as_of_ms: int, now: DayDigests, tables: Tables = BUILD) -> DayDigests:
    """Make the table fit the plan; return the whole days of the window, before as_of's day, whose
    events (`now`: what they are now) are not rolled up as they are, or hold events a first-party
    ID opted out since shares with a cookie (`_days_of_new_optouts`), with their digests. Days
    that left the window are dropped."""
    key = fingerprint(plan)
    if _comment(client, ROLLUP) != key:
        # A new table has a new UUID: the days recorded for the old one do not read as its own.
        client.command(f"DROP TABLE IF EXISTS {TOTALS}")
        client.command(f"DROP TABLE IF EXISTS {ROLLUP}")
        columns = _definitions(rollup_columns(plan))
        client.command(f"CREATE TABLE {ROLLUP} ({columns}) ENGINE = MergeTree "
                       f"PARTITION BY toYYYYMMDD(hour) ORDER BY tuple() COMMENT '{key}'")
    first = first_day(plan, as_of_ms)
    last = _day(as_of_ms) - dt.timedelta(days=1)
    if last < first:
        return {}
    rolled = _rolled_days(client, first, last)
    _forget_days_before(client, first)
    for (partition,) in client.query(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = 'crumb' AND table = 'segment_rollup' "
            "AND active AND partition_id < {first:String}", parameters={"first": first.strftime("%Y%m%d")}).result_rows:
        client.command(f"ALTER TABLE {ROLLUP} DROP PARTITION ID '{int(partition)}'")
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    never = RolledDay((0, 0), Optouts())  # a day never rolled up: no events then
    changed = [day for day in days if now.get(day, (0, 0)) != rolled.get(day, never).events]
    kept = {day: rolled.get(day, never).optouts for day in days if day not in changed}
    changed += sorted(_days_of_new_optouts(client, kept, tables))
    return {day: now.get(day, (0, 0)) for day in sorted(changed)}


@dataclass(frozen=True)
class RolledDay:
    events: tuple[int, int]  # (count, digest) of its events when rolled
    optouts: Optouts  # those its rows leave out


def _rolled_days(client: Client, first: dt.date | None = None, last: dt.date | None = None) -> dict[dt.date, RolledDay]:
    """The latest record of each day from `first` to `last` (without them: of every day) rolled
    into this node's table."""
    params: dict[str, Any] = {"rollup": _rollup_uuid(client)}
    days = ""
    if first is not None and last is not None:
        days, params["first"], params["last"] = " AND day >= {first:Date} AND day <= {last:Date}", first, last
    rows = client.query(
        "SELECT day, argMax((events, digest, optouts, optout_digest, optouts_through_ms), rolled_at) "
        f"FROM {ROLLED_DAYS} WHERE rollup = {{rollup:UUID}}{days} GROUP BY day", parameters=params).result_rows
    return {day: RolledDay((int(events), int(digest)), Optouts(int(count), int(optouts), int(through)))
            for day, (events, digest, count, optouts, through) in rows}


def _days_of_new_optouts(client: Client, kept: dict[dt.date, Optouts], tables: Tables) -> set[dt.date]:
    """Of the days `kept` (each with the opt-outs its rows leave out), those with events a cookie
    shared with a first-party ID of the snapshot's opt-outs not among them. Per record: those
    recorded after its latest, when they account for the whole change (count and digest); else
    every opted-out ID. (Rows recorded before the days held their opt-outs hold none: every one
    is new to them.)"""
    found: set[dt.date] = set()
    for before in set(kept.values()):
        now, added = optout_digest(client, tables.optouts, before.through_ms)
        if now.same(before):
            continue
        new = f"SELECT id FROM {tables.optouts}"
        if before.only_added(added, now):
            new += " WHERE opted_out_at > fromUnixTimestamp64Milli({after:Int64}, 'UTC')"
        days = sorted(day for day, optouts in kept.items() if optouts == before)
        rows = client.query(
            f"SELECT DISTINCT toDate(ts) FROM {tables.events} WHERE toDate(ts) IN {{days:Array(Date)}} "
            f"AND cookie_id != '' AND fp_id IN ({new})", parameters={"days": days, "after": before.through_ms})
        found |= {day for (day,) in rows.result_rows}
    return found


def first_day(plan: Plan, as_of_ms: int) -> dt.date:
    """The first day of the window: it is rolled up whole."""
    return _day(window_start(as_of_ms, plan.max_window_days))


def roll(client: Client, plan: Plan, digests: DayDigests, as_of_ms: int, tables: Tables = BUILD,
         note: Callable[[str], None] = lambda line: None, settings: dict[str, Any] | None = None) -> int:
    """Roll the days up (again): their rows are replaced, then the days are recorded with the
    digests `days_to_roll` read, and the opt-outs of the build's snapshot as those the rows left
    out. Events that arrived since make the record older than the rows, so the next build rolls
    the day again: never the other way round. Returns the rows written. Needs the build's value
    lookups filled for these days, and `days_to_roll` to have looked at the window's days with
    this build's snapshot of the opt-outs."""
    days = sorted(digests)
    optouts, _ = optout_digest(client, tables.optouts)
    written = 0
    if days:
        client.command(f"DROP TABLE IF EXISTS {TOTALS}")  # of the rows about to change
        for day in days:
            client.command(f"ALTER TABLE {ROLLUP} DROP PARTITION ID '{day.strftime('%Y%m%d')}'")
        sql, params = roll_statement(plan, ROLLUP, tables)
        for start in range(0, len(days), 7):  # a week a statement: progress, and a bounded memory
            chunk = days[start:start + 7]
            summary = client.command(sql, parameters={**params, "roll_days": chunk}, settings=settings)
            written += int(getattr(summary, "written_rows", 0) or 0)
            note(f"rolled up {chunk[0]} .. {chunk[-1]}")
        _record_days(client, {day: RolledDay(digests[day], optouts) for day in days})
    # The other days of the window leave out the snapshot's opt-outs too: `days_to_roll` found
    # those where a new one shared an event with a cookie, and they were rolled again.
    first, last = first_day(plan, as_of_ms), _day(as_of_ms) - dt.timedelta(days=1)
    behind = {day: RolledDay(record.events, optouts) for day, record in _rolled_days(client, first, last).items()
              if record.optouts != optouts}
    if behind:
        _record_days(client, behind)
    return written


def _record_days(client: Client, days: dict[dt.date, RolledDay]) -> None:
    rollup = _rollup_uuid(client)
    client.insert(ROLLED_DAYS, [[day, rollup, *r.events, r.optouts.count, r.optouts.digest, r.optouts.through_ms]
                                for day, r in days.items()],
                  column_names=["day", "rollup", "events", "digest", "optouts", "optout_digest", "optouts_through_ms"])


def note_erasure(client: Client, ids: list[str]) -> Callable[[], None]:
    """Before an erasure deletes the IDs' events: record as pending the days where a cookie shared
    events with one of them on this node's rolled-up days (its rows of those days are what changes
    besides the IDs' own, `forget_ids`), and read what the days' records counted of the IDs'
    events. Returns what to record once every step of the erasure succeeded: the records without
    those events. The next build then rolls up the pending rows, not the days whole. An erasure
    that stops before recording leaves the records as they were: the next build finds the days
    changed and rolls them up whole, and the pending rows with them."""
    if not _exists(client, ROLLUP):
        return lambda: None
    _make_pending(client)
    recorded = _rolled_days(client)
    if not recorded:
        return lambda: None
    params = {"ids": ids, "days": sorted(recorded)}
    of_ids = "(cookie_id IN {ids:Array(String)} OR fp_id IN {ids:Array(String)}) AND toDate(ts) IN {days:Array(Date)}"
    erased = {day: (int(count), int(digest)) for day, count, digest in client.query(
        f"SELECT toDate(ts) AS day, count(), groupBitXor(cityHash64(event_id)) FROM {EVENTS} "
        f"WHERE {of_ids} GROUP BY day", parameters=params).result_rows}
    # The rows that hold them are the rows of those events; read from the rollup too, in case.
    client.command(
        f"INSERT INTO {PENDING} SELECT DISTINCT concat('c:', cookie_id), toDate(ts) FROM {EVENTS} "
        "WHERE fp_id IN {ids:Array(String)} AND cookie_id != '' AND cookie_id NOT IN {ids:Array(String)} "
        f"AND toDate(ts) IN {{days:Array(Date)}} UNION DISTINCT SELECT row_id, toDate(hour) FROM {ROLLUP} "
        "WHERE hasAny(links, {ids:Array(String)}) AND substring(row_id, 3) NOT IN {ids:Array(String)}",
        parameters=params)
    adjusted = {day: RolledDay((r.events[0] - erased[day][0], r.events[1] ^ erased[day][1]), r.optouts)
                for day, r in recorded.items() if day in erased}
    return lambda: _record_days(client, adjusted) if adjusted else None


def forget_ids(client: Client, ids: list[str], typed: list[str]) -> None:
    """Erasure: the IDs' rolled-up rows, the rows of the cookies' days `note_erasure` left
    pending (they hold the erased first-party IDs in their links and counts), and their totals.
    Any other rolled-up row or total that holds one of the IDs in its links goes too, and then
    the next build writes the totals whole."""
    if not _exists(client, ROLLUP):
        return
    _make_pending(client)
    pending = f"SELECT row_id, day FROM {PENDING}"
    params = {"typed": typed, "ids": ids}
    client.command(f"DELETE FROM {ROLLUP} WHERE row_id IN {{typed:Array(String)}} "
                   f"OR (row_id, toDate(hour)) IN ({pending}) OR hasAny(links, {{ids:Array(String)}})",
                   parameters=params)
    if not _exists(client, TOTALS):
        return
    unlisted = client.query(
        f"SELECT count() FROM {TOTALS} WHERE hasAny(links, {{ids:Array(String)}}) "
        f"AND row_id NOT IN (SELECT row_id FROM ({pending}))", parameters=params).result_rows[0][0]
    if unlisted:  # not from the pending days: which rolled-up rows to total again is not known
        client.command(f"DROP TABLE IF EXISTS {TOTALS}")
        return
    client.command(f"DELETE FROM {TOTALS} WHERE row_id IN {{typed:Array(String)}} "
                   f"OR row_id IN (SELECT row_id FROM ({pending}))", parameters=params)


def _make_pending(client: Client) -> None:
    client.command(f"CREATE TABLE IF NOT EXISTS {PENDING} (row_id String, day Date) "
                   "ENGINE = MergeTree ORDER BY tuple()")


def pending_days(client: Client, plan: Plan, as_of_ms: int) -> list[dt.date]:
    """The window's whole days with rows erasures left to roll up again (`note_erasure`)."""
    if not _exists(client, PENDING):
        return []
    first, last = first_day(plan, as_of_ms), _day(as_of_ms) - dt.timedelta(days=1)
    return [day for (day,) in client.query(
        f"SELECT DISTINCT day FROM {PENDING} WHERE day >= {{first:Date}} AND day <= {{last:Date}} ORDER BY day",
        parameters={"first": first, "last": last}).result_rows]


def roll_pending(client: Client, plan: Plan, as_of_ms: int, rolled: DayDigests, tables: Tables = BUILD,
                 settings: dict[str, Any] | None = None) -> int:
    """Roll up the IDs' days erasures left pending (`note_erasure`) in the window, but on days
    `roll` just rolled whole, and total every pending ID again when the day's totals are written;
    forget those up to the window's last day. Returns the rows written. Needs the build's value
    lookups filled for these days (`pending_days`)."""
    if not _exists(client, PENDING) or not client.query(f"SELECT count() FROM {PENDING}").result_rows[0][0]:
        return 0  # as nearly every build finds it: its DELETE below alone is 40-80 ms
    days = [day for day in pending_days(client, plan, as_of_ms) if day not in rolled]
    written = 0
    if days:
        # Their rows are gone unless a build stopped after rolling them, before forgetting them. A
        # DELETE of none costs what one of some does (~5 s on the benchmark's 3M rows): counted first.
        pairs = f"(row_id, toDate(hour)) IN (SELECT row_id, day FROM {PENDING} WHERE day IN {{days:Array(Date)}})"
        if client.query(f"SELECT count() FROM {ROLLUP} WHERE {pairs}", parameters={"days": days}).result_rows[0][0]:
            client.command(f"DELETE FROM {ROLLUP} WHERE {pairs}", parameters={"days": days})
        sql, params = roll_statement(plan, ROLLUP, tables, id_days=PENDING)
        summary = client.command(sql, parameters={**params, "roll_days": days}, settings=settings)
        written = int(getattr(summary, "written_rows", 0) or 0)
    # Every pending cookie's totals went with the erasure, whichever day it is pending for (one
    # after this window too: its rows of the window's days are totalled).
    if totals_written(client, plan, as_of_ms):
        only = f"(SELECT row_id FROM {PENDING})"
        client.command(f"DELETE FROM {TOTALS} WHERE row_id IN {only}")
        select, params = totals_statement(plan, as_of_ms, read_plan(plan, as_of_ms), only=only)
        client.command(f"INSERT INTO {TOTALS} {select}", parameters=params, settings=settings)
    # Forgotten up to the window's last day: a day after it is a later build's to roll up.
    last = _day(as_of_ms) - dt.timedelta(days=1)
    client.command(f"DELETE FROM {PENDING} WHERE day <= {{last:Date}}", parameters={"last": last})
    return written


def _rollup_uuid(client: Client) -> str:
    """The UUID of this node's rollup table: which table a record of rolled days is about."""
    return str(client.query("SELECT uuid FROM system.tables WHERE database = 'crumb' AND name = 'segment_rollup'")
               .result_rows[0][0])


def _forget_days_before(client: Client, first: dt.date) -> None:
    """Drop the record of days that left the window, of every table (this node's, a replaced
    one's, another node's), so that it stays a few rows a day. (A node whose plan has a longer
    window only rolls such a day up again.)"""
    params = {"first": first}
    older = f"SELECT count() FROM {ROLLED_DAYS} WHERE day < {{first:Date}}"
    if client.query(older, parameters=params).result_rows[0][0]:
        client.command(f"DELETE FROM {ROLLED_DAYS} {on_cluster(client)} WHERE day < {{first:Date}}", parameters=params)


def write_totals(client: Client, plan: Plan, as_of_ms: int, settings: dict[str, Any] | None = None,
                 note: Callable[[str], None] = lambda line: None) -> None:
    """Every ID's totals of its rolled-up hours, for as_of's day (`compiler.totals_statement`), a
    part of the IDs at a time (`totals_parts`)."""
    rollup = read_plan(plan, as_of_ms)
    select, params = totals_statement(plan, as_of_ms, rollup)
    columns = [(name, kind) for name, kind, *_ in client.query(f"DESCRIBE ({select})", parameters=params).result_rows]
    client.command(f"DROP TABLE IF EXISTS {TOTALS}")
    # Stored as the rollup is (`COMPRESSED_KINDS`): a following build reads the table whole to
    # find its IDs' rows, in 0.07-0.09 s instead of 0.13 s for the benchmark's 900k IDs.
    client.command(f"CREATE TABLE {TOTALS} ({_definitions(columns)}) ENGINE = MergeTree ORDER BY tuple()")
    parts = totals_parts(client, params)
    for part in range(parts):
        select, params = totals_statement(plan, as_of_ms, rollup, (part, parts))
        client.command(f"INSERT INTO {TOTALS} {select}", parameters=params, settings=settings)
        if parts > 1:
            note(f"totals: part {part + 1} of {parts}")
    # Keyed once whole: an insert cut short leaves some parts behind, and an unkeyed table is
    # written again by the next build.
    client.command(f"ALTER TABLE {TOTALS} MODIFY COMMENT '{_totals_key(plan, as_of_ms)}'")


# The totals' GROUP BY holds every ID of its part at once, ~0.6 KB per ID on each thread for the
# 100-segment benchmark: 1.5 GB for its 900k IDs in one statement, 0.68 GB in two, 0.33 GB in
# four. Each part reads the rollup again (plain columns: a copy from the page cache), so two took
# 4.2-4.6 s against 3.9-4.8 s for one, and four 6.6 s. A part of at most this many rolled-up rows:
# the benchmark's 3M rows in two parts.
ROWS_PER_TOTALS_PART = 2_000_000
MAX_TOTALS_PARTS = 8  # past that, each part's rereading costs more than its memory saves


def totals_parts(client: Client, params: dict[str, Any]) -> int:
    """How many parts of the IDs to total one at a time: by the rolled-up rows of the window
    (parameters `since_ms` and `raw_from_ms`), counted from the parts' metadata."""
    rows = client.query(
        f"SELECT count() FROM {ROLLUP} WHERE hour >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC') "
        "AND hour < fromUnixTimestamp64Milli({raw_from_ms:Int64}, 'UTC')", parameters=params).result_rows[0][0]
    return min(MAX_TOTALS_PARTS, max(1, -(-int(rows) // ROWS_PER_TOTALS_PART)))


def totals_written(client: Client, plan: Plan, as_of_ms: int) -> bool:
    """Whether the totals are this plan's, for as_of's day, of the rollup as it is."""
    return _comment(client, TOTALS) == _totals_key(plan, as_of_ms)


def _totals_key(plan: Plan, as_of_ms: int) -> str:
    """The rolled rows' fingerprint, the totals' statement and its parameters, and as_of's day:
    the statement reads as_of only for its date (`day_bit`), so its totals hold all day."""
    sql, params = totals_statement(plan, as_of_ms, read_plan(plan, as_of_ms))
    content = [fingerprint(plan), sql, {k: v for k, v in params.items() if k != "as_of_ms"}, _day(as_of_ms)]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _definitions(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" + ("" if kind in COMPRESSED_KINDS else " CODEC(NONE)") for name, kind in columns)


def _exists(client: Client, table: str) -> bool:
    return _comment(client, table) is not None


def _comment(client: Client, table: str) -> str | None:
    """The table's comment (its key), or None without the table."""
    database, name = table.split(".")
    rows = client.query("SELECT comment FROM system.tables WHERE database = {database:String} AND name = {name:String}",
                        parameters={"database": database, "name": name}).result_rows
    return rows[0][0] if rows else None


def _day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()
