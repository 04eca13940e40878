"""Segment build: 100 mixed segments over 10M simulated events, against the floor query.

The floor is the least any build must do: one scan of the build's window (same eligibility, same
opt-out filter, same bound parameters as the builder) grouped by cookie. Everything is measured in
one run on one warehouse with one `as_of`:

  floor    SELECT cookie_id, count() ... WHERE <window> GROUP BY cookie_id FORMAT Null   (3×, median)
  build    audiences.builder.build with the first 10 segments, then all 100        (2× each, median)
  direct   for reference: one countIf (uniqExactIf / sumIf where a bound needs it) per condition
           of the 100 segments in a single GROUP BY cookie_id over the same window     (1×)
  outputs  for reference: the first build's members, deltas and profiles copied as they are
           (INSERT ... SELECT, nothing computed): what any first build spends writing  (1×)

Before each measured build the audience output tables are emptied, so every run is the same
"first build" (every member enters: the heaviest delta step). Those are built as of an hour before
the floor's as_of (the last event); then one more 100-segment build in full on top (the nightly
rebuild), and the hourly build as of the floor's as_of (at least an hour into its UTC day): an
hour of new events (windows move at midnight only), 100 new opt-outs (10,000 are recorded before
the first builds), and it follows the last build (recomputing only the profiles it finds touched).
The hourly build runs 5 times from the same state (each run but the last undone), each just after
a run of the floor query, and its median is reported, with the median of each run's ratio to its
floor: one run moves by tens of percent, and so does the floor. A full build at the same as_of
checks that it agrees (no member enters or exits) and shows what it saves.

Memory: chdb runs ClickHouse inside this process, so the process's RSS is Python and ClickHouse
together. Per phase: peak RSS (VmHWM, reset through /proc/self/clear_refs), sampled peak anonymous
RSS (VmHWM minus the mapped chdb library's file pages), Python's own peak heap (tracemalloc), and
ClickHouse's own peak per query (`peak_memory_usage` of system.processes, sampled from a second
handle: chdb has no system.query_log). The target "the Python process under 500 MB" is judged on
peak RSS of the build, the honest reading when the engine is embedded. Each hourly run's own peak
RSS is read too (VmHWM reset as it starts), and its CPU time against the floor run's: the process's
CPU time is ClickHouse's work on both cores, a figure that moves far less than wall time when
something else runs on this shared machine. (It counts ClickHouse's background merges and
mutations too: those of the state put back before each floor run may fall in either window.)

    python bench/segments.py                     # 10M events / 1M cookies / 30 days, temp dir
    python bench/segments.py --quick             # 1M events / 100k cookies: a smoke check
    python bench/segments.py --data-dir DIR      # load into DIR once; later runs reuse it

Numbers go to the terminal and to bench/results/segments.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import clickhouse_connect  # noqa: E402
import redis  # noqa: E402
from clickhouse_connect.driver.client import Client  # noqa: E402

from audiences.builder import BuildResult, build, discard_build  # noqa: E402
from audiences.compiler import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    Plan,
    compile_segments,
    row_predicate_sql,
    window_filter,
    window_params,
    window_start,
)
from audiences.definitions import Segment, SegmentSet, parse_segment  # noqa: E402
from audiences.rollup import ROLLED_DAYS, ROLLUP  # noqa: E402
from collector.categories import BUILTIN  # noqa: E402
from crumb.privacy import erase  # noqa: E402
from crumb.progress import Progress  # noqa: E402
from crumb.redis_server import EmbeddedRedis  # noqa: E402

RESULTS = BENCH_DIR / "results"
META = "bench-segments.json"  # in the data dir: what was loaded, and how long it took
LOOKBACK_DAYS = 30
FIRST_SEGMENT_ID = 1000
TARGET_FLOOR_RATIO = 3.0  # build(100) / floor
TARGET_GROWTH = 2.0  # build(100) / build(10)
TARGET_RSS_MB = 500.0
STEPS = ("values", "rollup", "pending", "totals", "touched", "recompute", "hours", "profiles", "entered", "members",
         "copy", "deltas", "stamp", "swap")
OUTPUT_TABLES = ("id_segments", "id_segments_next", "id_deltas", "segment_history_closed", "segment_sizes",
                 "segment_profiles", "segment_profiles_next", "segment_build_state")


# --------------------------------------------------------------------------------------- memory


def _status() -> dict[str, int]:
    """kB figures of /proc/self/status."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[name] = int(rest.split()[0])
    return values


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # peak RSS := current RSS
        return True
    except OSError:
        return False


class Sampler:
    """Samples the process's RSS and ClickHouse's per-query memory while a phase runs.

    ClickHouse figures come from a second chdb handle on the same engine (system.processes);
    the step under way comes from the builder's progress notes.
    """

    def __init__(self, dsn: str, every_s: float = 0.2) -> None:
        self._client = clickhouse_connect.get_client(dsn=dsn)
        self._every_s = every_s
        self.step = "other"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_anon_kb: dict[str, int] = {}
        self.peak_rss_kb: dict[str, int] = {}
        self.peak_query_bytes: dict[str, int] = {}
        self.peak_tracked_bytes: dict[str, int] = {}

    def progress(self) -> Progress:
        pattern = re.compile(r"build \d+: (\w+) (\.\.\.|done)")

        def sink(line: str) -> None:
            found = pattern.match(line)
            if found:
                self.step = found.group(1) if found.group(2) == "..." else "other"

        return Progress(sink=sink)

    def start(self, step: str = "other") -> None:
        self.step = step
        self.peak_anon_kb, self.peak_rss_kb, self.peak_query_bytes, self.peak_tracked_bytes = {}, {}, {}, {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._every_s)

    def _sample(self) -> None:
        step = self.step
        status = _status()
        _raise(self.peak_anon_kb, step, status.get("RssAnon", 0))
        _raise(self.peak_rss_kb, step, status.get("VmRSS", 0))
        try:
            query, tracked = self._client.query(
                "SELECT (SELECT max(peak_memory_usage) FROM system.processes "
                "        WHERE query NOT LIKE '%system.processes%'), "
                "(SELECT value FROM system.metrics WHERE metric = 'MemoryTracking')").result_rows[0]
        except Exception:  # the sampler must never fail a measurement
            return
        _raise(self.peak_query_bytes, step, int(query or 0))
        _raise(self.peak_tracked_bytes, step, int(tracked or 0))

    def close(self) -> None:
        self.stop()
        self._client.close()


