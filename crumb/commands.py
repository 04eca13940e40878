"""Commands that need the warehouse. The CLI runs them in-process, or — when `crumb serve`
holds the embedded warehouse — sends them to the server's control endpoint, which runs the same
functions. Each takes JSON-safe arguments and returns a JSON-safe result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crumb.errors import InvalidArguments
from crumb.progress import Progress
from crumb.runtime import Runtime
from crumb.simulator.model import SimulationSpec
from crumb.warehouse import MAX_DAYS_BACK


@dataclass
class CommandContext:
    runtime: Runtime
    flush_events: Callable[[], None] = lambda: None  # a server flushes its writer before reads


Command = Callable[[CommandContext, dict[str, Any], Progress], dict[str, Any]]


# -- arguments: what each command takes, checked before it runs (`checked_args`) ----------------------

class _Args(BaseModel):
    # Strict: a control request's "47301" or 47301.9 is no segment ID (a string was read a
    # character at a time as IDs 4, 7, 3, 0, 1, and a float was truncated).
    model_config = ConfigDict(extra="forbid", strict=True)


SegmentId = Annotated[int, Field(ge=1, le=2**31 - 1)]
Days = Annotated[int, Field(ge=1, le=MAX_DAYS_BACK)]
MAX_OVERLAP = 50  # segments crossed in one matrix: 2,500 cells (3,000 asked for took 110 s and 72 MB)


class _NoArgs(_Args):
    pass


class _SimulateArgs(SimulationSpec):
    """The simulator's own spec, as it checks it (not strict: its sites are a tuple, JSON's a list)."""

    truth: str | None = None  # a path for the ground truth file


class _BuildArgs(_Args):
    segments_dir: str | None = None
    as_of_ms: int | None = Field(None, ge=0)
    full: bool = False


class _ReportArgs(_Args):
    segments_dir: str | None = None
    overlap: list[SegmentId] | None = Field(None, min_length=1)
    segment: SegmentId | None = None
    days: Days | None = None

    @field_validator("overlap")
    @classmethod
    def _distinct(cls, ids: list[int] | None) -> list[int] | None:
        if ids is None:
            return None
        distinct = list(dict.fromkeys(ids))  # 1,2,1 asks for 1 and 2
        if len(distinct) > MAX_OVERLAP:
            raise ValueError(f"an overlap crosses {MAX_OVERLAP} segments at most, not {len(distinct)}")
        return distinct


class _ExplainArgs(_Args):
    segments_dir: str | None = None
    segment: SegmentId
    cookie_id: str = Field(min_length=1, max_length=256)


class _PreviewArgs(_Args):
    segments_dir: str | None = None
    definition: dict[str, Any]
    source: str = "<definition>"
    sample: float | None = Field(None, gt=0, le=1)


class _LookalikeArgs(_Args):
    seed: SegmentId
    reach: float | None = Field(None, gt=0, le=1)
    size: int | None = Field(None, ge=1)
    exclude_seed: bool = True
    min_similarity: float | None = Field(None, ge=0, le=1)
    lookback_days: int | None = Field(None, ge=1)  # its upper bound is the lookalike's to say


class _MatchRatesArgs(_Args):
    days: Days | None = None


class _EraseArgs(_Args):
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=10_000)


class _ExportArgs(_Args):
    id: str = Field(min_length=1, max_length=256)


ARGS: dict[str, type[BaseModel]] = {
    "migrate": _NoArgs, "simulate": _SimulateArgs, "summary": _NoArgs, "build": _BuildArgs, "sync": _NoArgs,
    "report": _ReportArgs, "explain": _ExplainArgs, "preview": _PreviewArgs, "lookalike": _LookalikeArgs,
    "match_rates": _MatchRatesArgs, "erase": _EraseArgs, "export": _ExportArgs,
}


def checked_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The command's arguments checked against its model, as the command reads them; an
    InvalidArguments naming the argument and the problem when they are not."""
    try:
        return ARGS[name].model_validate(args).model_dump(exclude_none=True)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(arguments)"
        raise InvalidArguments(f"{name}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


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
                        as_of_ms=args.get("as_of_ms"), follow=not args.get("full"))
    from activation.store import SegmentCatalog, SegmentStore

    store = SegmentStore(ctx.runtime.redis, catalog=SegmentCatalog.from_settings(ctx.runtime.settings))
    loaded = store.load_build(ctx.runtime.client, result.build_id)
    progress.note(f"segment store: {loaded}")
    return {**result.as_dict(), "store": loaded}


