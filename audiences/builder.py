"""The batch build: all active segments in one scan of the events, entirely inside ClickHouse.

Steps (each timed, and recorded in `crumb.builds`):
  (first)   a snapshot of the opt-outs (`compiler.BUILD_OPTOUTS`): what every rule-segment statement
            excludes
  values    the window's events per hour (count, digest); the days to roll up; the lookups of the
            values of pattern-tested fields
  rollup    whole past days whose events changed (or are new) → per ID and hour, `segment_rollup`
  totals    (the day's first build, or one that rolled a day up again) per ID, the aggregates of its
            rolled-up hours for as_of's day (`compiler.totals_statement`), which later builds that
            day read for the IDs they recompute
  touched   (a build following the last one the same day) the IDs whose rows changed since
            (`audiences.incremental`)
  recompute (when following) every ID of each profile holding a touched ID: the IDs to recompute
  hours     the events of as_of's day, up to as_of, rolled up per ID and hour like past days
            (`HOURS`); when following, only the IDs to recompute
  profiles  link IDs seen together on an event into profiles (connected components); when
            following, the links of the IDs to recompute
  entered   when each ID to compute entered each segment it was in at the last build (`ENTERED`)
  members   one pass over the totals and today's hour rows: per ID and per
            profile, the matchers met and their bounded aggregates; each segment's boolean →
            `id_segments_next`, a row per ID. When following, only the IDs to recompute
  copy      this build's profiles → `segment_profiles_next`; when following, every other ID's
            row (and profile) of the last build, as it was
  lookalikes  each lookalike segment's model over this build's seed members → `id_segments_next`
  deltas    entered / exited against the previous build, per ID → `id_deltas` (`segment_deltas`
            is their view, a row per segment and ID); each exit closes the history interval opened
            at the entry time its row kept → `segment_history_closed` (`segment_history` is a view:
            those, and the members' open ones)
  stamp     (when following) the rows carried over take this build's ID
  swap      exchange `id_segments_next` and `id_segments` atomically (`segment_members` is a view)

A build that fails leaves the previous members in place and its partial deltas removed. The
Python process holds no members at any point: every step is INSERT ... SELECT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from audiences.compiler import (
    AGGREGATION_SETTINGS,
    BUILD,
    ELIGIBLE,
    ENTERED,
    EVENTS,
    FOLLOWING_SETTINGS,
    HOURS,
    MEMBERS_SETTINGS,
    PROFILE_IDS,
    PROFILE_OF,
    UNTYPED,
    VALUES_SETTINGS,
    Plan,
    RollupRead,
    Tables,
    compile_segments,
    membership_statement,
    rollup_columns,
    snapshot_optouts,
    today_statement,
    values_statements,
    window_filter,
    window_params,
)
from audiences.definitions import SegmentSet
from audiences.errors import BuildError
from audiences.incremental import (
    RECOMPUTE,
    RECOMPUTED,
    TOUCHED,
    BuildState,
    HourDigests,
    can_follow,
    changes,
    day_digests,
    hour_digests,
    plan_key,
    read_state,
    touched_statements,
    write_state,
)
from audiences.rollup import (
    DayDigests,
    days_to_roll,
    first_day,
    optout_digest,
    pending_days,
    read_plan,
    roll,
    roll_pending,
    totals_written,
    write_totals,
)
from collector.categories import ContentTaxonomy
from crumb.progress import SILENT, Progress
from crumb.warehouse import on_cluster, release_memory

log = logging.getLogger("crumb.audiences")

# The scratch tables of a build (or a preview), by their field in `Tables`.
# A Join table is written to disk too unless told not to: twice the time for a scratch table.
JOIN_BY_ID = "ENGINE = Join(ANY, LEFT, id) SETTINGS persistent = 0"
PARENT_COLUMNS = "(id String, profile String)"  # an ID's parent, or once settled its profile
ENTERED_COLUMNS = "(id String, segments Array(UInt32), entered Array(DateTime64(3, 'UTC')))"
SCRATCH_TABLES = {
    "values": "(chunk UInt16, value String, bits UInt64) ENGINE = Join(ANY, LEFT, chunk, value) "
              "SETTINGS persistent = 0",
    "profile_of": f"{PARENT_COLUMNS} {JOIN_BY_ID}",
    "profile_ids": "(profile String, ids Array(String)) ENGINE = Join(ANY, LEFT, profile) SETTINGS persistent = 0",
}
# The scratch tables of a build that follows the last one.
FOLLOW_TABLES = {TOUCHED: "(id String) ENGINE = Memory", RECOMPUTE: "(id String) ENGINE = Memory"}
# The rows of `PROFILE_OF` as the profiles step left them, to read whole (`LINK_TABLES`), until
# the copy step drops it.
PROFILE_ROWS = "crumb._build_profile_rows"
ENTERED_ROWS = "crumb._build_entered_rows"  # the rows of `ENTERED`, to read whole (as `PROFILE_ROWS`)
MAX_LINK_ROUNDS = 64  # FastSV settles in O(log n) rounds: this is room to spare, not a limit


@dataclass
class BuildResult:
    build_id: int
    as_of_ms: int
    status: str = "running"
    segments: int = 0
    conditions: int = 0
    profiles: int = 0
    members: int = 0
    link_rounds: int = 0  # rounds the profile links took to settle
    rolled_days: int = 0  # days rolled up (again) by this build; the others were read as rolled
    followed: int = 0  # the build this one followed, recomputing only touched profiles (0: all)
    recomputed: int = 0  # typed IDs recomputed when following
    changes: dict[str, Any] = field(default_factory=dict)  # what a following build found changed
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
    progress: Progress = SILENT, as_of_ms: int | None = None, follow: bool = True,
) -> BuildResult:
    """Build every active segment as of `as_of_ms` (default: now). Raises BuildError on failure.
    With `follow` (the default), a build the same UTC day as the last successful one, of the same
    plan, recomputes only the profiles whose rows changed since (`audiences.incremental`)."""
    as_of_ms = as_of_ms if as_of_ms is not None else int(time.time() * 1000)
    result = BuildResult(build_id=_next_build_id(client), as_of_ms=as_of_ms)
    plan = compile_segments(segments.rule_segments(), taxonomy)
    result.segments, result.conditions = len(plan.segments) + len(segments.lookalikes()), len(plan.conditions)
    lookalike_ids = [s.id for s in segments.lookalikes()]
    steps = _Steps(result, progress)
    started_ms = int(time.time() * 1000)
    _record(client, result, started_ms)
    try:
        _settle_interrupted_builds(client, result.build_id)
        drop_scratch(client)
        _drop_build_tables(client)
        make_scratch(client)
        client.command("TRUNCATE TABLE crumb.id_segments_next")
        key = plan_key(plan, lookalike_ids) if plan.segments else ""
        previous = read_state(client) if follow and plan.segments else None
        following = previous if can_follow(previous, key, as_of_ms) else None
        optouts, added = optout_digest(client, BUILD.optouts, following.optouts.through_ms if following else 0)
        rollup = read_plan(plan, as_of_ms) if plan.segments else None
        hours: HourDigests = {}
        if rollup:
            hours, roll_days = steps.run("values", lambda: _values(client, plan, as_of_ms, rollup, following))
            result.rolled_days = len(roll_days)
            steps.run("rollup", lambda: roll(client, plan, roll_days, as_of_ms, note=progress.note,
                                             settings=AGGREGATION_SETTINGS))
            steps.run("pending", lambda: roll_pending(client, plan, as_of_ms, roll_days, settings=AGGREGATION_SETTINGS))
            if not totals_written(client, plan, as_of_ms):  # the day's first build, or a day rolled again
                steps.run("totals", lambda: write_totals(client, plan, as_of_ms, settings=AGGREGATION_SETTINGS,
                                                             note=progress.note))
        if rollup and following:
            found = changes(plan, following, as_of_ms, hours, optouts, added)
            result.changes = found.summary()
            following = None if found.events_removed else following
        if rollup and following:
            result.followed = following.build_id
            for table, definition in FOLLOW_TABLES.items():
                client.command(f"CREATE TABLE {table} {definition}")
            steps.run("touched", lambda: _run(client, touched_statements(found, following.as_of_ms, as_of_ms)))
            result.recomputed = steps.run("recompute", lambda: _recompute_set(client))
        only = RECOMPUTED if following else None
        hours_settings = FOLLOWING_SETTINGS if following else AGGREGATION_SETTINGS
        members_settings = FOLLOWING_SETTINGS if following else MEMBERS_SETTINGS
        if rollup:
            steps.run("hours", lambda: _hours(client, plan, as_of_ms, rollup, only, hours_settings))
        result.link_rounds = steps.run("profiles", lambda: _resolve_profiles(
            client, plan, as_of_ms, rollup, recomputing=following is not None))
        steps.run("entered", lambda: _entry_times(client, only=only, lookalike_ids=lookalike_ids))
        if rollup:
            steps.run("members", lambda: _run(client, [membership_statement(
                plan, as_of_ms, result.build_id, rollup=rollup, only=only, keep_entered=True)], members_settings))
        steps.run("copy", lambda: _carry_over(client, result.build_id, following is not None, lookalike_ids))
        if segments.lookalikes():
            # Imported here: scikit-learn and SciPy (and pyarrow, where nothing else loads it) are
            # ~200 MB of a build's process and 1.3 s of its start, which a plan without lookalikes
            # should not pay.
            from audiences.lookalike import build_lookalikes
            result.lookalikes = steps.run("lookalikes", lambda: build_lookalikes(
                client, segments, result.build_id, as_of_ms, taxonomy, progress))
        steps.run("deltas", lambda: _write_deltas(client, result.build_id, as_of_ms))
        _count(client, result, lookalikes=bool(lookalike_ids))
        if following:
            steps.run("stamp", lambda: _stamp(client, result.build_id))
        if plan.segments:  # before the swap: a state whose build is not the last succeeded one is ignored
            write_state(client, BuildState(result.build_id, as_of_ms, key, optouts,
                                           {hour: digest[:2] for hour, digest in hours.items()}))
        _record(client, result, started_ms)  # its counts, for a recovery should it stop right after the swap
        steps.run("swap", lambda: _swap(client, result.build_id))
        result.status = "succeeded"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        swapped = _swapped_in(client, result.build_id)
        if swapped:  # it failed after its members went live: they are its, and so are its deltas
            result.status, result.error = "succeeded", f"after its swap: {error}"
            log.warning("build %s failed after its swap; its members are live, recorded as succeeded",
                        result.build_id, exc_info=True)
        else:
            result.status, result.error = "failed", error
            if swapped is None:  # whether it went live can't be read: left 'running', for the next build
                raise BuildError(f"build {result.build_id} failed, and whether its members went live can't be "
                                 f"read now; the next build settles it: {error}") from exc
            discard_build(client, result.build_id)
            _record(client, result, started_ms)
            raise BuildError(f"build {result.build_id} failed, the previous build stays in place: {error}") from exc
    finally:
        if result.status == "succeeded":
            # First: `segment_history` shows the intervals a build closed once it has succeeded
            # (until then they are open in the rows it swapped out).
            _record(client, result, started_ms)
        try:
            drop_scratch(client)
            _drop_build_tables(client)
            release_memory(client)
        except Exception:  # the next build drops them first: a build that succeeded stays one, and a
            # failed one's error is what it reports
            log.warning("build %s (%s): dropping its scratch tables failed", result.build_id, result.status,
                        exc_info=True)
    return result


def _values(client: Client, plan: Plan, as_of_ms: int, rollup: RollupRead,
            following: BuildState | None) -> tuple[HourDigests, DayDigests]:
    """The window's events per hour (count and digest, now and as the followed build saw them),
    the days to roll up, and the lookups of every value the rollup and the members step read."""
    hours = hour_digests(client, first_day(plan, as_of_ms), as_of_ms,
                         following.as_of_ms if following else as_of_ms)
    roll_days = days_to_roll(client, plan, as_of_ms, day_digests(hours, rollup.raw_from_ms))
    lookup_days = sorted({*roll_days, *pending_days(client, plan, as_of_ms)})
    _run(client, values_statements(plan, as_of_ms, rollup=rollup, roll_days=lookup_days), VALUES_SETTINGS)
    return hours, roll_days


def _hours(client: Client, plan: Plan, as_of_ms: int, rollup: RollupRead, only: str | None,
           settings: dict[str, Any] | None) -> None:
    """`HOURS`: as_of's day rolled up; with `only`, of those IDs."""
    columns = ", ".join(f"{name} {kind}" for name, kind in rollup_columns(plan))
    client.command(f"CREATE TABLE {HOURS} ({columns}) ENGINE = Memory")
    _run(client, [today_statement(plan, as_of_ms, rollup, only=only)], settings)