def _raise(peaks: dict[str, int], key: str, value: int) -> None:
    peaks[key] = max(peaks.get(key, 0), value)


@dataclass
class Memory:
    """One phase's peaks, in MB."""

    peak_rss_mb: float = 0.0  # VmHWM after a reset: the process, ClickHouse included
    baseline_rss_mb: float = 0.0  # RSS when the phase started (chdb's library pages, caches)
    peak_anon_mb: float = 0.0  # sampled: anonymous memory (heaps), no file-backed pages
    python_heap_peak_mb: float = 0.0  # tracemalloc: Python objects only
    clickhouse_query_peak_mb: float = 0.0  # sampled system.processes.peak_memory_usage
    clickhouse_tracked_peak_mb: float = 0.0  # sampled MemoryTracking: all of ClickHouse's tracked memory
    by_step: dict[str, dict[str, float]] = field(default_factory=dict)


class Phase:
    """Measures the memory of one phase of the run."""

    def __init__(self, sampler: Sampler, step: str = "other") -> None:
        self._sampler = sampler
        self._step = step
        self.memory = Memory()

    def __enter__(self) -> Phase:
        _reset_hwm()
        tracemalloc.reset_peak()
        self.memory.baseline_rss_mb = _mb(_status()["VmRSS"])
        self._sampler.start(self._step)
        return self

    def __exit__(self, *exc: object) -> None:
        self._sampler.stop()
        s, m = self._sampler, self.memory
        m.peak_rss_mb = _mb(_status()["VmHWM"])
        m.python_heap_peak_mb = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        m.peak_anon_mb = _mb(max(s.peak_anon_kb.values(), default=0))
        m.clickhouse_query_peak_mb = round(max(s.peak_query_bytes.values(), default=0) / 2**20, 1)
        m.clickhouse_tracked_peak_mb = round(max(s.peak_tracked_bytes.values(), default=0) / 2**20, 1)
        for step in sorted(set(s.peak_rss_kb) | set(s.peak_query_bytes)):
            m.by_step[step] = {
                "rss_mb": _mb(s.peak_rss_kb.get(step, 0)), "anon_mb": _mb(s.peak_anon_kb.get(step, 0)),
                "clickhouse_query_mb": round(s.peak_query_bytes.get(step, 0) / 2**20, 1),
            }


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


# ----------------------------------------------------------------------------------------- load


