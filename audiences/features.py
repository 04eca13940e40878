"""Per-profile feature vectors for lookalikes, computed in ClickHouse and read in bounded chunks.

One aggregation over the eligible events of the window turns each profile into hashed tokens
with counts, in a scratch table ordered by a hash bucket of the profile:

    cat:533  cat:483 (its Content Taxonomy parents)   host:sports-example.example
    p1:/sports  p2:/sports/soccer   dev:mobile  os:iOS  br:Chrome   type:purchase   hour:evening
    freq:4 (2^4..2^5-1 events)   days:2   recency:0 (days since last seen, log2)   engaged:6

The hashing trick is scikit-learn's FeatureHasher's (a token → one of 2^18 columns), done where
the events are, so tens of millions of rows never cross into Python as strings: Python reads
only (index, count) arrays, `chunk_size` profiles at a time, as Arrow buffers → CSR matrices.
The few tokens behind a model's strongest columns are named afterwards (`token_names`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from clickhouse_connect.driver.client import Client

from audiences.compiler import PROFILE_OF, ROW_ID, window_filter, window_start
from collector.categories import BUILTIN, ContentTaxonomy

N_FEATURES = 2**18
BUCKETS = 4096  # profiles are spread over this many hash buckets; a chunk is a run of buckets
# The per-profile aggregation spills to disk past this, so memory stays bounded in ClickHouse too
# (the embedded engine shares the process with us).
AGGREGATION_SETTINGS = {"max_bytes_before_external_group_by": 300_000_000, "max_threads": 2}


@dataclass(frozen=True)
class Profiles:
    """How an event row's typed ID becomes a profile, and which profiles are opted out."""

    expression: str  # SQL over `row_id`
    optouts: str  # SQL: the opted-out profiles


# Outside a build (the CLI): each typed ID ('c:<cookie>', 'f:<fp>') is its own profile.
IDENTITY = Profiles("row_id", "SELECT arrayJoin([concat('c:', id), concat('f:', id)]) FROM crumb.optouts")
# Inside a build: the build's linked profiles, as the compiler resolves them.
BUILD_PROFILES = Profiles(
    f"if((joinGet('{PROFILE_OF}', 'profile', row_id) AS linked) = '', row_id, linked)",
    f"SELECT if((joinGet('{PROFILE_OF}', 'profile', typed) AS l) = '', typed, l) FROM ("
    "SELECT arrayJoin([concat('c:', id), concat('f:', id)]) AS typed FROM crumb.optouts)",
)

_HASH = f"toUInt32(modulo(cityHash64(t), {N_FEATURES}))"  # modulo(): "%" would clash with client-side binding
# A row's tokens; `{taxonomy}` is a Join table of category → its ancestors. A path prefix is a
# section ("/sports", "/sports/soccer"), never the page itself: pages are too many to generalise.
_ROW_TOKENS = """arrayFilter(t -> NOT endsWith(t, ':'), arrayConcat(
    arrayMap(c -> concat('cat:', c),
             arrayDistinct(arrayConcat(categories, arrayFlatten(arrayMap(c -> joinGet('{taxonomy}', 'up', c),
                                                                          categories))))),
    [concat('host:', host),
     if(length(splitByChar('/', path) AS parts) > 2,
        concat('p1:', arrayStringConcat(arraySlice(parts, 1, 2), '/')), 'p1:'),
     if(length(parts) > 3, concat('p2:', arrayStringConcat(arraySlice(parts, 1, 3), '/')), 'p2:'),
     concat('dev:', device_type), concat('os:', os), concat('br:', browser), concat('type:', type),
     concat('hour:', ['night', 'morning', 'afternoon', 'evening'][intDiv(toHour(ts), 6) + 1])]))"""
# Per-profile numbers as log2 buckets, each a token.
_PROFILE_TOKENS = """[concat('freq:', toString(toUInt8(log2(n)))),
     concat('days:', toString(toUInt8(log2(active_days)))),
     concat('recency:', toString(toUInt8(log2(1 + intDiv({as_of_ms:Int64} - toUnixTimestamp64Milli(last), 86400000))))),
     concat('engaged:', toString(toUInt8(log2(1 + intDiv(engaged, 1000)))))]"""
SCALAR_TOKENS = [f"{name}:{k}" for name in ("freq", "days", "recency", "engaged") for k in range(40)]


@dataclass(frozen=True)
class Window:
    as_of_ms: int
    lookback_days: int

    def params(self) -> dict[str, Any]:
        return {"since_ms": window_start(self.as_of_ms, self.lookback_days), "as_of_ms": self.as_of_ms}


@dataclass(frozen=True)
class Chunk:
    profiles: np.ndarray  # object: str
    seed: np.ndarray  # bool
    counts: sp.csr_matrix  # profiles × N_FEATURES, token counts