def _recompute_set(client: Client) -> int:
    """The IDs to recompute: the touched ones, and every ID that shared a profile with one in the
    last build. Returns their number."""
    client.command(
        f"INSERT INTO {RECOMPUTE} SELECT id FROM {TOUCHED} UNION DISTINCT "
        f"SELECT id FROM crumb.segment_profiles WHERE profile IN ("
        f" SELECT profile FROM crumb.segment_profiles WHERE id IN (SELECT id FROM {TOUCHED}))")
    return int(client.query(f"SELECT count() FROM {RECOMPUTE}").result_rows[0][0])


TYPED_ID = "concat(if(id_type = 'cookie', 'c:', 'f:'), id)"  # of an id_segments row


def _compared(only: str | None, lookalike_ids: list[int] | None) -> str:
    """The id_segments rows a build compares with the last build's, as a condition: with `only`
    (the IDs a following build recomputes), those IDs' rows, and every row of a lookalike (whose
    step writes them all again; parameter `lookalikes`); else all. Segments are read to find
    lookalike rows only when there are lookalikes: over 1.2M rows, that read made the carry-over's
    DELETE take 0.45 s instead of 0.25 s."""
    if not only:
        return "1"
    lookalike_rows = " OR hasAny(segments, {lookalikes:Array(UInt32)})" if lookalike_ids else ""
    return f"({TYPED_ID} IN {only}{lookalike_rows})"