def load(data_dir: Path, events: int, cookies: int, days: int) -> dict[str, Any]:
    """Bulk-load in a child process (so this process's memory peaks are the build's alone)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--load-only", "--data-dir", str(data_dir),
               "--events", str(events), "--cookies", str(cookies), "--days", str(days)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    meta = json.loads((data_dir / META).read_text())
    meta["load_wall_s"] = round(time.perf_counter() - started, 1)
    return meta


def load_only(data_dir: Path, events: int, cookies: int, days: int) -> None:
    from crumb.migrations import Dialect, apply
    from crumb.simulator import SimulationSpec, load_bulk

    data_dir.mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir}")
    apply(client, Dialect())
    spec = SimulationSpec(cookies=cookies, events=events, days=days)
    load_avg = os.getloadavg()
    result = load_bulk(client, spec, Progress())
    meta = {
        "events": result.events, "cookies": result.cookies, "days": days, "bots": result.bots,
        "load_s": round(result.duration_s, 1), "events_per_s": round(result.events / result.duration_s),
        "load_avg_before": [round(x, 2) for x in load_avg], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mb": _mb(_status()["VmHWM"]),
    }
    client.command("OPTIMIZE TABLE crumb.events FINAL")  # a settled table, as a nightly build sees it
    (data_dir / META).write_text(json.dumps(meta, indent=2))
    client.close()


# ------------------------------------------------------------------------------------- segments


@dataclass
class Vocabulary:
    """Values the simulator really produced in the window, most frequent first."""

    categories: list[str]
    parents: list[str]  # categories with descendants in the built-in taxonomy
    host_sections: list[tuple[str, str]]  # (host, "/section/sub") seen together
    sections: list[str]
    page_kinds: list[str]  # "article", "review", ...
    utm_sources: list[str]
    utm_mediums: list[str]
    utm_campaigns: list[str]
    device_os: list[tuple[str, str]]
    browsers: list[str]
    referrers: list[str]
    purchase_hosts: list[str]
    plans: list[str]
    hosts: list[str]


def vocabulary(client: Client, params: dict[str, Any]) -> Vocabulary:
    where = window_filter()

    def values(expression: str, extra: str = "", limit: int = 50) -> list[Any]:
        rows = client.query(
            f"SELECT {expression} AS v, count() AS n FROM crumb.events WHERE {where} {extra} "
            f"GROUP BY v HAVING notEmpty(toString(v)) ORDER BY n DESC, v LIMIT {limit}", parameters=params).result_rows
        return [row[0] for row in rows]

    section = "arrayStringConcat(arraySlice(splitByChar('/', path), 1, 3), '/')"
    categories = values("arrayJoin(categories)")
    parents = [c for c in categories if c in BUILTIN and len(BUILTIN.descendants(c)) > 1]
    host_sections = [tuple(v) for v in values(f"(host, {section})", "AND path LIKE '/%/%/%'", 200)]
    return Vocabulary(
        categories=categories,
        parents=parents,
        host_sections=host_sections,
        sections=list(dict.fromkeys(s for _, s in host_sections)),
        page_kinds=values("extract(path, '/([a-z]+(?:-[a-z]+)*)-[0-9]+$')"),
        utm_sources=values("utm_source"),
        utm_mediums=values("utm_medium"),
        utm_campaigns=values("utm_campaign"),
        device_os=[tuple(v) for v in values("(device_type, os)")],
        browsers=values("browser"),
        referrers=[r for r in values("referrer_host") if not r.endswith(".example")],
        purchase_hosts=values("host", "AND type = 'purchase'"),
        plans=values("props['plan']", "AND type = 'signup'"),
        hosts=values("host"),
    )


def _pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


def _p(field_name: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field_name, "op": op, "value": value}


def _c(*where: dict[str, Any], **bounds: Any) -> dict[str, Any]:
    return {"where": list(where), **bounds}


def make_segments(v: Vocabulary, count: int = 100) -> list[Segment]:
    """`count` segments in blocks of ten; each block has the same mix of kinds, with other values
    (so the first ten are a fair sample of the hundred), and refers only to segments of its own."""
    segments = []
    for block in range((count + 9) // 10):
        b, base = block, FIRST_SEGMENT_ID + 10 * block
        host, sec = _pick(v.host_sections, b)
        sec2 = _pick(v.sections, b + 3)
        device, os_name = _pick(v.device_os, b)
        kind, kind2 = _pick(v.page_kinds, b), _pick(v.page_kinds, b + 1)
        regex = "^" + re.escape(_pick(v.sections, b + 5)) + "/.*(" + "|".join(
            re.escape(k) for k in (kind, kind2)) + ")-[0-9]+$"
        host_prefix = _pick(v.hosts, b + 2).split("-")[0]
        if b % 2 == 0:
            conversion = _c(_p("type", "eq", "purchase"), _p("host", "eq", _pick(v.purchase_hosts, b // 2)))
        else:
            conversion = _c(_p("type", "eq", "signup"), _p("prop.plan", "eq", _pick(v.plans, b // 2)))
        references = (
            {"all": [{"segment": base}, {"any": [{"segment": base + 6}, {"segment": base + 3}]}]} if b % 2 == 0
            else {"all": [{"segment": base + 5}, {"not": {"segment": base + 4}}]})
        rules = [
            ("category frequency", _c(_p("category", "is", _pick(v.parents, b)), min_count=2 + b % 4)),
            ("host section, recent", _c(_p("host", "eq", host), _p("path", "prefix", sec),
                                        within_days=1 + (3 * b) % 14)),
            ("campaign traffic", {"any": [
                _c(_p("utm_source", "eq", _pick(v.utm_sources, b)),
                   _p("utm_campaign", "eq", _pick(v.utm_campaigns, b))),
                _c(_p("utm_medium", "in", [_pick(v.utm_mediums, b), _pick(v.utm_mediums, b + 1)]), min_count=2),
                _c(_p("utm_campaign", "in", [_pick(v.utm_campaigns, 2 * b + 1), _pick(v.utm_campaigns, 2 * b + 2)])),
            ]}),
            ("device and interest on days", {"all": [
                _c(_p("device_type", "eq", device), _p("os", "eq", os_name)),
                _c(_p("category", "is", _pick(v.categories, b + 3)), min_days=2 + b % 2),
            ]}),
            ("converters", conversion),
            ("lapsed section readers", {"all": [
                _c(_p("path", "prefix", sec2)),
                {"not": _c(_p("path", "prefix", sec2), within_days=1 + b % 7)},
            ]}),
            ("engaged interest", _c(_p("category", "is", _pick(v.categories, b + 7)),
                                    min_engaged_ms=15_000 * (1 + b % 4), within_days=14)),
            ("page patterns", {"any": [
                _c(_p("path", "regex", regex)),
                {"all": [_c(_p("path", "contains", "/" + kind2 + "-"), min_count=2),
                         _c(_p("host", "prefix", host_prefix))]},
            ]}),
            ("combined segments", references),
            ("frequent social visitors", {"all": [
                _c(_p("referrer_host", "in", [_pick(v.referrers, b), _pick(v.referrers, b + 1)])),
                {"not": _c(_p("browser", "eq", _pick(v.browsers, b)))},
                _c(min_count=3 + b % 3, within_days=7 + b % 7),
            ]}),
        ]
        for offset, (name, rule) in enumerate(rules):
            if len(segments) < count:
                segments.append(parse_segment({
                    "id": base + offset, "name": f"{name} #{block}", "lookback_days": LOOKBACK_DAYS, "rule": rule,
                }, f"bench segment {base + offset}"))
    return segments


# --------------------------------------------------------------------------------------- queries


def floor_sql() -> str:
    return f"SELECT cookie_id, count() FROM crumb.events WHERE {window_filter()} GROUP BY cookie_id FORMAT Null"


def direct_statement(plan: Plan, as_of_ms: int) -> tuple[str, dict[str, Any], int]:
    """One countIf per condition (uniqExactIf / sumIf where its bounds need them), one GROUP BY cookie."""
    params: dict[str, Any] = window_params(plan, as_of_ms)
    predicates = {number: row_predicate_sql(plan, number, params) for number in range(1, len(plan.predicates) + 1)}
    aggregates = []
    for c in plan.conditions:
        test = [predicates[n] for n in c.predicates]
        if c.window_days < plan.max_window_days:
            params[f"since{c.number}"] = window_start(as_of_ms, c.window_days)
            test.append(f"ts >= fromUnixTimestamp64Milli({{since{c.number}:Int64}}, 'UTC')")
        where = " AND ".join(test) or "1"
        aggregates.append(f"countIf({where})")
        if c.min_days:
            aggregates.append(f"uniqExactIf(toDate(ts), {where})")
        if c.min_engaged_ms:
            aggregates.append(f"sumIf(engaged_ms, {where})")
    sql = (f"SELECT cookie_id, {', '.join(aggregates)} FROM crumb.events WHERE {window_filter()} "
           "GROUP BY cookie_id FORMAT Null")
    return sql, params, len(aggregates)


def timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def reset_outputs(client: Client) -> None:
    """Every measured build a first one: no earlier members, and nothing rolled up yet."""
    for table in OUTPUT_TABLES:
        client.command(f"TRUNCATE TABLE IF EXISTS crumb.{table}")
    client.command(f"DROP TABLE IF EXISTS {ROLLUP}")
    client.command(f"TRUNCATE TABLE IF EXISTS {ROLLED_DAYS}")


# ------------------------------------------------------------------------------------------- run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--cookies", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--data-dir", type=Path, help="load here once; later runs reuse the events")
    parser.add_argument("--quick", action="store_true", help="1M events / 100k cookies: a smoke check")
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-compile reference query")
    parser.add_argument("--hourly-runs", type=int, default=5, help="runs of the hourly build, from one state (median)")
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.events, args.cookies = 1_000_000, 100_000
    if args.load_only:
        load_only(args.data_dir.resolve(), args.events, args.cookies, args.days)
        return 0

    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="crumb-bench-segments-")) if temporary else args.data_dir.resolve()
    try:
        return run(args, data_dir)
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


def run(args: argparse.Namespace, data_dir: Path) -> int:
    started = time.perf_counter()
    load_avg_start = os.getloadavg()
    if (data_dir / META).exists():
        meta = json.loads((data_dir / META).read_text())
        meta["reused"] = True
        print(f"reusing {data_dir}: {meta['events']:,} events / {meta['cookies']:,} cookies / {meta['days']} days, "
              f"loaded in {meta['load_s']:.0f}s then", flush=True)
        if (meta["events"], meta["cookies"], meta["days"]) != (args.events, args.cookies, args.days):
            print("  (not the sizes asked for: the data dir's own are measured)", flush=True)
    else:
        print(f"bulk-loading {args.events:,} events / {args.cookies:,} cookies / {args.days} days into {data_dir} ...",
              flush=True)
        meta = load(data_dir, args.events, args.cookies, args.days)
        meta["reused"] = False
        print(f"loaded in {meta['load_s']:.0f}s ({meta['events_per_s']:,} events/s; load average "
              f"{meta['load_avg_before'][0]:.2f} → {meta['load_avg_after'][0]:.2f})", flush=True)

    tracemalloc.start()
    dsn = f"chdb://{data_dir}"
    client = clickhouse_connect.get_client(dsn=dsn)
    from crumb.migrations import Dialect, apply
    apply(client, Dialect())  # a reused data dir may predate the latest migrations
    sampler = Sampler(dsn)
    try:
        result = measure(args, client, sampler, meta)
    finally:
        sampler.close()
        client.close()
    result["load_average"] = {"start": [round(x, 2) for x in load_avg_start],
                              "end": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count()}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    report(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "segments.json").write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {RESULTS / 'segments.json'}")
    return 0


def measure(args: argparse.Namespace, client: Client, sampler: Sampler, meta: dict[str, Any]) -> dict[str, Any]:
    last_ms = int(client.query("SELECT toUnixTimestamp64Milli(max(ts)) FROM crumb.events").result_rows[0][0])
    # At least an hour into its UTC day: the hourly build follows a build of the same day.
    as_of_ms = max(last_ms, last_ms - last_ms % DAY_MS + HOUR_MS)
    counts = client.query("SELECT count(), uniqExact(cookie_id) FROM crumb.events").result_rows[0]
    forget_new_optouts(client, as_of_ms)  # a run cut short may have left them
    probe = compile_segments(SegmentSet([parse_segment(
        {"id": 1, "name": "window", "lookback_days": LOOKBACK_DAYS, "rule": {"where": []}})]))
    params = window_params(probe, as_of_ms)
    window_rows = client.query(f"SELECT count(), uniqExact(cookie_id) FROM crumb.events WHERE {window_filter()}",
                               parameters=params).result_rows[0]
    all_segments = make_segments(vocabulary(client, params), args.segments)
    sets = {10: SegmentSet(all_segments[:10]), len(all_segments): SegmentSet(all_segments)}
    big = len(all_segments)
    plans = {n: compile_segments(s, BUILTIN) for n, s in sets.items()}
    print(f"{counts[0]:,} events, {counts[1]:,} cookies; window ({LOOKBACK_DAYS} days, eligible): "
          f"{window_rows[0]:,} events, {window_rows[1]:,} cookies", flush=True)
    for n, plan in plans.items():
        print(f"{n} segments: {len(plan.predicates)} predicates over {len(plan.fields())} fields, "
              f"{len(plan.conditions)} conditions", flush=True)
    result: dict[str, Any] = {
        "data": {**meta, "events_in_table": counts[0], "cookies_in_table": counts[1],
                 "window_events": window_rows[0], "window_cookies": window_rows[1], "as_of_ms": as_of_ms},
        "plans": {str(n): {"segments": len(p.segments), "predicates": len(p.predicates), "fields": p.fields(),
                           "conditions": len(p.conditions)} for n, p in plans.items()},
        "targets": {"build_over_floor": TARGET_FLOOR_RATIO, "growth_10_to_100": TARGET_GROWTH,
                    "peak_rss_mb": TARGET_RSS_MB},
    }

    # (1) the floor: same window, same eligibility, same parameters
    client.command(floor_sql(), parameters=params)  # warm the page cache, as the builds will find it
    def floor() -> float:
        return timed(lambda: client.command(floor_sql(), parameters=params))

    with Phase(sampler, "floor") as phase:
        floor_runs = [floor() for _ in range(3)]
    floor_s = statistics.median(floor_runs)
    result["floor"] = {"median_s": round(floor_s, 3), "runs_s": [round(t, 3) for t in floor_runs],
                       "memory": phase.memory.__dict__}
    print(f"floor: {floor_s:.2f}s (runs {', '.join(f'{t:.2f}' for t in floor_runs)})", flush=True)

    # (2) builds: each run starts from empty outputs (a first build: every member enters). They are
    # built as of an hour before the floor's as_of, so that the hourly build (as of the floor's)
    # finds an hour of new events, as it would in production.
    hour_before = as_of_ms - 3_600_000
    result["optouts"] = {"recorded": seed_optouts(client, as_of_ms), "new_before_hourly": NEW_OPTOUTS}
    builds: dict[str, Any] = {}
    for n, segment_set in sets.items():
        runs: list[BuildResult] = []
        walls: list[float] = []
        with Phase(sampler) as phase:
            for _ in range(2):
                reset_outputs(client)
                started = time.perf_counter()
                runs.append(build(client, segment_set, BUILTIN, sampler.progress(), as_of_ms=hour_before))
                walls.append(time.perf_counter() - started)
                print(f"build {n}: {walls[-1]:.2f}s  {runs[-1].timings}  members {runs[-1].members:,}", flush=True)
        builds[str(n)] = _build_summary(runs, walls, phase.memory)
        if n != big:  # its hourly build, on its own rollup (the big plan's comes below)
            hourly_runs = hourly_builds(client, segment_set, as_of_ms, sampler, args.hourly_runs,
                                        f"build {n} an hour later", floor)
            builds[str(n)].update(hour_later_s=round(statistics.median(r.wall for r in hourly_runs), 3),
                                  hour_later_timings=median_steps([r.result for r in hourly_runs]),
                                  hour_later_recomputed=hourly_runs[-1].result.recomputed)
            forget_new_optouts(client, as_of_ms)  # the next first builds are an hour before them
    # what writing those outputs costs alone: a bound under any first build of this plan
    result["outputs_floor"] = outputs_floor(client)
    print(f"writing the first build's outputs alone: {result['outputs_floor']['s']:.2f}s  "
          f"{result['outputs_floor']['rows']}", flush=True)
    # one more build on top of the last, recomputing everything: the nightly full rebuild
    steady, steady_wall = timed_build(client, sets[big], hour_before, sampler, f"rebuild {big} in full", follow=False)
    # and the hourly build: an hour of new events, windows have moved; it follows the last build
    hourly_runs = hourly_builds(client, sets[big], as_of_ms, sampler, args.hourly_runs, f"rebuild {big} an hour later",
                                floor)
    later, later_wall = hourly_runs[-1].result, statistics.median(r.wall for r in hourly_runs)
    # what it would cost recomputing everything
    later_full, later_full_wall = timed_build(client, sets[big], as_of_ms, sampler,
                                              f"rebuild {big} an hour later, in full", follow=False)
    assert later_full.entered == later_full.exited == 0, "the hourly build and a full one disagree"
    # and the build after erasures: the opt-out worker erases each opted-out ID, between builds
    erased = erase_some(client, as_of_ms)
    after_erasure, after_erasure_wall = timed_build(client, sets[big], as_of_ms, sampler,
                                                    f"rebuild {big} after erasing {erased['ids']} IDs")
    assert after_erasure.followed, "the build after an erasure did not follow the last"
    after_erasure_full, _ = timed_build(client, sets[big], as_of_ms, sampler,
                                        f"rebuild {big} after the erasures, in full", follow=False)
    assert after_erasure_full.entered == after_erasure_full.exited == 0, "after erasures: following and full disagree"
    forget_new_optouts(client, as_of_ms)
    sizes = dict(client.query(
        "SELECT segment_id, uniqExact(profile_id) FROM crumb.segment_members GROUP BY segment_id").result_rows)
    result["builds"] = builds
    result["steady_rebuild"] = {"wall_s": round(steady_wall, 3), "timings": steady.timings,
                                "entered": steady.entered, "exited": steady.exited}
    result["hour_later_rebuild"] = {"wall_s": round(later_wall, 3), "runs_s": [round(r.wall, 3) for r in hourly_runs],
                                    "floor_runs_s": [round(r.floor, 3) for r in hourly_runs],
                                    "cpu_s": [round(r.cpu, 3) for r in hourly_runs],
                                    "floor_cpu_s": [round(r.floor_cpu, 3) for r in hourly_runs],
                                    "rss_mb": [(r.start_rss_mb, r.peak_rss_mb) for r in hourly_runs],  # (start, peak)
                                    "timings": median_steps([r.result for r in hourly_runs]),
                                    "entered": later.entered, "exited": later.exited,
                                    "recomputed_ids": later.recomputed, "changes": later.changes,
                                    "in_full_s": round(later_full_wall, 3), "in_full_timings": later_full.timings}
    result["after_erasure"] = {**erased, "wall_s": round(after_erasure_wall, 3), "timings": after_erasure.timings,
                               "recomputed_ids": after_erasure.recomputed, "changes": after_erasure.changes,
                               "rolled_days": after_erasure.rolled_days}
    result["segment_sizes"] = {str(s.id): int(sizes.get(s.id, 0)) for s in all_segments}
    result["segment_names"] = {str(s.id): s.name for s in all_segments}
    result["empty_segments"] = [s.id for s in all_segments if not sizes.get(s.id)]

    b10, b100 = builds["10"]["median_s"], builds[str(big)]["median_s"]
    result["ratios"] = {
        "build_over_floor": round(b100 / floor_s, 2),
        "build10_over_floor": round(b10 / floor_s, 2),
        "growth_10_to_100": round(b100 / b10, 2),
        "members_over_floor": round(builds[str(big)]["steps_median_s"]["members"] / floor_s, 2),
        "members10_over_floor": round(builds["10"]["steps_median_s"]["members"] / floor_s, 2),
        "hour_later_over_floor": round(later_wall / floor_s, 2),
        # Each hourly run against the floor run just before it: the machine as each run found it.
        "hour_later_over_paired_floor": round(statistics.median(r.wall / r.floor for r in hourly_runs), 2),
        # The same in CPU time: the work done, whatever else the machine ran meanwhile.
        "hour_later_cpu_over_paired_floor_cpu": round(statistics.median(r.cpu / r.floor_cpu for r in hourly_runs), 2),
        "hourly_growth_10_to_100": round(later_wall / builds["10"]["hour_later_s"], 2),
        "after_erasure_over_floor": round(after_erasure_wall / floor_s, 2),
        "outputs_over_floor": round(result["outputs_floor"]["s"] / floor_s, 2),
    }

    # (3) for reference: the direct compile
    if not args.no_direct:
        sql, direct_params, aggregates = direct_statement(plans[big], as_of_ms)
        with Phase(sampler, "direct") as phase:
            direct_s = timed(lambda: client.command(sql, parameters=direct_params))
        result["direct"] = {"s": round(direct_s, 3), "aggregates": aggregates,
                            "over_floor": round(direct_s / floor_s, 2), "memory": phase.memory.__dict__}
        print(f"direct compile ({aggregates} aggregates): {direct_s:.2f}s", flush=True)

    return result


# A first build's outputs: its members, its deltas (every member entered) and its profiles.
FIRST_BUILD_OUTPUTS = ("id_segments", "id_deltas", "segment_profiles")


def outputs_floor(client: Client) -> dict[str, Any]:
    """Copy what the last first build wrote (INSERT ... SELECT into empty tables of the same
    layout): the least any first build of this plan must spend writing, whatever its plan of
    reading and evaluating. Against the floor, it says how much of the 3× is left for the rest."""
    rows: dict[str, int] = {}
    seconds = 0.0
    for table in FIRST_BUILD_OUTPUTS:
        copy = f"crumb._bench_copy_{table}"
        client.command(f"DROP TABLE IF EXISTS {copy} SYNC")
        client.command(f"CREATE TABLE {copy} AS crumb.{table}")
        try:
            seconds += timed(lambda: client.command(f"INSERT INTO {copy} SELECT * FROM crumb.{table}"))  # noqa: B023
            rows[table] = int(client.query(f"SELECT count() FROM {copy}").result_rows[0][0])
        finally:
            client.command(f"DROP TABLE {copy} SYNC")
    return {"s": round(seconds, 3), "rows": rows}


def timed_build(client: Client, segments: SegmentSet, as_of_ms: int, sampler: Sampler, label: str,
                follow: bool = True) -> tuple[BuildResult, float]:
    started = time.perf_counter()
    result = build(client, segments, BUILTIN, sampler.progress(), as_of_ms=as_of_ms, follow=follow)
    wall = time.perf_counter() - started
    print(f"{label}: {wall:.2f}s  {result.timings}  entered {result.entered:,} exited {result.exited:,}"
          + (f"  recomputed {result.recomputed:,} IDs  {result.changes}" if result.followed else ""), flush=True)
    return result, wall


HOURLY_STATE = ("id_segments", "segment_profiles", "segment_build_state")  # what a build replaces whole


@dataclass
class HourlyRun:
    result: BuildResult
    wall: float
    floor: float  # the floor query, timed just before this run
    cpu: float  # the process's CPU time over the build: ClickHouse's work on both cores, and Python's
    floor_cpu: float  # and over that floor query
    start_rss_mb: float  # the process's RSS as the build started
    peak_rss_mb: float  # and its peak over the build alone


def cpu_s() -> float:
    """This process's CPU time (user and system): with chdb, ClickHouse's threads are counted too."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hourly_builds(client: Client, segments: SegmentSet, as_of_ms: int, sampler: Sampler, runs: int,
                  label: str, floor: Callable[[], float]) -> list[HourlyRun]:
    """The hourly build `runs` times from the same state, so that its figure is a median and not
    one run on a noisy machine: every run but the last is undone (its rows in the append-only
    tables deleted, the tables a build replaces put back from a copy). The last one stays. Each
    run follows a run of the floor query, so that each can be set against the floor of the
    moment: on this shared machine, the floor alone moved between 0.5 s and 0.9 s in an hour."""
    last_build = int(client.query("SELECT max(build_id) FROM crumb.builds").result_rows[0][0])
    add_new_optouts(client, as_of_ms)
    for table in HOURLY_STATE:
        client.command(f"DROP TABLE IF EXISTS crumb._bench_{table}")
        client.command(f"CREATE TABLE crumb._bench_{table} AS crumb.{table}")
        client.command(f"INSERT INTO crumb._bench_{table} SELECT * FROM crumb.{table}")
    results = []
    try:
        for run in range(runs):
            if run:
                discard_build(client, results[-1].result.build_id)  # its deltas, history and sizes
                client.command("DELETE FROM crumb.builds WHERE build_id > {b:UInt64}", parameters={"b": last_build})
                for table in HOURLY_STATE:
                    client.command(f"TRUNCATE TABLE crumb.{table}")
                    client.command(f"INSERT INTO crumb.{table} SELECT * FROM crumb._bench_{table}")
            before = cpu_s()
            floor_s = floor()
            floor_cpu = cpu_s() - before
            _reset_hwm()
            start_rss, before = _status()["VmRSS"], cpu_s()
            result, wall = timed_build(client, segments, as_of_ms, sampler, f"{label} ({run + 1}/{runs})")
            build_cpu = cpu_s() - before
            assert result.followed, "the hourly build did not follow the last (was as_of an hour into a UTC day?)"
            results.append(HourlyRun(result, wall, floor_s, build_cpu, floor_cpu, _mb(start_rss),
                                     _mb(_status()["VmHWM"])))
    finally:
        for table in HOURLY_STATE:
            client.command(f"DROP TABLE IF EXISTS crumb._bench_{table}")
    return results