class FeatureTable:
    """Scratch tables of one lookalike run: the taxonomy join, the seed, and the features."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.taxonomy = f"{prefix}taxonomy"
        self.seed = f"{prefix}seed"
        self.features = f"{prefix}features"
        self.profiles = 0

    def create(self, taxonomy: ContentTaxonomy | None) -> None:
        self.drop()
        self.client.command(
            f"CREATE TABLE {self.taxonomy} (cat String, up Array(String)) ENGINE = Join(ANY, LEFT, cat)")
        self.client.command(f"CREATE TABLE {self.seed} (profile String) ENGINE = Memory")
        tax = taxonomy or BUILTIN
        rows = [[node, list(tax.ancestors(node))] for node in tax.names if tax.parent(node) is not None]
        if rows:
            self.client.insert(self.taxonomy, rows, column_names=["cat", "up"])

    def add_seed(self, profiles: Iterable[str]) -> None:
        rows = [[p] for p in profiles]
        if rows:
            self.client.insert(self.seed, rows, column_names=["profile"])

    def add_seed_from(self, sql: str, parameters: dict[str, Any]) -> None:
        self.client.command(f"INSERT INTO {self.seed} (profile) {sql}", parameters=parameters)

    def compute(self, window: Window, profiles: Profiles) -> int:
        """Aggregate the window's eligible events per profile; returns how many profiles there are."""
        self.client.command(
            f"CREATE TABLE {self.features} (profile String, bucket UInt16, seed UInt8, idx Array(UInt32), "
            "val Array(Float32)) ENGINE = MergeTree ORDER BY (bucket, profile)")
        row_tokens = _ROW_TOKENS.format(taxonomy=self.taxonomy)
        sql = f"""
INSERT INTO {self.features}
SELECT profile, modulo(cityHash64(profile), {BUCKETS}), profile IN (SELECT profile FROM {self.seed}),
       arrayConcat(m.1, arrayMap(t -> {_HASH}, {_PROFILE_TOKENS})),
       arrayConcat(arrayMap(x -> toFloat32(x), m.2), [1, 1, 1, 1])
FROM (
    SELECT profile, sumMap(keys, arrayWithConstant(length(keys), toUInt32(1))) AS m, count() AS n,
           uniqExact(toDate(ts)) AS active_days, sum(engaged_ms) AS engaged, max(ts) AS last
    FROM (
        SELECT {ROW_ID} AS row_id, {profiles.expression} AS profile, ts, engaged_ms,
               arrayMap(t -> {_HASH}, {row_tokens}) AS keys
        FROM crumb.events WHERE {window_filter()}
    )
    GROUP BY profile
)
WHERE profile NOT IN ({profiles.optouts})"""
        self.client.command(sql, parameters=window.params(), settings=AGGREGATION_SETTINGS)
        self.profiles = int(self.client.query(f"SELECT count() FROM {self.features}").result_rows[0][0])
        return self.profiles

    def seed_count(self) -> int:
        return int(self.client.query(f"SELECT countIf(seed = 1) FROM {self.features}").result_rows[0][0])

    def chunks(self, chunk_size: int) -> Iterator[Chunk]:
        """Every profile, about `chunk_size` at a time (a run of whole hash buckets per chunk)."""
        step = max(1, math.floor(BUCKETS * chunk_size / max(self.profiles, 1)))
        for low in range(0, BUCKETS, step):
            chunk = self.read(f"bucket >= {low} AND bucket < {low + step}")
            if len(chunk.profiles):
                yield chunk

    def read(self, where: str, parameters: dict[str, Any] | None = None) -> Chunk:
        """Profiles matching `where` (SQL written by this package, values as parameters)."""
        table = self.client.query_arrow(
            f"SELECT profile, seed, idx, val FROM {self.features} WHERE {where}", parameters=parameters or {})
        return _chunk(table)

    def token_names(self, indices: Iterable[int], window: Window, profiles: Profiles,
                    sample: int = 10) -> dict[int, list[str]]:
        """The tokens that hash to `indices`, from about 1/`sample` of the window's rows."""
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            return {}
        names: dict[int, list[str]] = {}
        rows = self.client.query(
            f"""SELECT DISTINCT t, {_HASH} AS i FROM (
                    SELECT ts, arrayJoin({_ROW_TOKENS.format(taxonomy=self.taxonomy)}) AS t
                    FROM crumb.events WHERE {window_filter()} AND modulo(cityHash64(cookie_id, fp_id), {sample}) = 0)
                WHERE i IN {{wanted:Array(UInt32)}}
                UNION ALL
                SELECT t, {_HASH} AS i FROM (SELECT arrayJoin({{scalars:Array(String)}}) AS t)
                WHERE i IN {{wanted:Array(UInt32)}}""",
            parameters={**window.params(), "wanted": wanted, "scalars": SCALAR_TOKENS}).result_rows
        for token, index in rows:
            names.setdefault(int(index), []).append(str(token))
        return names

    def drop(self) -> None:
        for table in (self.features, self.seed, self.taxonomy):
            self.client.command(f"DROP TABLE IF EXISTS {table} SYNC")


def _chunk(table: pa.Table) -> Chunk:
    idx = table.column("idx").combine_chunks()
    val = table.column("val").combine_chunks()
    if isinstance(idx, pa.ChunkedArray):  # an empty result has no chunks to combine
        idx, val = pa.array([], pa.list_(pa.uint32())), pa.array([], pa.list_(pa.float32()))
    offsets = idx.offsets.to_numpy().astype(np.int64)
    indices = idx.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    data = val.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].astype(np.float32)
    counts = sp.csr_matrix((data, indices, offsets - offsets[0]), shape=(len(table), N_FEATURES))
    counts.sum_duplicates()  # per-profile tokens may collide with each other in the hash space
    return Chunk(
        profiles=np.asarray(table.column("profile").to_pylist(), dtype=object),
        seed=table.column("seed").to_numpy().astype(bool),
        counts=counts,
    )
