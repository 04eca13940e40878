"""`crumb demo`: the whole pipeline on the embedded default, end to end, then a summary."""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
import yaml
from rich.console import Console
from rich.table import Table

from activation.idsync import match_rates
from audiences.definitions import SegmentSet
from audiences.jobs import EXAMPLES_DIR, build_once
from audiences.lookalike import render_table
from collector.categories import BUILTIN
from collector.report import events_summary
from crumb.app import CrumbServer, build_app
from crumb.demo_platforms import PARTNER_NAME, Receiver, demo_partner, partner_app
from crumb.progress import Progress
from crumb.runtime import Runtime
from crumb.settings import Settings

console = Console()


def run_demo(settings: Settings, *, cookies: int, days: int, keep_serving: bool) -> int:
    port = settings.port if keep_serving else _free_port()
    demo_dir = settings.data_dir.resolve() / "demo"
    settings = settings.model_copy(update={
        "port": port, "host": "127.0.0.1", "segments_dir": settings.segments_dir or EXAMPLES_DIR,
        "destinations_dir": settings.destinations_dir or demo_dir / "destinations",
    })
    return asyncio.run(_demo(settings, demo_dir, cookies, days, keep_serving))


async def _demo(settings: Settings, demo_dir: Path, cookies: int, days: int, keep_serving: bool) -> int:
    partner_port, receiver_port = _free_port(), _free_port()
    receiver = Receiver(secrets.token_urlsafe(24))
    _write_demo_destination(demo_dir, settings, receiver, receiver_port)
    server = CrumbServer(Runtime(settings))
    server.activation.idsync.configure([demo_partner(partner_port)])
    servers = [_uvicorn(build_app(server), settings.port), _uvicorn(partner_app(), partner_port),
               _uvicorn(receiver.app(), receiver_port)]
    serving = [asyncio.create_task(uv.serve()) for uv in servers]
    while not all(uv.started for uv in servers):
        if any(task.done() for task in serving):
            return 1
        await asyncio.sleep(0.05)  # waiting for the listeners to come up
    url = f"http://{settings.host}:{settings.port}"
    console.print(f"[bold]Crumb demo[/bold] — collector at {url}, data in {settings.data_dir}")
    truth_path = settings.data_dir / "demo-truth.jsonl"
    await _collect(server, settings, url, cookies, days, truth_path)
    await anyio.to_thread.run_sync(_build_segments, server, settings)
    await _activate(server, url, truth_path, receiver)
    if keep_serving:
        console.print(f"serving at {url} (tag: {url}/tag.js, metrics: {url}/metrics); Ctrl-C stops")
    else:
        for uv in servers:
            uv.should_exit = True
    await asyncio.gather(*serving)
    return 0


def _uvicorn(app: Any, port: int) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))


