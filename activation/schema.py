"""The activation package's tables: partner ID matches, destination sync state and its ledger."""

from __future__ import annotations

from crumb.migrations import Migration

# Partner user IDs matched to our IDs (batch side; the request path reads Redis).
_ID_MATCHES = """
CREATE TABLE IF NOT EXISTS {db}.id_matches {on_cluster} (
    partner LowCardinality(String),
    id String,                      -- our cookie ID
    partner_uid String,
    matched_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = {ReplacingMergeTree}
ORDER BY (partner, id)
TTL toDateTime(matched_at) + INTERVAL 400 DAY
"""

# Where each destination's sync has got to: the last build whose deltas it delivered.
_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS {db}.sync_checkpoints {on_cluster} (
    destination LowCardinality(String),
    build_id UInt64,
    updated_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = {ReplacingMergeTree}
ORDER BY destination
"""

_SYNC_RUNS = """
CREATE TABLE IF NOT EXISTS {db}.sync_runs {on_cluster} (
    run_id UUID,
    destination LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    finished_at DateTime64(3, 'UTC'),
    from_build UInt64,
    to_build UInt64,
    sent UInt64,
    failed UInt64,
    unmatched UInt64,
    retried UInt64,
    requests UInt64,
    status LowCardinality(String),   -- 'succeeded', 'partial', 'failed'
    error String
) ENGINE = {MergeTree}
PARTITION BY toYYYYMM(started_at)
ORDER BY (destination, started_at)
"""

# Items a destination refused for good (or after the last retry), to inspect and replay.
_DEAD_LETTERS = """
CREATE TABLE IF NOT EXISTS {db}.dead_letters {on_cluster} (
    run_id UUID,
    destination LowCardinality(String),
    build_id UInt64,
    segment_id UInt32,
    id String,
    partner_uid String,
    change Enum8('enter' = 1, 'exit' = 2),
    error_code LowCardinality(String),
    error String,
    at DateTime64(3, 'UTC')
) ENGINE = {MergeTree}
PARTITION BY toYYYYMM(at)
ORDER BY (destination, at)
"""

# What each destination holds for each ID: erasure sends removals to every one that received it.
_DELIVERED = """
CREATE TABLE IF NOT EXISTS {db}.delivered {on_cluster} (
    destination LowCardinality(String),
    id String,
    segment_id UInt32,
    present UInt8,                   -- 1 after an add was delivered, 0 after a removal
    build_id UInt64,
    at DateTime64(3, 'UTC')
) ENGINE = {ReplacingMergeTree(at)}
ORDER BY (destination, id, segment_id)
"""

# The ID the platform holds for each delivery: an erasure must still address its removal after
# the match table has forgotten the partner's ID.
_DELIVERED_PARTNER_UID = """
ALTER TABLE {db}.delivered {on_cluster} ADD COLUMN IF NOT EXISTS partner_uid String DEFAULT ''
"""

# Removals an erasure owes the destinations (activation/removals.py): an erased ID's ledger rows
# move here, and the next sync of each destination deletes its rows once each removal was
# delivered or dead-lettered. Dead letters of these removals carry build_id 0.
_PENDING_REMOVALS = """
CREATE TABLE IF NOT EXISTS {db}.pending_removals {on_cluster} (
    destination LowCardinality(String),
    id String,
    segment_id UInt32,
    partner_uid String,
    erased_at DateTime64(3, 'UTC')
) ENGINE = {ReplacingMergeTree}
ORDER BY (destination, id, segment_id)
"""

MIGRATIONS = [
    Migration("activation_0001_id_matches", [_ID_MATCHES]),
    Migration("activation_0002_sync", [_CHECKPOINTS, _SYNC_RUNS, _DEAD_LETTERS, _DELIVERED]),
    Migration("activation_0003_erasure_removals", [_DELIVERED_PARTNER_UID, _PENDING_REMOVALS]),
]
