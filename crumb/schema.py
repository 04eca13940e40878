"""Tables of the core package: the erasure ledger."""

from __future__ import annotations

from crumb.migrations import Migration

_ERASURES = """
CREATE TABLE IF NOT EXISTS {db}.erasures {on_cluster} (
    erasure_id UUID,
    id String,
    reason LowCardinality(String),
    requested_at DateTime64(3, 'UTC'),
    completed_at DateTime64(3, 'UTC'),
    tables Array(String)
) ENGINE = {MergeTree} ORDER BY (id, requested_at)
"""

MIGRATIONS = [Migration("crumb_0001_erasures", [_ERASURES])]
