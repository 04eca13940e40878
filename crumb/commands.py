"""Commands that need the warehouse. The CLI runs them in-process, or — when `crumb serve`
holds the embedded warehouse — sends them to the server's control endpoint, which runs the same
functions. Each takes JSON-safe arguments and returns a JSON-safe result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crumb.progress import Progress
from crumb.runtime import Runtime


@dataclass
class CommandContext:
    runtime: Runtime
    flush_events: Callable[[], None] = lambda: None  # a server flushes its writer before reads


Command = Callable[[CommandContext, dict[str, Any], Progress], dict[str, Any]]


def migrate(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    applied = ctx.runtime.migrate(progress)
    progress.note(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
    return {"applied": applied}


def simulate(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Bulk-load simulated traffic into the warehouse."""
    from crumb.simulator import SimulationSpec, load_bulk

    ctx.runtime.migrate()
    truth = args.pop("truth", None)
    spec = SimulationSpec(**args)
    result = load_bulk(ctx.runtime.client, spec, progress, truth_path=Path(truth) if truth else None)
    return result.model_dump(mode="json")


def summary(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """What landed in crumb.events: counts, top sites and categories."""
    from collector.report import events_summary

    ctx.flush_events()
    return events_summary(ctx.runtime.client)


def build(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Build every active segment now (one build at a time, across processes)."""
    from audiences.jobs import build_once

    ctx.flush_events()
    ctx.runtime.migrate()
    directory = Path(args["segments_dir"]) if args.get("segments_dir") else None
    result = build_once(ctx.runtime.client, ctx.runtime.redis, ctx.runtime.settings, directory, progress,
                        as_of_ms=args.get("as_of_ms"))
    return result.as_dict()


COMMANDS: dict[str, Command] = {"migrate": migrate, "simulate": simulate, "summary": summary, "build": build}


def erase(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from crumb.privacy import erase as erase_ids

    ctx.flush_events()
    ids = [str(i) for i in args.get("ids", [])]
    tables = erase_ids(ctx.runtime.client, ctx.runtime.redis, ids, reason="request")
    progress.note(f"erased {len(ids)} ID(s) from {', '.join(tables)}")
    return {"erased": ids, "from": tables}


COMMANDS["erase"] = erase