# Opt-outs, as a live deployment has them: many recorded long ago, and a few new ones between two
# builds, which a following build must take in (it touches the new ones and the IDs linked to them).
OLD_OPTOUTS = 10_000
NEW_OPTOUTS = 100
NEW_OPTOUT_AGE_MS = 1_800_000  # half an hour before as_of: after the last build, before the hourly one
_OPTOUT_COOKIES = "SELECT DISTINCT cookie_id FROM crumb.events WHERE cookie_id != '' ORDER BY cityHash64(cookie_id)"


def seed_optouts(client: Client, as_of_ms: int) -> int:
    """The old opt-outs (recorded two days before as_of), once per data dir. Returns how many."""
    if not client.query("SELECT count() FROM crumb.optouts").result_rows[0][0]:
        client.command(f"INSERT INTO crumb.optouts SELECT cookie_id, fromUnixTimestamp64Milli({{t:Int64}}, 'UTC') "
                       f"FROM ({_OPTOUT_COOKIES} LIMIT {OLD_OPTOUTS})", parameters={"t": as_of_ms - 2 * 86_400_000})
    return int(client.query("SELECT uniqExact(id) FROM crumb.optouts").result_rows[0][0])


def add_new_optouts(client: Client, as_of_ms: int) -> None:
    client.command(f"INSERT INTO crumb.optouts SELECT cookie_id, fromUnixTimestamp64Milli({{t:Int64}}, 'UTC') "
                   f"FROM ({_OPTOUT_COOKIES} LIMIT {NEW_OPTOUTS} OFFSET {OLD_OPTOUTS})",
                   parameters={"t": as_of_ms - NEW_OPTOUT_AGE_MS})