def _entry_times(client: Client, only: str | None, lookalike_ids: list[int]) -> None:
    """Per typed ID to compute: the segments of its rows in the last build, and when it entered
    each → `ENTERED`, which the members, lookalike and deltas steps read (the deltas step reads it
    whole, from its rows `ENTERED_ROWS`). A following build (`only`) follows a build of its own
    membership statement (`incremental.plan_key`), so an ID has several rows only where the plan
    has lookalikes: only a full build looks."""
    params = {"lookalikes": lookalike_ids}
    compared = f"FROM crumb.id_segments WHERE {_compared(only, lookalike_ids)}"
    several_rows = bool(lookalike_ids) if only else _several_rows_per_id(client)
    if several_rows:  # they become one
        rows = (f"SELECT typed, arrayMap(p -> p.1, held), arrayMap(p -> p.2, held) FROM ("
                f"SELECT {TYPED_ID} AS typed, groupArrayArray(arrayZip(segments, entered)) AS held "
                f"{compared} GROUP BY typed)")
    else:  # a row per ID: 1 s for a million, against 3 s grouped
        rows = f"SELECT {TYPED_ID}, segments, entered {compared}"
    _rows_and_join(client, ENTERED_ROWS, ENTERED, ENTERED_COLUMNS, rows, params)


