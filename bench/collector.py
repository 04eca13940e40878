"""Collector throughput: `GET /p.gif` of a real `crumb serve` against a bare Starlette app.

Both servers run with the same settings (uvicorn, httptools, uvloop, one worker, access log off,
log level warning) and get the same wrk load: a Lua script that makes every request a distinct,
realistic pixel hit (unique UUID v4 event_id, site, type, percent-encoded URL, category, a desktop
Chrome user agent; half first visits without a crumb_id, half returning with a signed one). The
bare app ignores the query and answers the same 43-byte GIF.

Runs alternate bare/crumb in ABBA order and the result is the median of the per-pair ratios
crumb/bare, measured in one run: absolute numbers depend on the machine, the ratio much less.
Afterwards crumb is stopped with SIGTERM (it flushes everything and exits 0), restarted on the
same data dir, and asked through its control endpoint how many events landed: accepted, stored
and lost (= accepted - stored, which must be 0).

    python bench/collector.py [--duration 10] [--connections 32] [--pairs 2] [--quick] [--profile]

Numbers go to the terminal and to bench/results/collector.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
TARGET_RATIO = 0.6
NOISY_CORES = 0.25  # CPU used by other processes during the runs, past which the machine was not quiet

# The smallest transparent 1x1 GIF: 43 bytes (the same bytes collector.endpoints.GIF serves).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
SERVER_SETTINGS = dict(http="httptools", loop="uvloop", access_log=False, log_level="warning")

# One wrk script for both servers. Arguments after `--`: a seed, then comma-separated signed
# crumb_id values. Each thread seeds its own generator (seed + thread number), so event IDs are
# unique across threads and across wrk runs (every run gets a fresh seed).
LUA_SCRIPT = r"""
local counter = 0
local cookies = {}
local threads = {}
local tid = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  local seed = tonumber(args[1]) or os.time()
  math.randomseed(seed + 7919 * (tid or 0))
  for i = 1, 20 do math.random() end
  for value in string.gmatch(args[2] or "", "[^,]+") do table.insert(cookies, value) end
end

local r = math.random
local function uuid4()
  return string.format("%04x%04x-%04x-4%03x-%x%03x-%04x%04x%04x",
    r(0, 65535), r(0, 65535), r(0, 65535), r(0, 4095), r(8, 11), r(0, 4095),
    r(0, 65535), r(0, 65535), r(0, 65535))
end

local UA = "__UA__"

