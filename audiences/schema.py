"""The audiences package's tables. `segment_members`, `segment_deltas`, `segment_history` and
`builds` are public, like `events` (all but `builds` are views of the tables builds write)."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from crumb.migrations import Dialect, Migration, keep_ttl

_MEMBER_COLUMNS = """
    segment_id UInt32,
    id String,                          -- a cookie ID (third-party) or a first-party ID
    id_type LowCardinality(String),     -- 'cookie' or 'fp'
    profile_id String,                  -- the resolved profile the segment was computed for
    build_id UInt64
"""

# Members of the last successful build. A build fills `segment_members_next`, then the two are
# exchanged atomically: a reader sees the old build or the new one, never half of one.
_MEMBERS = f"""
CREATE TABLE IF NOT EXISTS {{db}}.segment_members {{on_cluster}} ({_MEMBER_COLUMNS})
ENGINE = {{MergeTree}} ORDER BY (segment_id, id)
"""
_MEMBERS_NEXT = f"""
CREATE TABLE IF NOT EXISTS {{db}}.segment_members_next {{on_cluster}} ({_MEMBER_COLUMNS})
ENGINE = {{MergeTree}} ORDER BY (segment_id, id)
"""

# What each build changed: activation pushes these to destinations. (Until audiences_0014, which
# makes it a view of `id_deltas`: `DELTAS_VIEW`.)
_DELTAS = """
CREATE TABLE IF NOT EXISTS {db}.segment_deltas {on_cluster} (
    build_id UInt64,
    built_at DateTime64(3, 'UTC'),
    segment_id UInt32,
    id String,
    id_type LowCardinality(String),
    change Enum8('enter' = 1, 'exit' = 2)
) ENGINE = {MergeTree} PARTITION BY toYYYYMM(built_at) ORDER BY (build_id, segment_id, id)
"""

# Membership intervals: who was in segment S at time T (entered_at <= T < exited_at). An open
# interval has exited_at = 2106-01-01; an exit rewrites the row with a later version. (Until
# audiences_0012, which makes it a view: `_HISTORY_VIEW`.)
_HISTORY = """
CREATE TABLE IF NOT EXISTS {db}.segment_history {on_cluster} (
    segment_id UInt32,
    id String,
    id_type LowCardinality(String),
    entered_at DateTime64(3, 'UTC'),
    exited_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = {ReplacingMergeTree}
ORDER BY (segment_id, id, entered_at)
"""

_BUILDS = """
CREATE TABLE IF NOT EXISTS {db}.builds {on_cluster} (
    build_id UInt64,
    started_at DateTime64(3, 'UTC'),
    finished_at DateTime64(3, 'UTC'),
    as_of DateTime64(3, 'UTC'),
    status LowCardinality(String),      -- 'running', 'succeeded', 'failed'
    segments UInt32,
    conditions UInt32,
    profiles UInt64,
    members UInt64,
    entered UInt64,
    exited UInt64,
    timings Map(String, Float64),
    error String,
    version UInt64
) ENGINE = {ReplacingMergeTree}
ORDER BY build_id
"""

# Per-segment sizes of each successful build: the daily trend without rescanning members.
_SIZES = """
CREATE TABLE IF NOT EXISTS {db}.segment_sizes {on_cluster} (
    build_id UInt64,
    built_at DateTime64(3, 'UTC'),
    segment_id UInt32,
    profiles UInt64,
    ids UInt64
) ENGINE = {MergeTree} ORDER BY (segment_id, built_at)
"""

# Scores of the latest run per lookalike segment (0: ad-hoc CLI runs); older runs are deleted.
_SCORES = """
CREATE TABLE IF NOT EXISTS {db}.lookalike_scores {on_cluster} (
    segment_id UInt32,
    run_id UInt64,
    profile String,
    seed UInt8,
    score Float32
) ENGINE = {MergeTree} ORDER BY (segment_id, run_id, profile)
"""
_RUNS = """
CREATE TABLE IF NOT EXISTS {db}.lookalike_runs {on_cluster} (
    run_id UInt64,
    segment_id UInt32,
    seed_segment UInt32,
    build_id UInt64,
    at DateTime64(3, 'UTC'),
    method LowCardinality(String),
    population UInt64,
    seed_profiles UInt64,
    audience UInt64,
    evaluation String
) ENGINE = {MergeTree} ORDER BY (segment_id, run_id)
"""

# Members of the last successful build, one row per ID with the segments it is in: a hundred
# segments' members are a million rows, not ten million, so a build writes and compares them in
# seconds. A build fills `id_segments_next` (a lookalike adds rows of its own for an ID), then the
# two are exchanged atomically: a reader sees the old build or the new one, never half of one.
_ID_SEGMENTS = """
CREATE TABLE IF NOT EXISTS {db}.%s {on_cluster} (
    id String,                          -- a cookie ID (third-party) or a first-party ID
    id_type LowCardinality(String),     -- 'cookie' or 'fp'
    profile_id String,                  -- the resolved profile the segments were computed for
    segments Array(UInt32),
    build_id UInt64
) ENGINE = {MergeTree} ORDER BY (id_type, id)
"""
# `segment_members` (segment_id, id, id_type, profile_id, build_id) stays what readers query: a
# view with a row per (segment, ID). The old tables go; the first build after the upgrade enters
# every member again, which destinations take as the idempotent adds they are.
_MEMBERS_VIEW = """
CREATE VIEW IF NOT EXISTS {db}.%s {on_cluster} AS
SELECT segment_id, id, id_type, profile_id, build_id FROM {db}.%s ARRAY JOIN segments AS segment_id
"""

# The days `audiences.rollup` has rolled up for the current plan, with what their events were
# then (count, XOR of event ID hashes): a day whose events changed since is rolled up again.
_ROLLED_DAYS = """
CREATE TABLE IF NOT EXISTS {db}.segment_rollup_days {on_cluster} (
    day Date,
    events UInt64,
    digest UInt64,
    rolled_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = {MergeTree} ORDER BY day
"""

# What the last successful build saw, so that the next one can recompute only the profiles whose
# rows changed (`audiences.incremental`): its plan, the opt-outs, and per hour of its window the
# count and an order-free digest of the events up to its as_of. One row: the last build's.
_BUILD_STATE = """
CREATE TABLE IF NOT EXISTS {db}.segment_build_state {on_cluster} (
    build_id UInt64,
    as_of DateTime64(3, 'UTC'),
    plan String,
    optouts UInt64,
    optouts_digest UInt64,
    hours Array(DateTime('UTC')),
    hour_events Array(UInt64),
    hour_digests Array(UInt64)
) ENGINE = {MergeTree} ORDER BY build_id
"""

# The profiles of the last successful build: each linked typed ID and its profile's label (an ID
# in no link is its own profile, and has no row). A build following the last one reads which IDs
# shared a profile with a touched ID. Filled and swapped like `id_segments`.
_PROFILES = """
CREATE TABLE IF NOT EXISTS {db}.%s {on_cluster} (
    id String,
    profile String
) ENGINE = {MergeTree} ORDER BY id
"""

# When each ID entered each of its segments, parallel to `segments`: an exit closes the history
# interval opened then, without searching the history for it. Rows written before had none, until
# audiences_0011 gave them theirs.
_ENTERED = """
ALTER TABLE {db}.%s {on_cluster} ADD COLUMN IF NOT EXISTS entered Array(DateTime64(3, 'UTC')) AFTER segments
"""

# The latest opt-out a build saw: the next one touches only those recorded after it (when they
# account for the whole change; `incremental.changes`). A state without it (0) touches them all.
_OPTOUTS_THROUGH = """
ALTER TABLE {db}.segment_build_state {on_cluster}
ADD COLUMN IF NOT EXISTS optouts_through DateTime64(3, 'UTC') AFTER optouts_digest
"""

# The history as intervals, one per stay from entry to exit: the closed ones are written when
# they close; the open ones are the current members, with when each entered (`id_segments`). So
# a build writes history for its exits only: a first build's ten million entries cost it nothing.
_HISTORY_CLOSED = """
CREATE TABLE IF NOT EXISTS {db}.segment_history_closed {on_cluster} (
    segment_id UInt32,
    id String,
    id_type LowCardinality(String),
    entered_at DateTime64(3, 'UTC'),
    exited_at DateTime64(3, 'UTC'),
    build_id UInt64                     -- the build that closed it
) ENGINE = {MergeTree} ORDER BY (segment_id, id, entered_at)
"""
OPEN_INTERVAL = "2106-01-01 00:00:00.000"  # an open interval's exited_at
OPEN_AT = f"'{OPEN_INTERVAL}'"  # as an SQL literal


def _latest_intervals(where: str = "") -> str:
    """Each interval of the table the history was (before audiences_0012), as its latest version
    left it: an exit wrote it again, closed (`exit`), as the version of the build that did."""
    return ("SELECT segment_id, id, id_type, entered_at, argMax(exited_at, version) AS exit, max(version) AS closed_by "
            f"FROM {{db}}.segment_history {where} GROUP BY segment_id, id, id_type, entered_at")


def _legacy(row: str = "") -> str:
    """Whether an `id_segments` row (`row`: its table's alias and a dot) has no entry times: one
    written before they were kept (audiences_0009)."""
    return f"length({row}entered) != length({row}segments)"


# The closed intervals of the table the history was, not there already (a migration cut short
# runs again).
_CLOSED_FROM_TABLE = f"""
INSERT INTO {{db}}.segment_history_closed
SELECT segment_id, id, id_type, entered_at, exit, closed_by FROM ({_latest_intervals()})
WHERE exit != {OPEN_AT}
  AND (segment_id, id, id_type, entered_at) NOT IN (
      SELECT segment_id, id, id_type, entered_at FROM {{db}}.segment_history_closed)
"""
# Rows written before entry times were kept take them from their open intervals (or, with none,
# their build's as_of, or now): the view reads the open intervals from the rows. In place, as
# data: a copy of each with its times (unless one is there already: a migration cut short runs
# again), then the row without them goes. No table is renamed: a build swaps its tables on the
# node it talks to only.
_LEGACY_IDS = f"(id, id_type) IN (SELECT id, id_type FROM {{db}}.id_segments WHERE {_legacy()})"
_ENTERED_FROM_TABLE = [f"""
INSERT INTO {{db}}.id_segments (id, id_type, profile_id, segments, entered, build_id)
SELECT r.id, r.id_type, r.profile_id, r.segments,
       arrayMap(s -> if(has(o.opened.1, s), o.opened.2[indexOf(o.opened.1, s)],
                        if(b.as_of > 0, b.as_of, now64(3, 'UTC'))), r.segments),
       r.build_id
FROM {{db}}.id_segments AS r
LEFT JOIN (
    SELECT id, id_type, groupArray((segment_id, entered_at)) AS opened FROM (
        SELECT segment_id, id, id_type, max(entered_at) AS entered_at FROM ({_latest_intervals(f"WHERE {_LEGACY_IDS}")})
        WHERE exit = {OPEN_AT} GROUP BY segment_id, id, id_type)
    GROUP BY id, id_type) AS o ON o.id = r.id AND o.id_type = r.id_type
LEFT JOIN (SELECT build_id, argMax(as_of, version) AS as_of FROM {{db}}.builds GROUP BY build_id) AS b
    ON b.build_id = r.build_id
WHERE {_legacy("r.")}
  AND (r.id, r.id_type, r.segments) NOT IN (
      SELECT id, id_type, segments FROM {{db}}.id_segments WHERE NOT ({_legacy()}))
""", f"DELETE FROM {{db}}.id_segments {{on_cluster}} WHERE {_legacy()}"]
# `segment_history` (segment_id, id, id_type, entered_at, exited_at) stays what readers query. An
# interval a build closes shows once the build has succeeded: until its swap, the ID's row still
# holds it open (and a failed build's leftovers never show).
_HISTORY_VIEW = f"""
CREATE VIEW IF NOT EXISTS {{db}}.segment_history {{on_cluster}} AS
SELECT segment_id, id, id_type, entered_at, exited_at FROM {{db}}.segment_history_closed
WHERE build_id IN (SELECT build_id FROM {{db}}.builds FINAL WHERE status = 'succeeded')
UNION ALL
SELECT segment_id, id, id_type, entered_at, toDateTime64({OPEN_AT}, 3, 'UTC') AS exited_at
FROM {{db}}.id_segments ARRAY JOIN segments AS segment_id, arrayResize(entered, length(segments)) AS entered_at
"""

# What each build changed, a row per ID (per row of `id_segments` where an ID has several: a
# lookalike's, in a first build) with the segments it entered and exited. A first build's ten
# million entries are a million rows, written in a fraction of the time. Activation reads it;
# `segment_deltas` stays the row per (segment, ID) view.
_ID_DELTAS = """
CREATE TABLE IF NOT EXISTS {db}.id_deltas {on_cluster} (
    build_id UInt64,
    built_at DateTime64(3, 'UTC'),
    id String,
    id_type LowCardinality(String),
    entered Array(UInt32),
    exited Array(UInt32)
) ENGINE = {MergeTree} PARTITION BY toYYYYMM(built_at) ORDER BY (build_id, id, id_type)
"""
# The deltas table's rows, per ID. Only this migration writes `id_deltas` before the view is made
# (the builds that will write it wait for every migration, under the build lock), so one cut short
# starts over.
_ID_DELTAS_FROM_TABLE = ["TRUNCATE TABLE {db}.id_deltas {on_cluster}", """
INSERT INTO {db}.id_deltas
SELECT build_id, any(built_at), id, id_type,
       groupArrayIf(segment_id, change = 'enter'), groupArrayIf(segment_id, change = 'exit')
FROM {db}.segment_deltas GROUP BY build_id, id, id_type
-- The table is ordered by build first: grouped a build at a time, not its whole history at once.
SETTINGS optimize_aggregation_in_order = 1
"""]
# Of succeeded builds only, as `segment_history`: a build writes its deltas before its swap, and a
# failed one's stay where its clean-up did not reach (migration audiences_0018).
DELTAS_VIEW = """
CREATE VIEW IF NOT EXISTS {db}.segment_deltas {on_cluster} AS
SELECT build_id, built_at, moved.1 AS segment_id, id, id_type,
       CAST(moved.2 AS Enum8('enter' = 1, 'exit' = 2)) AS change
FROM {db}.id_deltas
ARRAY JOIN arrayConcat(arrayMap(s -> (s, 1), entered), arrayMap(s -> (s, 2), exited)) AS moved
WHERE build_id IN (SELECT build_id FROM {db}.builds FINAL WHERE status = 'succeeded')
"""

# Which rollup table a day was rolled into (its UUID): the rollup is the node's own (a build
# makes it on the node it talks to) while this record is replicated, so on a cluster a record of
# another node's table, or of a table since replaced, must not read as rolled here. Rows recorded
# before had none (a nil UUID): their days are rolled up once more.
_ROLLED_INTO = """
ALTER TABLE {db}.segment_rollup_days {on_cluster} ADD COLUMN IF NOT EXISTS rollup UUID AFTER day
"""

# The opt-outs each rolled day's rows leave out (`audiences.rollup`), where one row per node held
# them for all its days: a build as of an earlier day looked at fewer days than it would have
# recorded. Days recorded before read as leaving out none: every opt-out is new to them.
_ROLLED_OPTOUTS = """
ALTER TABLE {db}.segment_rollup_days {on_cluster}
    ADD COLUMN IF NOT EXISTS optouts UInt64 AFTER digest,
    ADD COLUMN IF NOT EXISTS optout_digest UInt64 AFTER optouts,
    ADD COLUMN IF NOT EXISTS optouts_through_ms Int64 AFTER optout_digest
"""

# IDs an erasure left for the next build to recompute (`incremental.note_erasure`): the erased
# IDs and those that shared a profile with them, whose profile rows the erasure deletes.
_STATE_TOUCHED = """
ALTER TABLE {db}.segment_build_state {on_cluster} ADD COLUMN IF NOT EXISTS touched Array(String)
"""

MIGRATIONS = [
    Migration("audiences_0001_members", [_MEMBERS, _MEMBERS_NEXT]),
    Migration("audiences_0002_deltas_history", [_DELTAS, _HISTORY]),
    Migration("audiences_0003_builds", [_BUILDS, _SIZES]),
    Migration("audiences_0004_lookalikes", [_SCORES, _RUNS]),
    Migration("audiences_0005_id_segments", [
        _ID_SEGMENTS % "id_segments", _ID_SEGMENTS % "id_segments_next",
        "DROP TABLE IF EXISTS {db}.segment_members {on_cluster}",
        "DROP TABLE IF EXISTS {db}.segment_members_next {on_cluster}",
        "DROP TABLE IF EXISTS {db}._build_lookup {on_cluster}",  # scratch tables of the earlier plan
        "DROP TABLE IF EXISTS {db}._build_profile_conditions {on_cluster}",
        _MEMBERS_VIEW % ("segment_members", "id_segments"),
        _MEMBERS_VIEW % ("segment_members_next", "id_segments_next"),
    ]),
    Migration("audiences_0006_rollup_days", [_ROLLED_DAYS]),
    Migration("audiences_0007_build_state", [_BUILD_STATE]),
    Migration("audiences_0008_profiles", [_PROFILES % "segment_profiles", _PROFILES % "segment_profiles_next"]),
    Migration("audiences_0009_entered", [_ENTERED % "id_segments", _ENTERED % "id_segments_next"]),
    Migration("audiences_0010_optouts_through", [_OPTOUTS_THROUGH]),
    # Two steps, each safe to run again when cut short: the old table is read until 0012 drops it.
    Migration("audiences_0011_history_closed", [_HISTORY_CLOSED, _CLOSED_FROM_TABLE, *_ENTERED_FROM_TABLE]),
    Migration("audiences_0012_history_view", [
        "DROP TABLE IF EXISTS {db}.segment_history {on_cluster} SYNC", _HISTORY_VIEW,
    ]),
    Migration("audiences_0013_id_deltas", [_ID_DELTAS, *_ID_DELTAS_FROM_TABLE]),
    Migration("audiences_0014_deltas_view", [
        "DROP TABLE IF EXISTS {db}.segment_deltas {on_cluster} SYNC", DELTAS_VIEW,
    ]),
    Migration("audiences_0015_rolled_into", [_ROLLED_INTO]),
    Migration("audiences_0016_rolled_optouts", [
        _ROLLED_OPTOUTS, "DROP TABLE IF EXISTS {db}.segment_rollup_optouts {on_cluster} SYNC",
    ]),
    Migration("audiences_0017_state_touched", [_STATE_TOUCHED]),
    Migration("audiences_0018_succeeded_deltas", [
        "DROP VIEW IF EXISTS {db}.segment_deltas {on_cluster} SYNC", DELTAS_VIEW,
    ]),
]


# Retention of what builds record about members (a TTL per data class, as the events have): per
# table, the time its rows are kept from. Open intervals are the current members: they have none.
HISTORY_RETENTION = {"segment_history_closed": "exited_at", "id_deltas": "built_at", "segment_sizes": "built_at"}


def apply_history_retention(client: Client, dialect: Dialect, days: int) -> None:
    """What builds record, kept as `history_ttl_days` says (`migrations.keep_ttl`)."""
    for table, column in HISTORY_RETENTION.items():
        keep_ttl(client, dialect, table, f"toDateTime({column}) + toIntervalDay({int(days)})")