def _several_rows_per_id(client: Client) -> bool:
    """Whether an ID has several rows in the last build: a lookalike's member has a row of its own
    for it, beside its rule segments' row."""
    return bool(client.query("SELECT count() != uniqExact(id_type, id) FROM crumb.id_segments").result_rows[0][0])


def _carry_over(client: Client, build_id: int, following: bool, lookalike_ids: list[int]) -> None:
    """The profiles of this build → `segment_profiles_next`. When following: the last build's
    rows of every ID not recomputed, as they were, into `id_segments_next` and
    `segment_profiles_next`. Their parts are shared, not copied; the recomputed IDs' rows, and
    the lookalikes' rows (their step writes them again), are deleted from them. A lookalike scores
    every profile, so then the build's profile tables are filled with all of them again."""
    client.command("TRUNCATE TABLE crumb.segment_profiles_next")
    if not following:
        client.command(f"INSERT INTO crumb.segment_profiles_next SELECT id, profile FROM {PROFILE_ROWS}")
        client.command(f"DROP TABLE {PROFILE_ROWS} SYNC")  # read last here: its memory goes back
        return
    params = {"build_id": build_id, "lookalikes": lookalike_ids}
    for table in ("id_segments", "segment_profiles"):
        client.command(f"ALTER TABLE crumb.{table}_next ATTACH PARTITION ID 'all' FROM crumb.{table}")
    client.command(f"DELETE FROM crumb.id_segments_next WHERE {_compared(RECOMPUTED, lookalike_ids)} "
                   "AND build_id != {build_id:UInt64}", parameters=params)
    client.command(f"DELETE FROM crumb.segment_profiles_next WHERE id IN {RECOMPUTED}")
    client.command(f"INSERT INTO crumb.segment_profiles_next SELECT id, profile FROM {PROFILE_ROWS}")
    # Read last here: dropped, so that its memory goes back, and no later step reads it once the
    # lookalikes' refill below has made `PROFILE_OF` hold more.
    client.command(f"DROP TABLE {PROFILE_ROWS} SYNC")
    if lookalike_ids:
        client.command(f"TRUNCATE TABLE {PROFILE_IDS}")
        _fill_profile_of(client, "crumb.segment_profiles_next")
        client.command(f"INSERT INTO {PROFILE_IDS} SELECT profile, groupArray(id) FROM crumb.segment_profiles_next "
                       "GROUP BY profile")


