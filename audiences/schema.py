"""The audiences package's tables. `segment_members`, `segment_deltas`, `segment_history` and
`builds` are public, like `events`."""

from __future__ import annotations

from crumb.migrations import Migration

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

# What each build changed: activation pushes these to destinations.
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
# interval has exited_at = 2106-01-01; an exit rewrites the row with a later version.
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
# interval opened then, without searching the history for it. Rows written before have none.
_ENTERED = """
ALTER TABLE {db}.%s {on_cluster} ADD COLUMN IF NOT EXISTS entered Array(DateTime64(3, 'UTC')) AFTER segments
"""

# The latest opt-out a build saw: the next one touches only those recorded after it (when they
# account for the whole change; `incremental.changes`). A state without it (0) touches them all.
_OPTOUTS_THROUGH = """
ALTER TABLE {db}.segment_build_state {on_cluster}
ADD COLUMN IF NOT EXISTS optouts_through DateTime64(3, 'UTC') AFTER optouts_digest
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
]