def forget_new_optouts(client: Client, as_of_ms: int) -> None:
    client.command("DELETE FROM crumb.optouts WHERE opted_out_at = fromUnixTimestamp64Milli({t:Int64}, 'UTC')",
                   parameters={"t": as_of_ms - NEW_OPTOUT_AGE_MS})


ERASED_COOKIES = ERASED_FIRST_PARTY = 10  # per run: each run erases others (those left have events)


def erase_some(client: Client, as_of_ms: int) -> dict[str, Any]:
    """Erase cookies, and first-party IDs seen with cookies (whose cookies' rolled-up days hold
    their events), none erased before, as the opt-out worker does: through `crumb.privacy.erase`,
    with a Redis of its own for the lock. Their events are gone from the data dir for good: a few
    of its million IDs per run."""
    before = "toDate(ts) < toDate(fromUnixTimestamp64Milli({a:Int64}, 'UTC'))"
    fresh = "NOT IN (SELECT id FROM crumb.erasures)"
    ids = [row[0] for row in client.query(
        f"(SELECT cookie_id AS id FROM crumb.events WHERE cookie_id != '' AND cookie_id {fresh} AND {before} "
        f"GROUP BY id ORDER BY cityHash64(id) LIMIT {ERASED_COOKIES}) UNION ALL "
        f"(SELECT fp_id AS id FROM crumb.events WHERE fp_id != '' AND cookie_id != '' AND fp_id {fresh} AND {before} "
        f"GROUP BY id ORDER BY cityHash64(id) LIMIT {ERASED_FIRST_PARTY})", parameters={"a": as_of_ms}).result_rows]
    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedRedis(Path(directory))
        server.start()
        try:
            started = time.perf_counter()
            erase(client, redis.Redis.from_url(server.url), ids, "bench")
            erase_s = time.perf_counter() - started
        finally:
            server.stop()
    print(f"erased {len(ids)} IDs in {erase_s:.2f}s", flush=True)
    return {"ids": len(ids), "erase_s": round(erase_s, 3)}