def _run(client: Client, statements: Iterable[tuple[str, dict[str, Any]]],
         settings: dict[str, Any] | None = None) -> None:
    for sql, parameters in statements:
        client.command(sql, parameters=parameters, settings=settings)


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
    """The scratch tables, and the snapshot of the opt-outs every later statement reads."""
    for name, definition in SCRATCH_TABLES.items():
        client.command(f"CREATE TABLE {getattr(tables, name)} {definition}")
    client.command(snapshot_optouts(tables))


# Scratch tables are dropped SYNC: an Atomic database keeps a dropped table for eight minutes
# (`database_atomic_delay_before_drop_table_sec`), and a Join or Memory table its memory with it.
# Without it, each first build of the 100-segment benchmark left 350 MB resident (tracked memory
# 370, 720, 1070 MB after three in one process; 23-26 MB with it), and the tables a build drops as
# it goes still counted in its peak (1.62 GB against 1.48 GB).
def drop_scratch(client: Client, tables: Tables = BUILD) -> None:
    for name in [*SCRATCH_TABLES, "optouts"]:
        client.command(f"DROP TABLE IF EXISTS {getattr(tables, name)} SYNC")


# Each table of parents is kept twice, a Join and its rows (`_rows_and_join`).
LINK_TABLES = ("crumb._build_edges", "crumb._build_parent", "crumb._build_parent_next", "crumb._build_parent_rows",
               "crumb._build_parent_next_rows", PROFILE_ROWS)


def _drop_build_tables(client: Client) -> None:
    """The scratch tables only a build has: its links, what a following build recomputes, the hour
    rows it reads besides the totals, and the last build's entry times."""
    for table in (*LINK_TABLES, *FOLLOW_TABLES, HOURS, ENTERED, ENTERED_ROWS):
        client.command(f"DROP TABLE IF EXISTS {table} SYNC")


def _resolve_profiles(client: Client, plan: Plan, as_of_ms: int, rollup: RollupRead | None = None,
                      recomputing: bool = False) -> int:
    """IDs seen on one event are one profile: connected components, by FastSV (Zhang, Azad and Hu,
    2020): each ID points at a parent; every round hooks parents and IDs onto the smallest
    grandparent across each link and shortcuts, so components settle in O(log n) rounds even along
    a chain (plain min-label propagation needs O(n) rounds there). The label of a component is its
    smallest typed ID ('c:<cookie>' sorts before 'f:<fp>'). Returns the rounds it took: 0 when
    every ID's smallest neighbour already is its component's label (stars and pairs, the usual case).
    `recomputing` (a build following the last one, with `rollup`): only the links of the IDs it
    recomputes. Their set is closed under the links: an ID linked to one of them
    now was linked to it at the last build (so in its profile), or is touched itself (on an event
    since: `incremental.touched_statements`)."""
    params = window_params(plan, as_of_ms)
    # Both directions of each link, so every ID is a `u`.
    client.command(
        "CREATE TABLE crumb._build_edges ENGINE = Memory AS SELECT pair.1 AS u, pair.2 AS v FROM ("
        f" SELECT DISTINCT a, b FROM ({_links_sql(params, rollup, recomputing)})) ARRAY JOIN [(a, b), (b, a)] AS pair",
        parameters=params)
    # The parents, as the profile_of table itself is: (id, profile) by id.
    _rows_and_join(client, "crumb._build_parent_rows", "crumb._build_parent", PARENT_COLUMNS,
                   "SELECT u, min(least(u, v)) FROM crumb._build_edges GROUP BY u")
    parent = "joinGet('crumb._build_parent', 'profile', {})"
    # Settled already when both ends of every link have one parent that is its own parent: then
    # each component's parent is its smallest ID. One pass over the links, not a round.
    unsettled = client.query(
        f"SELECT count() FROM crumb._build_edges WHERE {parent.format('u')} != {parent.format('v')} "
        f"OR {parent.format(parent.format('u'))} != {parent.format('u')}").result_rows[0][0]
    rounds = 0
    while unsettled:
        rounds += 1
        if rounds > MAX_LINK_ROUNDS:
            raise BuildError(f"profile links did not settle in {MAX_LINK_ROUNDS} rounds")
        # Candidates for a new parent: the link's grandparent, offered to u (aggressive hooking)
        # and to u's parent (stochastic hooking); and u's own grandparent (shortcutting).
        _rows_and_join(client, "crumb._build_parent_next_rows", "crumb._build_parent_next", PARENT_COLUMNS,
                       "SELECT offer.1 AS node, min(offer.2) FROM ("
                       f" SELECT u, {parent.format('u')} AS pu, {parent.format(parent.format('v'))} AS gv,"
                       f" {parent.format('pu')} AS gu"
                       " FROM crumb._build_edges)"
                       " ARRAY JOIN [(u, gv), (pu, gv), (u, gu), (u, pu)] AS offer"
                       " GROUP BY node")
        unsettled = client.query(
            f"SELECT count() FROM crumb._build_parent_next_rows WHERE {parent.format('id')} != profile"
        ).result_rows[0][0]
        client.command("DROP TABLE crumb._build_parent SYNC")
        client.command("DROP TABLE crumb._build_parent_rows SYNC")
        client.command("RENAME TABLE crumb._build_parent_next TO crumb._build_parent, "
                       "crumb._build_parent_next_rows TO crumb._build_parent_rows")
    # Every ID points at its component's smallest ID: the parents are the profiles. The links are
    # read no more: dropped now, not with the build's other tables (58 MB of the benchmark's
    # first build, held through its members step otherwise).
    client.command("DROP TABLE crumb._build_edges SYNC")
    client.command("DROP TABLE crumb._build_parent SYNC")
    client.command(f"RENAME TABLE crumb._build_parent_rows TO {PROFILE_ROWS}")
    _fill_profile_of(client, PROFILE_ROWS)
    client.command(f"INSERT INTO {PROFILE_IDS} SELECT profile, groupArray(id) FROM {PROFILE_ROWS} GROUP BY profile")
    return rounds


