"""Real-time lookup: `GET /v1/segments?id=...` of a real `crumb serve` against a bare Starlette
endpoint doing one `redis.asyncio` HGETALL of the same key on the same Redis; and Redis bytes per
membership of the segment store.

Both servers run with the same uvicorn settings (httptools, uvloop, one worker, no access log).
N IDs (3 of the shipped example segments each) are written straight into the store on crumb's
embedded Redis (<data dir>/redis/redis.sock); the bare app reads that socket too. wrk runs a Lua
script rotating over the seeded IDs, `?id=<id>&format=json` with the bearer header, on both.

  throughput  wrk -t1 -c32, pairs of runs in ABBA order after warm-ups: the median of the pairs'
              crumb/bare is the lookup ratio (≥ 0.7)
  p99         wrk2 is not packaged, so load at ~80% of crumb's max is approximated closed-loop:
              connection counts 1, 2, 3, ... are tried and the first whose throughput reaches
              80% of the max gives the p99 (≤ 5 ms)
  bytes       MEMORY USAGE over the seeded keys / memberships

    python bench/activation.py [--ids 100000] [--duration 5] [--connections 32] [--pairs 2]

Numbers go to the terminal and to bench/results/activation.json.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.collector import SERVER_SETTINGS, Server, crumb_env, free_port  # noqa: E402

RESULTS = REPO / "bench" / "results"
API_KEY = "bench-" + secrets.token_hex(8)
SEGMENTS = [101, 102, 103, 104, 105, 106, 107, 108]
TARGET_RATIO, TARGET_P99_MS = 0.7, 5.0

LUA = r"""
local ids, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do table.insert(ids, line) end
  i = math.random(1, #ids)
end
function request()
  i = i % #ids + 1
  return wrk.format("GET", "/v1/segments?id=" .. ids[i] .. "&format=json", {["Authorization"] = "Bearer __KEY__"})
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests": %.0f, "duration_us": %.0f, "errors": %.0f, ' ..
    '"p50_us": %.0f, "p99_us": %.0f}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def run_bare_app(port: int, socket_path: str) -> None:
    """The baseline: one route, one HGETALL of the same key, the segment IDs as JSON."""
    import redis.asyncio
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    client = redis.asyncio.Redis(unix_socket_path=socket_path)

    async def segments(request: Request) -> Response:
        raw = await client.hgetall(f"crumb:{{c:{request.query_params['id']}}}:s")
        return JSONResponse({"segments": sorted(int(k) for k in raw)})

    app = Starlette(routes=[Route("/v1/segments", segments)])
    uvicorn.run(app, host="127.0.0.1", port=port, **SERVER_SETTINGS)  # type: ignore[arg-type]


def seed(socket_path: Path, count: int) -> tuple[list[str], dict[str, float]]:
    import redis

    from activation.store import SegmentStore

    store = SegmentStore(redis.Redis(unix_socket_path=str(socket_path)))
    ids = [secrets.token_hex(16) for _ in range(count)]
    store.put((i, sorted(secrets.SystemRandom().sample(SEGMENTS, 3))) for i in ids)
    return ids, store.bytes_per_membership(sample=min(count, 10_000))


def wrk(url: str, script: Path, ids_file: Path, connections: int, duration_s: float) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "-s", str(script),
            url, "--", str(ids_file)]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    found = re.search(r"^BENCH_JSON (\{.*\})$", output, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no result line in wrk output:\n{output}")
    stats = json.loads(found.group(1))
    stats.update(connections=connections, rps=stats["requests"] / (stats["duration_us"] / 1e6),
                 p99_ms=stats["p99_us"] / 1000, p50_ms=stats["p50_us"] / 1000)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--bare-app", nargs=2, metavar=("PORT", "SOCKET"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.bare_app:
        run_bare_app(int(opts.bare_app[0]), opts.bare_app[1])
        return 0
    with tempfile.TemporaryDirectory(prefix="crumb-bench-") as tmp:
        return run(Path(tmp), opts)


def run(work: Path, opts: argparse.Namespace) -> int:
    data_dir = work / "data"
    port = free_port()
    env = {**crumb_env(data_dir, port), "CRUMB_LOOKUP_API_KEY": API_KEY, "CRUMB_BUILD_INTERVAL_S": "0",
           "CRUMB_SYNC_INTERVAL_S": "0", "CRUMB_SEGMENTS_DIR": str(REPO / "audiences" / "examples")}
    crumb = Server("crumb", [sys.executable, "-m", "crumb.cli", "serve"], port, env, work / "crumb.log")
    bare: Server | None = None
    try:
        crumb.wait_ready("/healthz")
        socket_path = data_dir / "redis" / "redis.sock"
        ids, memory = seed(socket_path, opts.ids)
        bare_port = free_port()
        bare = Server("bare", [sys.executable, __file__, "--bare-app", str(bare_port), str(socket_path)], bare_port,
                      crumb_env(data_dir, bare_port), work / "bare.log")
        bare.wait_ready(f"/v1/segments?id={ids[0]}")
        ids_file, script = work / "ids.txt", work / "lookup.lua"
        ids_file.write_text("\n".join(ids) + "\n")
        script.write_text(LUA.replace("__KEY__", API_KEY))
        result = measure(crumb, bare, script, ids_file, opts)
        result["store"] = memory
    finally:
        for server in (bare, crumb):
            if server is not None:
                server.stop()
    report(result)
    return 0 if result["ratio"] >= TARGET_RATIO and result["p99_at_80pct_ms"] <= TARGET_P99_MS else 1


def measure(crumb: Server, bare: Server, script: Path, ids_file: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Pairs in ABBA order (drift on a shared machine falls on both); the ratio is the median of
    the pairs' ratios, each server's figures those of its best run."""
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "crumb": []}
    for pair in range(opts.pairs):
        for server in (bare, crumb) if pair % 2 == 0 else (crumb, bare):
            url = f"{server.url}/v1/segments"
            wrk(url, script, ids_file, opts.connections, 1)  # warm-up
            runs[server.name].append(wrk(url, script, ids_file, opts.connections, opts.duration))
    ratio = statistics.median(c["rps"] / b["rps"] for b, c in zip(runs["bare"], runs["crumb"], strict=True))
    best = {name: max(found, key=lambda r: r["rps"]) for name, found in runs.items()}
    target = 0.8 * best["crumb"]["rps"]
    at80: dict[str, Any] = {}
    for connections in range(1, opts.connections + 1):
        at80 = wrk(f"{crumb.url}/v1/segments", script, ids_file, connections, opts.duration)
        if at80["rps"] >= target:
            break
    return {
        "bare": best["bare"], "crumb": best["crumb"], "ratio": ratio, "pairs": runs,
        "at_80pct": at80, "p99_at_80pct_ms": at80["p99_ms"], "load_fraction": at80["rps"] / best["crumb"]["rps"],
    }


def report(result: dict[str, Any]) -> None:
    for name in ("bare", "crumb"):
        run = result[name]
        print(f"{name:5}  {run['rps']:9,.0f} lookups/s  p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms  "
              f"errors {run['errors']}  (c={run['connections']})")
    print(f"lookup ratio crumb/bare {result['ratio']:.2f}  (target ≥ {TARGET_RATIO})")
    at80 = result["at_80pct"]
    print(f"p99 at {result['load_fraction']:.0%} of crumb's max (c={at80['connections']}, {at80['rps']:,.0f}/s): "
          f"{result['p99_at_80pct_ms']:.2f} ms  (target ≤ {TARGET_P99_MS} ms)")
    store = result["store"]
    print(f"redis: {store['bytes_per_membership']:.1f} B per membership, {store['bytes_per_key']:.1f} B per key "
          f"({store['memberships'] / max(store['keys'], 1):.1f} memberships a key, {store['keys']:,} keys sampled)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "activation.json").write_text(json.dumps({**result, "measured_at": time.time()}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