def median_steps(runs: list[BuildResult]) -> dict[str, float]:
    """Each step's median time over the runs (0 where a run did not have the step)."""
    return {step: round(statistics.median(r.timings.get(step, 0.0) for r in runs), 3) for step in STEPS}


def _build_summary(runs: list[BuildResult], walls: list[float], memory: Memory) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(walls), 3),
        "runs_s": [round(w, 3) for w in walls],
        "timed_steps_s": round(statistics.median(sum(r.timings.values()) for r in runs), 3),
        "steps_median_s": median_steps(runs),
        "runs": [r.as_dict() for r in runs],
        "memory": memory.__dict__,
    }


def report(r: dict[str, Any]) -> None:
    d, floor, builds, ratios = r["data"], r["floor"], r["builds"], r["ratios"]
    big = max(builds, key=int)
    print("\n=== segment build benchmark ===")
    print(f"data: {d['events_in_table']:,} events, {d['cookies_in_table']:,} cookies; window {d['window_events']:,} "
          f"events / {d['window_cookies']:,} cookies; load {d['load_s']:.0f}s"
          + (" (earlier run, reused)" if d.get("reused") else ""))
    la = r["load_average"]
    print(f"machine: {la['cores']} cores, load average {la['start'][0]:.2f} at start, {la['end'][0]:.2f} at end")
    o = r["optouts"]
    print(f"opt-outs: {o['recorded']:,} recorded before the first builds, {o['new_before_hourly']} new before "
          "the hourly builds")
    for n, plan in r["plans"].items():
        print(f"plan {n:>3}: {plan['predicates']} predicates, {plan['conditions']} conditions, fields {plan['fields']}")
    print()
    header = f"{'':<22}{'total':>8}" + "".join(f"{s:>10}" for s in STEPS)
    print(header)
    print(f"{'floor (median of 3)':<22}{floor['median_s']:>8.2f}")
    for n in builds:
        b = builds[n]
        print(f"{'build ' + n + ' (median of 2)':<22}{b['median_s']:>8.2f}"
              + "".join(f"{b['steps_median_s'][s]:>10.2f}" for s in STEPS))
    s = r["steady_rebuild"]
    print(f"{'rebuild ' + big + ' in full':<22}{s['wall_s']:>8.2f}"
          + "".join(f"{s['timings'].get(step, 0):>10.2f}" for step in STEPS))
    h = r["hour_later_rebuild"]
    print(f"{'hour later, median ' + str(len(h['runs_s'])):<22}{h['wall_s']:>8.2f}"
          + "".join(f"{h['timings'].get(step, 0):>10.2f}" for step in STEPS)
          + f"   ({h['entered']:,} entered, {h['exited']:,} exited; {h['recomputed_ids']:,} IDs recomputed)")
    print(f"{'  the same, in full':<22}{h['in_full_s']:>8.2f}"
          + "".join(f"{h['in_full_timings'].get(step, 0):>10.2f}" for step in STEPS))
    e = r["after_erasure"]
    print(f"{'after erasing ' + str(e['ids']) + ' IDs':<22}{e['wall_s']:>8.2f}"
          + "".join(f"{e['timings'].get(step, 0):>10.2f}" for step in STEPS)
          + f"   ({e['recomputed_ids']:,} IDs recomputed, {e['rolled_days']} days rolled up; "
            f"erasure {e['erase_s']:.1f}s)")
    if "direct" in r:
        print(f"{'direct compile ' + big:<22}{r['direct']['s']:>8.2f}   ({r['direct']['aggregates']} aggregates, "
              f"one GROUP BY cookie; no members written)")
    print()
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"build({big}) / floor     {ratios['build_over_floor']:6.2f}×   target ≤ {TARGET_FLOOR_RATIO}×  "
          f"{ok(ratios['build_over_floor'] <= TARGET_FLOOR_RATIO)}")
    print(f"build({big}) / build(10) {ratios['growth_10_to_100']:6.2f}×   target ≤ {TARGET_GROWTH}×  "
          f"{ok(ratios['growth_10_to_100'] <= TARGET_GROWTH)}")
    print(f"outputs alone / floor  {ratios['outputs_over_floor']:6.2f}×   (copying the first build's "
          f"{sum(r['outputs_floor']['rows'].values()):,} output rows, nothing computed: of the "
          f"{TARGET_FLOOR_RATIO}×, {TARGET_FLOOR_RATIO - ratios['outputs_over_floor']:.2f}× is left to read, "
          "evaluate, link and compare)")
    print(f"members({big}) / floor   {ratios['members_over_floor']:6.2f}×   "
          f"(members(10) / floor {ratios['members10_over_floor']:.2f}×; the step that aggregates the window's rows)")
    # The targets are judged on the first builds above; the scheduler's build, against the same ones:
    print(f"hourly rebuild / floor {ratios['hour_later_over_floor']:6.2f}×   same target, hourly: "
          f"{ok(ratios['hour_later_over_floor'] <= TARGET_FLOOR_RATIO)}  (it recomputes only the profiles it "
          "finds touched)")
    print(f"hourly {big} / hourly 10  {ratios['hourly_growth_10_to_100']:6.2f}×   same target, hourly: "
          f"{ok(ratios['hourly_growth_10_to_100'] <= TARGET_GROWTH)}")
    print(f"after erasures / floor  {ratios['after_erasure_over_floor']:6.2f}×   (the hourly build where the opt-out "
          "worker erased IDs since the last)")
    print(f"  each against the floor run just before it: median {ratios['hour_later_over_paired_floor']:.2f}×  "
          f"(hourly runs {', '.join(f'{w:.2f}' for w in h['runs_s'])}; floor runs "
          f"{', '.join(f'{f:.2f}' for f in h['floor_runs_s'])})")
    print(f"  in CPU time, each against its floor run's: median {ratios['hour_later_cpu_over_paired_floor_cpu']:.2f}×  "
          f"(hourly runs {', '.join(f'{c:.2f}' for c in h['cpu_s'])}; floor runs "
          f"{', '.join(f'{c:.2f}' for c in h['floor_cpu_s'])} s of CPU)")
    if "direct" in r:
        print(f"direct({big}) / floor    {r['direct']['over_floor']:6.2f}×   (reference)")
    print()
    print(f"{'memory, MB':<22}{'peak RSS':>10}{'at start':>10}{'anon':>8}{'python':>8}{'CH query':>10}{'CH total':>10}")
    phases = [("floor", floor["memory"])] + [(f"build {n}", b["memory"]) for n, b in builds.items()]
    if "direct" in r:
        phases.append(("direct", r["direct"]["memory"]))
    for name, m in phases:
        print(f"{name:<22}{m['peak_rss_mb']:>10.0f}{m['baseline_rss_mb']:>10.0f}{m['peak_anon_mb']:>8.0f}"
              f"{m['python_heap_peak_mb']:>8.1f}{m['clickhouse_query_peak_mb']:>10.0f}{m['clickhouse_tracked_peak_mb']:>10.0f}")
    m = builds[big]["memory"]
    print(f"  build {big} per step (sampled RSS / CH query peak): " + ", ".join(
        f"{step} {v['rss_mb']:.0f}/{v['clickhouse_query_mb']:.0f}" for step, v in m["by_step"].items()))
    print(f"peak RSS of build({big}) {m['peak_rss_mb']:.0f} MB   target < {TARGET_RSS_MB:.0f} MB  "
          f"{ok(m['peak_rss_mb'] < TARGET_RSS_MB)}  (the whole process: chdb runs ClickHouse in it)")
    f = floor["memory"]
    above = "above" if f["peak_rss_mb"] >= TARGET_RSS_MB else "below"
    print(f"peak RSS of the floor query alone {f['peak_rss_mb']:.0f} MB, {above} the target (the process held "
          f"{f['baseline_rss_mb']:.0f} MB as it started, the engine's library and caches in it)")
    start, peak = max(h["rss_mb"], key=lambda run: run[1] - run[0])
    print(f"peak RSS of an hourly build {peak:.0f} MB, {peak - start:.0f} MB above the process's as it started "
          "(the run that grew most; in this long-lived process its start is what the first builds left)")
    empty = r["empty_segments"]
    sizes = sorted(r["segment_sizes"].values())
    print(f"segment sizes (profiles): min {sizes[0]:,}, median {sizes[len(sizes) // 2]:,}, max {sizes[-1]:,}; "
          f"empty: {len(empty)}" + (f" {empty}" if empty else ""))


if __name__ == "__main__":
    sys.exit(main())