def _fill_profile_of(client: Client, rows_table: str) -> None:
    """`PROFILE_OF` from `rows_table`'s (id, profile) rows, less the IDs that are their own profile:
    every reader takes an ID the Join lacks as its own profile, and each component's smallest ID
    is one such row (half the rows of a linked pair, the usual component; the Join of the
    benchmark's first build held 728k rows, 189 MB, with them, through its members step)."""
    client.command(f"TRUNCATE TABLE {PROFILE_OF}")
    client.command(f"INSERT INTO {PROFILE_OF} SELECT id, profile FROM {rows_table} WHERE id != profile")


def _rows_and_join(client: Client, rows_table: str, join_table: str, columns: str, select: str,
                   parameters: dict[str, Any] | None = None) -> None:
    """`select`'s rows twice: into `rows_table`, a Memory table, to read whole, and into
    `join_table`, a Join by ID, for joinGet. A Join table reads whole on one thread at ~4M rows/s
    (0.15-0.3 s for the benchmark's 770k profiles, where the Memory table takes 2 ms), and a full
    build reads its profiles and the last build's entries whole."""
    client.command(f"CREATE TABLE {rows_table} {columns} ENGINE = Memory")
    client.command(f"INSERT INTO {rows_table} {select}", parameters=parameters)
    client.command(f"CREATE TABLE {join_table} {columns} {JOIN_BY_ID}")
    client.command(f"INSERT INTO {join_table} SELECT * FROM {rows_table}")


def _links_sql(params: dict[str, Any], rollup: RollupRead | None, recomputing: bool = False) -> str:
    """(cookie, first-party ID) pairs seen on one event in the window, typed: from the events, or
    from the rolled-up days' totals and as_of's day's hours (`HOURS`); when `recomputing`, of the
    IDs recomputed (all that `HOURS` holds). A first-party ID may have opted out since its hour
    was rolled up, and so may an ID with totals."""
    if rollup is None:
        return (f"SELECT concat('c:', cookie_id) AS a, concat('f:', fp_id) AS b FROM {EVENTS} "
                f"WHERE {window_filter(BUILD.optouts)} AND cookie_id != '' AND fp_id != ''")

    def links(table: str, rows: str = "1") -> str:
        return (f"SELECT row_id AS a, concat('f:', fp) AS b FROM {table} ARRAY JOIN links AS fp "
                f"WHERE {rows} AND fp NOT IN (SELECT id FROM {BUILD.optouts})")

    totals = rollup.totals_rows(BUILD.optouts, RECOMPUTED if recomputing else None)
    return f"{links(rollup.totals, totals)} UNION ALL {links(HOURS)}"