def sync(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Push pending deltas to every configured destination."""
    from activation.runner import sync_all

    ctx.runtime.migrate()  # the deltas it reads are what migrations may move (audiences_0013)
    return {"runs": sync_all(ctx.runtime, progress)}


def report(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Sizes of every active segment; with `overlap`, their overlap; with `segment`, its trend and composition."""
    from audiences import reports
    from audiences.jobs import load_definitions

    settings = ctx.runtime.settings
    directory = _directory(args, settings)
    definitions = load_definitions(directory, settings)
    overlap = None if args.get("overlap") is None else [int(i) for i in args["overlap"]]
    segment_id = None if args.get("segment") is None else int(args["segment"])
    ctx.runtime.ensure_schema()  # a data dir without a build yet has no tables to read
    client = ctx.runtime.client
    reports.check_defined(client, [*(overlap or []), *([] if segment_id is None else [segment_id])], definitions)
    active = None if directory is None else sorted(s.id for s in definitions.active())  # None: every built one
    result: dict[str, Any] = {"sizes": reports.sizes(client, active, definitions)}
    if overlap is not None:
        result["overlap"] = reports.overlap(client, overlap, segments=definitions)
    if segment_id is not None:
        days = 30 if args.get("days") is None else int(args["days"])
        result["trend"] = reports.trend(client, segment_id, days=days)
        result["composition"] = reports.composition(client, segment_id)
    return result


def explain(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Why a cookie is in or out of a segment, condition by condition."""
    from audiences.explain import explain as explain_membership
    from audiences.explain import render_text
    from audiences.jobs import content_taxonomy, load_definitions

    settings = ctx.runtime.settings
    ctx.flush_events()
    definitions = load_definitions(_directory(args, settings), settings)
    ctx.runtime.ensure_schema()  # a data dir without a build yet has no tables to read
    explanation = explain_membership(ctx.runtime.client, int(args["segment"]), str(args["cookie_id"]),
                                     definitions, content_taxonomy(settings))
    return {"explanation": explanation, "text": render_text(explanation)}


def preview(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The estimated size of an unsaved definition, from a sample, with its interval."""
    from audiences.definitions import parse_segment
    from audiences.jobs import content_taxonomy, load_definitions
    from audiences.preview import preview as preview_size

    settings = ctx.runtime.settings
    definitions = load_definitions(_directory(args, settings), settings)
    segment = parse_segment(args["definition"], str(args.get("source", "<definition>")))
    ctx.runtime.ensure_schema()  # a data dir without a build yet has no tables to read
    sample = 0.1 if args.get("sample") is None else float(args["sample"])
    return preview_size(ctx.runtime.client, segment, definitions, content_taxonomy(settings), sample=sample)


def lookalike(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Expand a seed segment's members of the last build into the profiles most like them."""
    from audiences.jobs import content_taxonomy
    from audiences.lookalike import render_table, run_lookalike

    ctx.runtime.ensure_schema()  # a data dir without a build yet has no tables to read
    result = run_lookalike(
        ctx.runtime.client, int(args["seed"]), reach=args.get("reach"), size=args.get("size"),
        exclude_seed=bool(args.get("exclude_seed", True)), min_similarity=float(args.get("min_similarity") or 0.0),
        lookback_days=30 if args.get("lookback_days") is None else int(args["lookback_days"]),
        taxonomy=content_taxonomy(ctx.runtime.settings),
        progress=progress,
    )
    return {**result, "text": render_table(result)}


def _directory(args: dict[str, Any], settings: Any) -> Path | None:
    return Path(args["segments_dir"]) if args.get("segments_dir") else settings.segments_dir


def match_rates(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Per partner: cookies seen, matched, and the rate."""
    from activation.idsync import match_rates as rates
    from activation.partners import load_partners

    partners = load_partners(ctx.runtime.settings.partners_dir)
    return {"partners": rates(ctx.runtime.client, since_days=30 if args.get("days") is None else int(args["days"]),
                              partners=[name for name, p in partners.items() if p.enabled])}


COMMANDS: dict[str, Command] = {
    "migrate": migrate, "simulate": simulate, "summary": summary, "build": build, "report": report,
    "explain": explain, "preview": preview, "sync": sync, "match_rates": match_rates, "lookalike": lookalike,
}


def erase(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from crumb.privacy import erase as erase_ids

    ctx.flush_events()
    ctx.runtime.migrate()  # erased from the tables as they are now, not from ones a migration still moves
    ids = [str(i) for i in args.get("ids", [])]
    tables = erase_ids(ctx.runtime.client, ctx.runtime.redis, ids, reason="request")
    progress.note(f"erased {len(ids)} ID(s) from {', '.join(tables)}")
    return {"erased": ids, "from": tables}


COMMANDS["erase"] = erase


def export(ctx: CommandContext, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from crumb.privacy import export as export_id

    ctx.flush_events()  # its events still in the collector's buffer are held too
    ctx.runtime.ensure_schema()
    return export_id(ctx.runtime.client, ctx.runtime.redis, str(args["id"]))


COMMANDS["export"] = export