function request()
  counter = counter + 1
  local n = r(1, 20000)
  local path = "/p.gif?site=bench&event_id=" .. uuid4() .. "&type=pageview" ..
    "&url=https%3A%2F%2Fshop.example.com%2Fp%2F" .. n ..
    "&ref=https%3A%2F%2Fwww.google.com%2F&cat=483"
  local ga = "_ga=GA1.1." .. r(100000000, 999999999) .. ".1763800000"
  local cookie = ga
  if #cookies > 0 and counter % 2 == 0 then
    cookie = "crumb_id=" .. cookies[(counter / 2) % #cookies + 1] .. "; " .. ga
  end
  return wrk.format("GET", path, {
    ["User-Agent"] = UA,
    ["Accept"] = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    ["Accept-Language"] = "en-US,en;q=0.9",
    ["Accept-Encoding"] = "gzip, deflate, br",
    ["Referer"] = "https://shop.example.com/p/" .. n,
    ["Sec-Fetch-Dest"] = "image",
    ["Sec-Fetch-Mode"] = "no-cors",
    ["Sec-Fetch-Site"] = "cross-site",
    ["Cookie"] = cookie,
  })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "connect_errors": %.0f, ' ..
    '"read_errors": %.0f, "write_errors": %.0f, "status_errors": %.0f, "timeouts": %.0f, ' ..
    '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "mean_us": %.1f, "max_us": %.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
""".replace("__UA__", CHROME_UA)


# -- the bare app ----------------------------------------------------------------------------


def run_bare_app(port: int) -> None:
    """The baseline: Starlette, one route, the GIF. Same uvicorn settings as `crumb serve`."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def pixel(_request: Request) -> Response:
        return Response(GIF, media_type="image/gif", headers={"cache-control": "no-store"})

    app = Starlette(routes=[Route("/p.gif", pixel)])
    uvicorn.run(app, host="127.0.0.1", port=port, **SERVER_SETTINGS)  # type: ignore[arg-type]


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess in its own session, so a forced stop reaches all it started."""

    def __init__(self, name: str, args: list[str], port: int, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, path: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) so far of the server's main thread (the event loop) and of
        the whole server: all its threads (the writer's and the warehouse's included) and its
        child processes (crumb's encoder, the embedded Redis), which would otherwise pass for
        other processes' noise."""
        from tests.processes import child_pids  # the repo is on sys.path once main() runs

        children = sum(_cpu(f"/proc/{child}/stat", missing=0.0) for child in child_pids(self.pid))
        total = _cpu(f"/proc/{self.pid}/stat") + children
        return _cpu(f"/proc/{self.pid}/task/{self.pid}/stat"), total

    def stop(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM and wait (crumb flushes on the way out); SIGKILL the group past the timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _cpu(stat_path: str, missing: float = float("nan")) -> float:
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return missing
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def crumb_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUMB_")}
    env.update(CRUMB_DATA_DIR=str(data_dir), CRUMB_PORT=str(port))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def start_crumb(data_dir: Path, work: Path, label: str) -> Server:
    port = free_port()
    return Server(label, [sys.executable, "-m", "crumb.cli", "serve"], port, crumb_env(data_dir, port),
                  work / f"{label}.log")


def start_bare(work: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUMB_")}
    return Server("bare", [sys.executable, str(Path(__file__).resolve()), "--bare-app", str(port)], port, env,
                  work / "bare.log")


# -- load ------------------------------------------------------------------------------------


@dataclass
class Run:
    server: str
    pair: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu_us_per_req: float  # the server process, all threads
    loop_cpu_us_per_req: float  # its main thread: the event loop that answers requests
    wrk_cores: float  # CPU wrk used, in cores
    other_cores: float  # CPU everything else on the machine used meanwhile: noise, ideally ~0
    wrk_output: str = field(repr=False, default="")


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_wrk(server: Server, script: Path, cookies: list[str], duration_s: float, connections: int,
            threads: int) -> tuple[dict[str, Any], str, dict[str, float]]:
    seed = secrets.randbelow(2**31)
    args = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "--timeout", "10s",
        "-s", str(script), f"{server.url}/p.gif", "--", str(seed), ",".join(cookies),
    ]
    loop_before, total_before = server.cpu_seconds()
    busy_before, started = _machine_busy_s(), time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        wrk = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            _, status, usage = os.wait4(wrk.pid, 0)
        finally:
            if wrk.poll() is None:
                wrk.kill()
        wrk.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read()
    elapsed = time.monotonic() - started
    loop_after, total_after = server.cpu_seconds()
    wrk_cpu = usage.ru_utime + usage.ru_stime
    server_cpu = total_after - total_before
    cpu = {
        "loop": loop_after - loop_before, "total": server_cpu, "wrk_cores": wrk_cpu / elapsed,
        "other_cores": max(0.0, _machine_busy_s() - busy_before - server_cpu - wrk_cpu) / elapsed,
    }
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {output}")
    match = re.search(r"^BENCH_JSON (\{.*\})$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no result line in wrk output:\n{output}")
    return json.loads(match.group(1)), output, cpu


def measure(server: Server, pair: int, script: Path, cookies: list[str], opts: argparse.Namespace) -> Run:
    run_wrk(server, script, cookies, opts.warmup, opts.connections, opts.threads)
    stats, output, cpu = run_wrk(server, script, cookies, opts.duration, opts.connections, opts.threads)
    requests = int(stats["requests"])
    duration_s = stats["duration_us"] / 1e6
    errors = {k: int(stats[k]) for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")}
    per_request = (lambda seconds: round(seconds * 1e6 / requests, 1)) if requests else (lambda _s: float("nan"))
    return Run(
        server=server.name, pair=pair, requests=requests, duration_s=round(duration_s, 3),
        rps=round(requests / duration_s, 1), p50_ms=stats["p50_us"] / 1000, p90_ms=stats["p90_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000, mean_ms=round(stats["mean_us"] / 1000, 3), max_ms=stats["max_us"] / 1000,
        errors=errors, cpu_us_per_req=per_request(cpu["total"]), loop_cpu_us_per_req=per_request(cpu["loop"]),
        wrk_cores=round(cpu["wrk_cores"], 2), other_cores=round(cpu["other_cores"], 2), wrk_output=output,
    )


def pixel_query() -> str:
    return (f"site=bench&event_id={uuid.uuid4()}&type=pageview"
            "&url=https%3A%2F%2Fshop.example.com%2Fp%2F1&cat=483")


def issued_cookies(crumb: Server, count: int) -> list[str]:
    """Signed crumb_id values the collector issued to first visits (the returning half of the load)."""
    values = []
    for _ in range(count):
        request = urllib.request.Request(f"{crumb.url}/p.gif?{pixel_query()}", headers={"User-Agent": CHROME_UA})
        with urllib.request.urlopen(request, timeout=10) as reply:
            for header in reply.headers.get_all("set-cookie") or []:
                name, _, rest = header.partition("=")
                if name.strip() == "crumb_id":
                    values.append(rest.split(";", 1)[0])
    if len(values) != count:
        raise RuntimeError(f"crumb issued {len(values)} crumb_id cookies for {count} first visits")
    return values


def wait_drained(crumb: Server, timeout_s: float = 60.0) -> None:
    """Until crumb's writer has emptied its buffer, so its flush work does not run into the next load."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{crumb.url}/healthz", timeout=10) as reply:
            if json.loads(reply.read()).get("buffer_depth", 0) == 0:
                break
        time.sleep(0.2)
    time.sleep(0.5)


# -- events: accepted vs stored ----------------------------------------------------------------


def scrape_metrics(crumb: Server) -> dict[str, Any]:
    with urllib.request.urlopen(f"{crumb.url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, Any] = {"rejected": {}}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        reason = re.fullmatch(r'crumb_events_rejected_total\{reason="([^"]*)"\}', name)
        if reason:
            values["rejected"][reason.group(1)] = int(float(value))
        elif name.startswith("crumb_") and "{" not in name:
            values[name] = float(value)
    return values


def stored_events(data_dir: Path, crumb: Server) -> dict[str, Any]:
    """crumb.events' summary, through the control endpoint of the server holding the warehouse."""
    from crumb import control
    from crumb.progress import Progress
    from crumb.settings import load_settings

    settings = load_settings({"CRUMB_DATA_DIR": str(data_dir), "CRUMB_PORT": str(crumb.port)})
    found = control.find_server(settings)
    if found is None:
        raise RuntimeError("the restarted crumb serve did not announce itself")
    url, token = found
    return control.call(url, token, "summary", {}, Progress(sink=lambda _line: None))


# -- profiling -------------------------------------------------------------------------------


def profile_crumb(crumb: Server, script: Path, cookies: list[str], opts: argparse.Namespace) -> dict[str, Any]:
    """py-spy attached to crumb for one load run: where each thread's time goes."""
    py_spy = shutil.which("py-spy")
    if not py_spy:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    folded = RESULTS / "crumb-pixel.folded"
    seconds = max(2, round(opts.duration))
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(crumb.pid), "--duration", str(seconds), "--rate", "200", "--threads",
         "--format", "raw", "--output", str(folded)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.0)  # py-spy attaches
    run_wrk(crumb, script, cookies, seconds, opts.connections, opts.threads)
    _, err = spy.communicate(timeout=120)
    if spy.returncode != 0 or not folded.exists():
        return {"error": f"py-spy failed: {err.strip()[-500:]}"}
    return {"folded": str(folded), **top_frames(folded)}


_WAITING = ("Condition.wait ", "Event.wait ", "Thread.join ", "Queue.get ", "select ", "Selector.select ")


def top_frames(folded: Path, limit: int = 20) -> dict[str, Any]:
    """From py-spy's folded stacks: samples by thread, and for the event-loop thread the functions
    with the most own time and the most inclusive time (line numbers folded into functions)."""
    by_thread: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    loop_total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        name = thread.partition(": ")[2] or thread
        if not frames or frames[-1].startswith(_WAITING):
            continue  # a thread blocked on a lock or queue: py-spy does not always see it as idle
        by_thread[name] = by_thread.get(name, 0) + count
        if name != "MainThread":
            continue
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        loop_total += count
        own[functions[-1]] = own.get(functions[-1], 0) + count
        for function in set(functions):
            inclusive[function] = inclusive.get(function, 0) + count
    if not loop_total:
        return {}
    # Frames on every stack (runpy, the CLI, uvicorn.run, the event loop's run) say nothing.
    inclusive = {k: v for k, v in inclusive.items() if v < 0.995 * loop_total}

    def share(table: dict[str, int], total: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:limit]]

    all_samples = sum(by_thread.values())
    return {
        "samples_by_thread_pct": share(by_thread, all_samples), "loop_samples": loop_total,
        "loop_own_pct": share(own, loop_total), "loop_inclusive_pct": share(inclusive, loop_total),
    }


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the servers get the rest)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured run")
    parser.add_argument("--pairs", type=int, default=2, help="bare/crumb pairs, in ABBA order (default 2)")
    parser.add_argument("--quick", action="store_true", help="3 s runs, one pair, 1 s warm-up: a smoke check")
    parser.add_argument("--profile", action="store_true", help="also run crumb under py-spy for one load run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and server logs")
    parser.add_argument("--bare-app", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.duration, opts.warmup, opts.pairs = 3.0, 1.0, 1
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.bare_app:
        run_bare_app(opts.bare_app)
        return 0
    if not shutil.which("wrk"):
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the servers

    work = Path(tempfile.mkdtemp(prefix="crumb-bench-"))
    data_dir = work / "data"
    script = work / "pixel.lua"
    script.write_text(LUA_SCRIPT)
    servers: list[Server] = []
    ok = False
    try:
        bare = start_bare(work)
        servers.append(bare)
        crumb = start_crumb(data_dir, work, "crumb")
        servers.append(crumb)
        bare.wait_ready("/p.gif")
        crumb.wait_ready("/healthz")
        cookies = issued_cookies(crumb, 8)
        print(f"bench: wrk -t{opts.threads} -c{opts.connections} -d{opts.duration:g}s (+{opts.warmup:g}s warm-up), "
              f"{opts.pairs} pair(s) in ABBA order, {os.cpu_count()} CPUs", flush=True)

        runs: list[Run] = []
        for pair in range(1, opts.pairs + 1):
            order = [bare, crumb] if pair % 2 else [crumb, bare]
            for server in order:
                wait_drained(crumb)
                run = measure(server, pair, script, cookies, opts)
                runs.append(run)
                print(f"  pair {pair} {run.server:5s} {run.rps:9.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                      f"p99 {run.p99_ms:6.2f} ms", flush=True)

        profile = None
        if opts.profile:
            wait_drained(crumb)
            print("bench: profiling crumb under py-spy ...", flush=True)
            profile = profile_crumb(crumb, script, cookies, opts)

        wait_drained(crumb)
        metrics = scrape_metrics(crumb)
        accepted = int(metrics.get("crumb_events_accepted_total", 0))
        print("bench: stopping crumb (SIGTERM: it flushes on the way out) ...", flush=True)
        exit_code = crumb.stop()
        restarted = start_crumb(data_dir, work, "crumb-restarted")
        servers.append(restarted)
        restarted.wait_ready("/healthz")
        summary = stored_events(data_dir, restarted)
        stored = int(summary["events"])
        restarted_exit = restarted.stop()

        result = report(runs, opts, {
            "accepted": accepted, "stored": stored, "lost": accepted - stored,
            "rejected": metrics["rejected"], "duplicates": int(metrics.get("crumb_events_duplicates_total", 0)),
            "spooled": int(metrics.get("crumb_events_spooled_total", 0)),
            "insert_failures": int(metrics.get("crumb_insert_failures_total", 0)),
            "cookies_in_store": summary.get("cookies"),
            "crumb_exit_code": exit_code, "restarted_exit_code": restarted_exit,
        }, profile)
        ok = result["events"]["lost"] == 0 and exit_code == 0 and not result["events"]["rejected"]
        return 0 if ok else 1
    finally:
        for server in reversed(servers):
            if server.process.poll() is None:
                server.stop(timeout_s=60)
        if opts.keep or not ok:
            print(f"bench: data dir and server logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(runs: list[Run], opts: argparse.Namespace, events: dict[str, Any], profile: dict[str, Any] | None
           ) -> dict[str, Any]:
    ratios, cpu_ratios = [], []
    for pair in sorted({r.pair for r in runs}):
        by_server = {r.server: r for r in runs if r.pair == pair}
        ratios.append(round(by_server["crumb"].rps / by_server["bare"].rps, 3))
        cpu_ratios.append(round(by_server["bare"].cpu_us_per_req / by_server["crumb"].cpu_us_per_req, 3))
    ratio = round(statistics.median(ratios), 3)
    cpu_ratio = round(statistics.median(cpu_ratios), 3)
    noise = statistics.median(r.other_cores for r in runs)
    columns = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "loop_cpu_us_per_req", "wrk_cores", "other_cores")
    median = {s: {c: round(statistics.median(getattr(r, c) for r in runs if r.server == s), 2) for c in columns}
              for s in ("bare", "crumb")}

    print()
    print(f"{'pair':>4}  {'server':6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'CPU µs/req':>10} {'loop µs/req':>11} {'wrk':>6} {'others':>6}")
    rows = [(str(r.pair), r.server, r.rps, r.p50_ms, r.p99_ms, str(sum(r.errors.values())), r.cpu_us_per_req,
             r.loop_cpu_us_per_req, r.wrk_cores, r.other_cores) for r in runs]
    rows += [("med", s, m["rps"], m["p50_ms"], m["p99_ms"], "", m["cpu_us_per_req"], m["loop_cpu_us_per_req"],
              m["wrk_cores"], m["other_cores"]) for s, m in median.items()]
    for pair, server, rps, p50, p99, errors, cpu, loop, wrk, other in rows:
        print(f"{pair:>4}  {server:6} {rps:8.0f} {p50:7.2f} {p99:7.2f} {errors:>6} {cpu:10.1f} {loop:11.1f} "
              f"{wrk:5.2f}c {other:5.2f}c")
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"\nthroughput crumb/bare: {ratio:.3f}  (per pair: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"target >= {TARGET_RATIO}: {verdict})")
    print(f"CPU per request bare/crumb: {cpu_ratio:.3f}  (per pair: {', '.join(f'{x:.3f}' for x in cpu_ratios)}; "
          "what the throughput ratio tends to when the server is CPU-bound on a quiet machine)")
    if noise > NOISY_CORES:
        print(f"WARNING: other processes used {noise:.2f} cores during the runs (median): the throughput ratio is "
              "noisy; trust the CPU ratio more, or rerun on a quiet machine")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    print(f"latency p50 / p99: bare {median['bare']['p50_ms']:.2f} / {median['bare']['p99_ms']:.2f} ms, "
          f"crumb {median['crumb']['p50_ms']:.2f} / {median['crumb']['p99_ms']:.2f} ms")
    lost_note = "ok" if events["lost"] == 0 else "EVENTS LOST"
    rejected = sum(events["rejected"].values())
    print(f"events: accepted {events['accepted']}, stored {events['stored']}, lost {events['lost']} ({lost_note}); "
          f"rejected {rejected}{' ' + json.dumps(events['rejected']) if rejected else ''}, "
          f"duplicates {events['duplicates']}, spooled {events['spooled']}; "
          f"crumb exit code on SIGTERM: {events['crumb_exit_code']}")
    print("(CPU µs/req: the server process, all its threads and child processes; loop µs/req: its event-loop "
          "thread alone; wrk and "
          "others: cores used by wrk and by everything else on the machine during the run: others well above 0 "
          "means the numbers are noisy)")
    if profile:
        print_profile(profile)

    result = {
        "benchmark": "collector GET /p.gif: crumb serve vs bare Starlette",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"duration_s": opts.duration, "warmup_s": opts.warmup, "connections": opts.connections,
                     "wrk_threads": opts.threads, "pairs": opts.pairs, "cpus": os.cpu_count(), **SERVER_SETTINGS},
        "ratio": ratio, "ratios": ratios, "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
        "cpu_ratio": cpu_ratio, "cpu_ratios": cpu_ratios, "other_cores_median": round(noise, 2),
        "noisy": noise > NOISY_CORES, "load_average": [round(x, 2) for x in os.getloadavg()],
        "median": median,
        "runs": [{k: v for k, v in asdict(r).items() if k != "wrk_output"} for r in runs],
        "events": events,
        "profile": profile,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "collector.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'collector.json'}")
    return result


def print_profile(profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"\nprofile: {profile['error']}")
        return
    threads = ", ".join(f"{name} {pct}%" for name, pct in profile.get("samples_by_thread_pct", []))
    print(f"\nprofile (py-spy, folded stacks in {profile.get('folded')})\n  samples by thread: {threads}")
    print(f"  event-loop thread, own time ({profile.get('loop_samples', 0)} samples):")
    for frame, pct in profile.get("loop_own_pct", [])[:15]:
        print(f"    {pct:5.1f}%  {frame}")
    print("  event-loop thread, inclusive time:")
    for frame, pct in profile.get("loop_inclusive_pct", [])[:20]:
        print(f"    {pct:5.1f}%  {frame}")


if __name__ == "__main__":
    sys.exit(main())