def _write_deltas(client: Client, build_id: int, as_of_ms: int) -> None:
    """The rows this build wrote, which have its ID (`build_id`), against the last build's rows of
    their IDs (`ENTERED`, read whole from `ENTERED_ROWS`) → `id_deltas`, a row per ID that entered
    or exited a segment (per row, when none had a row at the last build: a lookalike gives an ID
    a row of its own). In a full build, that is every row. In a following build, the others are
    the last build's, carried over as they were: they keep that build's ID until `_stamp`."""
    params = {"build_id": build_id, "at": as_of_ms}
    at = "fromUnixTimestamp64Milli({at:Int64}, 'UTC')"
    # Not `_compared`: a UInt64 compared, not a typed ID built and looked up per row (0.007 s
    # against 0.067 s over the benchmark's 1.2M rows).
    scope = "build_id = {build_id:UInt64}"
    if not client.query(f"SELECT count() FROM {ENTERED_ROWS}").result_rows[0][0]:
        # None of these IDs had a row at the last build (the first build, or IDs all new): each
        # enters every segment of its rows, which are written as they are, not grouped against
        # nothing (the benchmark's first build: 0.5 s against 1.5 s). Not split per ID, new ones
        # written so and the others grouped: a nightly full build, where nearly all are known,
        # took 0.76-1.19 s against 0.59-0.61 s for the lookup that splits them.
        client.command(
            f"INSERT INTO crumb.id_deltas SELECT {{build_id:UInt64}}, {at}, id, id_type, segments, [] "
            f"FROM crumb.id_segments_next WHERE {scope}", parameters=params)
    else:
        _write_changes(client, params, at, scope)
    _write_history(client, params, at)
    # Profiles per segment without hashing ten million IDs: every ID of a profile has the same
    # segments, so the profile's own row (its label is its smallest typed ID) counts it once.
    # Every row, each build: a following build's sizes taken from the last build's would miss the
    # rows an erasure deleted in between.
    client.command(
        f"INSERT INTO crumb.segment_sizes SELECT {{build_id:UInt64}}, {at}, segment_id, "
        f"countIf({TYPED_ID} = profile_id), count() "
        "FROM crumb.id_segments_next ARRAY JOIN segments AS segment_id GROUP BY segment_id", parameters=params)


def _write_changes(client: Client, params: dict[str, Any], at: str, scope: str) -> None:
    """The deltas of the rows in `scope` against the last build's rows of their IDs."""
    # Per ID, the segments of this build against the last: a million rows grouped, not ten million
    # joined. An ID may have several rows (a lookalike adds its own), so they are grouped, not joined.
    # The last build's side is `ENTERED_ROWS`, which holds those rows already, one per ID
    # (`_entry_times` groups an ID's rows where it may have several).
    client.command(
        f"INSERT INTO crumb.id_deltas SELECT {{build_id:UInt64}}, {at}, id, id_type, entered, exited FROM ("
        " SELECT id, id_type, arrayFilter(s -> NOT has(old, s), new) AS entered,"
        "  arrayFilter(s -> NOT has(new, s), old) AS exited FROM ("
        "  SELECT id, id_type, groupArrayArrayIf(segments, fresh) AS new, groupArrayArrayIf(segments, NOT fresh) AS old"
        f"  FROM (SELECT id, id_type, segments, 1 AS fresh FROM crumb.id_segments_next WHERE {scope}"
        f"        UNION ALL SELECT {UNTYPED}, segments, 0 FROM (SELECT id AS typed_id, segments FROM {ENTERED_ROWS}))"
        # HAVING drops the IDs whose segments did not change before their arrays are filtered (a
        # nightly full build: 0.59-0.61 s with it, 0.66-0.85 s without); the WHERE, one with the same
        # segments, one of them twice.
        "  GROUP BY id, id_type HAVING arraySort(new) != arraySort(old)))"
        " WHERE notEmpty(entered) OR notEmpty(exited)",
        parameters=params)


def _write_history(client: Client, params: dict[str, Any], at: str) -> None:
    """The exits of the build (parameter `build_id`) as closed membership intervals. An entry
    writes nothing: an open interval is the member's row, which keeps when it entered."""
    # The entry time is the last build's (`ENTERED`: the rows compared here, looked up by ID).
    client.command(
        f"INSERT INTO crumb.segment_history_closed SELECT segment_id, id, id_type, "
        f"arrayElement(joinGet('{ENTERED}', 'entered', {TYPED_ID}), "
        f"indexOf(joinGet('{ENTERED}', 'segments', {TYPED_ID}), segment_id)), {at}, {{build_id:UInt64}} "
        "FROM crumb.id_deltas ARRAY JOIN exited AS segment_id WHERE build_id = {build_id:UInt64}",
        parameters=params)


def _stamp(client: Client, build_id: int) -> None:
    """The rows carried over take this build's ID: `segment_members` shows the build they are
    members as of."""
    client.command("ALTER TABLE crumb.id_segments_next UPDATE build_id = {build_id:UInt64} "
                   "WHERE build_id != {build_id:UInt64}", parameters={"build_id": build_id},
                   settings={"mutations_sync": 2})