async def _collect(server: CrumbServer, settings: Settings, url: str, cookies: int, days: int, truth: Path) -> None:
    from crumb.simulator import SimulationSpec, send_via_http

    spec = SimulationSpec(cookies=cookies, days=min(days, settings.max_event_age_hours // 24 or 1))
    result = await send_via_http(url, spec, Progress(), truth_path=str(truth), tcf_vendor_id=settings.tcf_vendor_id)
    console.print(f"sent {result.events:,} events from {result.cookies:,} simulated browsers through HTTP")
    await _send_bad_hits(url)
    await anyio.to_thread.run_sync(server.writer.flush)
    summary = await anyio.to_thread.run_sync(events_summary, server.runtime.client)
    _print_summary(summary, dict(server.stats.rejected), server.stats.cookies_replaced)


async def _activate(server: CrumbServer, url: str, truth_path: Path, receiver: Receiver) -> None:
    """ID sync for most simulated browsers through the demo partner, then the deltas to the webhook."""
    from crumb.simulator import read_ground_truth

    browsers = [c.cookie_id for c in read_ground_truth(truth_path).cookies if c.cookie_id and not c.is_bot]
    synced = browsers[: int(len(browsers) * 0.7)]
    async with httpx.AsyncClient(follow_redirects=True) as client:
        for cookie_id in synced:  # the redirect chain a browser follows: us → partner → our callback
            client.cookies = httpx.Cookies({"crumb_id": server.activation.signer.sign(cookie_id)})
            await client.get(f"{url}/sync/{PARTNER_NAME}")
    await anyio.to_thread.run_sync(server.activation.idsync.flush)
    rates = await anyio.to_thread.run_sync(
        lambda: match_rates(server.runtime.client, since_days=7, partners=[PARTNER_NAME]))
    for rate in rates:
        console.print(f"ID sync with {rate['partner']}: {rate['matched']:,} of {rate['seen']:,} cookies matched "
                      f"({rate['rate']:.0%})")
    runs = await anyio.to_thread.run_sync(server.activation.sync)
    table = Table(title="destinations")
    for column in ("destination", "sent", "unmatched", "failed", "retried", "status"):
        table.add_column(column, justify="left" if column in ("destination", "status") else "right")
    for run in runs:
        table.add_row(run["destination"], *(f"{run[k]:,}" for k in ("sent", "unmatched", "failed", "retried")),
                      run["status"])
    console.print(table)
    console.print(f"the webhook receiver took {receiver.batches} signed batches: "
                  + ", ".join(f"{name} +{n:,}" for name, n in receiver.added.most_common()))


def _write_demo_destination(demo_dir: Path, settings: Settings, receiver: Receiver, port: int) -> None:
    """A webhook destination for the demo segments, keyed by the demo partner's IDs."""
    if settings.destinations_dir != demo_dir / "destinations":
        return  # the user configured destinations of their own
    destinations = demo_dir / "destinations"
    destinations.mkdir(parents=True, exist_ok=True)
    secret_file = demo_dir / "webhook.secret"
    secret_file.write_text(receiver.secret)
    secret_file.chmod(0o600)
    (destinations / "webhook.yaml").write_text(yaml.safe_dump({
        "name": "demo-webhook", "type": "webhook", "url": f"http://127.0.0.1:{port}/hook",
        "secret_file": str(secret_file), "ids": "partner", "partner": PARTNER_NAME,
        "segments": {101: "soccer-fans", 102: "sports-enthusiasts", 104: "investors", 105: "recent-buyers"},
    }))


async def _send_bad_hits(url: str) -> None:
    """A few hits of the kinds the collector must refuse, so the rejection table shows them."""
    async with httpx.AsyncClient(base_url=url) as client:
        await client.get("/p.gif", params={"site": "bad site!", "event_id": str(uuid.uuid4())})
        await client.get("/p.gif", params={"site": "demo", "event_id": "not-a-uuid"})
        await client.get("/p.gif", params={"site": "demo", "event_id": str(uuid.uuid4())},
                         headers={"cookie": "crumb_id=0123456789abcdef0123456789abcdef.forgedforgedforg"})
        await client.post("/e", content=b"{not json", headers={"content-type": "text/plain"})
        await client.post("/e", content=b"x" * 70_000, headers={"content-type": "text/plain"})


def _build_segments(server: CrumbServer, settings: Settings) -> None:
    from audiences.definitions import load_segments
    from audiences.reports import overlap, sizes

    directory = settings.segments_dir or EXAMPLES_DIR
    result = build_once(server.runtime.client, server.runtime.redis, settings, directory, Progress())
    for evaluation in result.lookalikes.values():
        console.print(render_table(evaluation))
    stored = server.activation.after_build(result.build_id)
    console.print(f"segment store (Redis) loaded: {stored}")
    console.print(f"built {result.segments} segments ({result.conditions} conditions) from {directory} in "
                  f"{sum(result.timings.values()):.2f}s: {result.members:,} memberships, "
                  f"{result.entered:,} entered, {result.exited:,} exited")
    segments = load_segments(directory)
    table = Table(title="segments")
    for column in ("id", "name", "profiles", "cookie IDs", "first-party IDs"):
        table.add_column(column, justify="right" if column != "name" else "left")
    for row in sizes(server.runtime.client, segments=segments):
        table.add_row(str(row["segment_id"]), row["name"], f"{row['profiles']:,}", f"{row['cookies']:,}",
                      f"{row['fp_ids']:,}")
    console.print(table)
    chosen = _overlap_choice(segments)
    if len(chosen) < 2:
        return
    matrix = overlap(server.runtime.client, chosen, segments=segments)
    grid = Table(title="overlap: shared profiles (Jaccard)")
    grid.add_column("")
    for segment_id in chosen:
        grid.add_column(str(segment_id), justify="right")
    for i, a in enumerate(chosen):
        cells = [f"{matrix['intersection'][i][j]:,} ({matrix['jaccard'][i][j]:.2f})" for j in range(len(chosen))]
        grid.add_row(f"{a} {segments.by_id[a].name}", *cells)
    console.print(grid)


# The shipped examples' overlap worth a look: sports fans, their lookalike's seed, shoppers, travellers.
EXAMPLE_OVERLAP = [101, 102, 106, 111]


def _overlap_choice(segments: SegmentSet) -> list[int]:
    """The examples' four when they are all defined (CRUMB_SEGMENTS_DIR may name one's own), else
    the first four active segments."""
    if all(segment_id in segments.by_id for segment_id in EXAMPLE_OVERLAP):
        return EXAMPLE_OVERLAP
    return sorted(s.id for s in segments.active())[:4]


def _print_summary(summary: dict[str, Any], rejected: dict[str, int], replaced: int) -> None:
    overview = Table(title="What landed in crumb.events", show_header=False)
    for key in ("events", "cookies", "first_party_ids", "sites", "bot_events", "events_without_ids", "first", "last"):
        overview.add_row(key.replace("_", " "), f"{summary[key]:,}" if isinstance(summary[key], int) else summary[key])
    console.print(overview)
    for key, title in (("by_site", "sites"), ("by_type", "event types"), ("by_device", "devices"),
                       ("top_categories", "top categories (IAB Content Taxonomy 3.1)")):
        rows = summary[key]
        if key == "top_categories":  # readable: "533 Sports > Soccer"
            rows = [(f"{cat} {BUILTIN.label(cat)}" if cat in BUILTIN else cat, n) for cat, n in rows]
        console.print(_pairs(title, rows))
    console.print(_pairs("rejected hits by reason", sorted(rejected.items(), key=lambda kv: -kv[1])))
    console.print(f"forged or foreign crumb_id cookies replaced by fresh IDs: {replaced:,}")


def _pairs(title: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title)
    table.add_column("value")
    table.add_column("count", justify="right")
    for key, count in rows:
        table.add_row(str(key), f"{count:,}")
    return table


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