def _count(client: Client, result: BuildResult, lookalikes: bool) -> None:
    params = {"build_id": result.build_id}
    # Without lookalikes an ID has one row, so each profile one row labelled by its own ID: counted
    # as such, not hashed (0.07 s against 0.17 s for 1.2M rows).
    profiles = "uniqExact(profile_id)" if lookalikes else f"countIf({TYPED_ID} = profile_id)"
    result.members, result.profiles = client.query(
        f"SELECT sum(length(segments)), {profiles} FROM crumb.id_segments_next").result_rows[0]
    result.entered, result.exited = client.query(
        "SELECT sum(length(entered)), sum(length(exited)) FROM crumb.id_deltas "
        "WHERE build_id = {build_id:UInt64}", parameters=params).result_rows[0]


def _swap(client: Client, build_id: int) -> None:
    # The members' table carries its build in its comment, through the exchange: whether a build
    # that stopped or failed around it went live (`_swapped_in`), whatever rows it holds.
    client.command(f"ALTER TABLE crumb.id_segments_next {on_cluster(client)} "
                   f"MODIFY COMMENT '{_swap_mark(build_id)}'")
    for statement in swap_statements(on_cluster(client)):
        client.command(statement)


def _swap_mark(build_id: int) -> str:
    return f"build {int(build_id)}"


def _swapped_in(client: Client, build_id: int) -> bool | None:
    """Whether the build's members are the live ones; None when that can't be read."""
    try:
        rows = client.query("SELECT comment FROM system.tables WHERE database = 'crumb' AND name = 'id_segments'"
                            ).result_rows
    except Exception:
        return None
    return bool(rows) and rows[0][0] == _swap_mark(build_id)


def swap_statements(on_cluster: str = "") -> list[str]:
    """The members' exchange comes last: once it is done, nothing of the build can fail. (The
    profiles are read only by a following build, which trusts them only after a success.) The
    `_next` tables keep the last build's rows until the next build empties them.

    On a cluster every replica exchanges: a Replicated table keeps the Keeper path it was created
    with, so had one node exchanged alone, its `id_segments_next` would share a path with the
    others' `id_segments`, and the next build's TRUNCATE and rows would reach their members."""
    return [f"EXCHANGE TABLES crumb.segment_profiles AND crumb.segment_profiles_next {on_cluster}".rstrip(),
            f"EXCHANGE TABLES crumb.id_segments AND crumb.id_segments_next {on_cluster}".rstrip()]


def discard_build(client: Client, build_id: int) -> None:
    """Remove what a build wrote to the tables builds append to: a failed build's, so activation
    never sees its deltas (and the segments bench's, to run the same build again)."""
    params = {"build_id": build_id}
    for table, column in (("id_deltas", "build_id"), ("segment_history_closed", "build_id"),
                          ("segment_sizes", "build_id")):
        try:
            client.command(f"DELETE FROM crumb.{table} WHERE {column} = {{build_id:UInt64}}", parameters=params)
        except Exception:  # the build failed already; the next build discards leftovers again
            pass


def _settle_interrupted_builds(client: Client, current: int) -> None:
    """A build whose process stopped mid-way (killed) left status 'running'. One that stopped after
    its swap succeeded: its members are the live ones (`_swapped_in`), so it is recorded so, and
    its deltas stay for activation (discarded, its entries and exits were never sent, and the next
    build's deltas were against members no build had published). Any other is cleaned up after,
    once, and marked failed. (A build that failed in the open cleaned up after itself.) When
    which it is can't be read, it is left for the next build."""
    rows = client.query(
        "SELECT build_id FROM crumb.builds FINAL WHERE status = 'running' AND build_id != {b:UInt64}",
        parameters={"b": current}).result_rows
    for (build_id,) in rows:
        params = {"b": int(build_id), "version": time.time_ns()}
        swapped = _swapped_in(client, int(build_id))
        if swapped is None:
            continue
        if swapped:
            status, error = "succeeded", "recovered: the process running it stopped after its swap"
        else:
            status, error = "failed", "interrupted: the process running it stopped"
            discard_build(client, int(build_id))
        client.command(
            "INSERT INTO crumb.builds SELECT build_id, started_at, now64(3), as_of, {status:String}, segments, "
            "conditions, profiles, members, entered, exited, timings, {error:String}, {version:UInt64} "
            "FROM crumb.builds FINAL WHERE build_id = {b:UInt64}", parameters={**params, "status": status,
                                                                                "error": error})


__all__ = ["ELIGIBLE", "BuildResult", "build"]
