"""`crumb`: the command line. Library code raises typed errors; only this module prints and exits."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crumb.errors import CrumbError
from crumb.progress import Progress
from crumb.settings import Settings, SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings(host=getattr(args, "host", None), port=getattr(args, "port", None))
        return int(args.run(settings, args) or 0)
    except SettingsError as exc:
        print(f"crumb: bad setting: {exc}", file=sys.stderr)
        return 2
    except CrumbError as exc:
        print(f"crumb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crumb", description="Cookie-based audience data management platform")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the collector and every other surface in one process")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--verbose", action="store_true")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    migrate.set_defaults(run=lambda s, a: _print(_run_command(s, "migrate", {})))

    simulate = commands.add_parser("simulate", help="synthetic traffic: via the HTTP collector or bulk-loaded")
    simulate.add_argument("--cookies", type=int, default=1000)
    simulate.add_argument("--events", type=int, help="target event count (default: from cookies and days)")
    simulate.add_argument("--days", type=int, default=7)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--via", metavar="URL", help="send through this collector instead of bulk-loading")
    simulate.add_argument("--truth", metavar="PATH", help="where to write the ground truth (JSON lines)")
    simulate.add_argument("--concurrency", type=int, default=16)
    simulate.set_defaults(run=_simulate)

    demo = commands.add_parser("demo", help="the whole pipeline on the embedded default, end to end")
    demo.add_argument("--serve", action="store_true", help="keep the server running afterwards")
    demo.add_argument("--cookies", type=int, default=400)
    demo.add_argument("--days", type=int, default=3)
    demo.add_argument("--port", type=int)
    demo.set_defaults(run=_demo)

    audiences = commands.add_parser("audiences", help="segments: build, report, explain, preview")
    audience_commands = audiences.add_subparsers(required=True, metavar="COMMAND")
    build = audience_commands.add_parser("build", help="build every active segment now")
    build.add_argument("--segments", metavar="DIR", help="definitions directory (default: CRUMB_SEGMENTS_DIR)")
    build.add_argument("--full", action="store_true",
                       help="recompute every profile (by default a build the same day recomputes what changed)")
    build.set_defaults(run=lambda s, a: _print(_run_command(s, "build", {"segments_dir": _abs(a.segments),
                                                                         "full": a.full})))
    report = audience_commands.add_parser("report", help="sizes; overlap of chosen segments; one segment's trend")
    report.add_argument("--segments", metavar="DIR")
    report.add_argument("--overlap", type=_segment_ids, metavar="ID,ID,...",
                        help="segments to cross: intersections and Jaccard")
    report.add_argument("--segment", type=int, metavar="ID", help="its daily trend and composition")
    report.add_argument("--days", type=_days("crumb.warehouse", "MAX_DAYS_BACK"), default=30,
                        help="days of the trend")
    report.set_defaults(run=_report)
    explain = audience_commands.add_parser("explain", help="why a cookie is in or out of a segment")
    explain.add_argument("segment", type=int)
    explain.add_argument("cookie_id")
    explain.add_argument("--segments", metavar="DIR")
    explain.add_argument("--json", action="store_true", help="the explanation as JSON")
    explain.set_defaults(run=_explain)
    lookalike = audience_commands.add_parser("lookalike", help="expand a seed segment; prints the evaluation")
    lookalike.add_argument("--seed", type=int, required=True, metavar="SEGMENT")
    audience = lookalike.add_mutually_exclusive_group(required=True)
    audience.add_argument("--reach", type=_share, help="share of the population, e.g. 5%% or 0.05")
    audience.add_argument("--size", type=int, help="number of profiles")
    lookalike.add_argument("--no-exclude-seed", dest="exclude_seed", action="store_false",
                           help="keep the seed's own members in the audience")
    lookalike.add_argument("--min-similarity", type=float, default=0.0)
    lookalike.add_argument("--lookback-days", type=_days("audiences.definitions", "MAX_WINDOW_DAYS"),
                           default=30, help="days of events the features cover")
    lookalike.add_argument("--json", action="store_true")
    lookalike.set_defaults(run=_lookalike)
    preview = audience_commands.add_parser("preview", help="estimate the size of an unsaved definition")
    preview.add_argument("file", help="a YAML file with one segment definition")
    preview.add_argument("--segments", metavar="DIR", help="saved segments it may refer to")
    preview.add_argument("--sample", type=_share, default=0.1, help="share of IDs to evaluate (0 < s <= 1, or 10%%)")
    preview.set_defaults(run=_preview)

    activate = commands.add_parser("activate", help="activation: push segments to destinations")
    activate_commands = activate.add_subparsers(required=True, metavar="COMMAND")
    sync = activate_commands.add_parser("sync", help="push pending deltas to every configured destination")
    sync.set_defaults(run=lambda s, a: _print(_run_command(s, "sync", {})))
    matches = activate_commands.add_parser("matches", help="ID sync match rate per partner")
    matches.add_argument("--days", type=_days("crumb.warehouse", "MAX_DAYS_BACK"), default=30,
                         help="days of cookies seen")
    matches.set_defaults(run=lambda s, a: _print(_run_command(s, "match_rates", {"days": a.days})))

    privacy = commands.add_parser("privacy", help="erasure and export of one ID").add_subparsers(required=True)
    erase = privacy.add_parser("erase", help="erase an ID from everything Crumb holds")
    erase.add_argument("id")
    erase.set_defaults(run=lambda s, a: _print(_run_command(s, "erase", {"ids": [a.id]})))
    export = privacy.add_parser("export", help="everything Crumb holds about an ID, as JSON")
    export.add_argument("id")
    export.set_defaults(run=lambda s, a: _print(_run_command(s, "export", {"id": a.id})))
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from crumb.app import CrumbServer, build_app
    from crumb.runtime import Runtime

    app = build_app(CrumbServer(Runtime(settings)))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler found before it;
    # a graceful stop is a success, so that handler lets the process exit 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info" if args.verbose else "warning",
                access_log=False, http="httptools", loop="uvloop", timeout_graceful_shutdown=30)
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    spec_args: dict[str, Any] = {"cookies": args.cookies, "days": args.days, "seed": args.seed}
    if args.events:
        spec_args["events"] = args.events
    if args.via:
        from crumb.simulator import SimulationSpec, send_via_http

        max_days = max(1, settings.max_event_age_hours // 24)
        if args.days > max_days:  # older client timestamps would be stored as the arrival time
            Progress().note(f"--via keeps to the collector's accepted event age: {max_days} days, not {args.days}")
            spec_args["days"] = max_days
        spec = SimulationSpec(**spec_args)
        result = asyncio.run(send_via_http(args.via.rstrip("/"), spec, Progress(), concurrency=args.concurrency,
                                           truth_path=args.truth, tcf_vendor_id=settings.tcf_vendor_id))
        return _print(result.model_dump(mode="json"))
    if args.truth:
        spec_args["truth"] = args.truth
    return _print(_run_command(settings, "simulate", spec_args))


def _report(settings: Settings, args: argparse.Namespace) -> int:
    return _print(_run_command(settings, "report", {"segments_dir": _abs(args.segments), "overlap": args.overlap,
                                                    "segment": args.segment, "days": args.days}))


def _segment_ids(text: str) -> list[int]:
    try:
        ids = [int(item) for item in text.split(",")]
    except ValueError:
        ids = []
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError(f"segment IDs (1 or more) separated by commas, not {text!r}")
    return ids


def _days(module: str, limit: str) -> Callable[[str], int]:
    """An argument type: a whole number of days from 1 to the limit `module` names (imported when
    an argument is read: each of those modules costs a quarter of a second, and `--help` none)."""
    def days(text: str) -> int:
        maximum = getattr(importlib.import_module(module), limit)
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"a number of days from 1 to {maximum}, not {text!r}")
        return value
    return days


def _explain(settings: Settings, args: argparse.Namespace) -> int:
    result = _run_command(settings, "explain", {"segments_dir": _abs(args.segments), "segment": args.segment,
                                                "cookie_id": args.cookie_id})
    if args.json:
        return _print(result["explanation"])
    print(result["text"])
    return 0


def _share(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"a share between 0 and 100%, not {text!r}")
    return value


def _lookalike(settings: Settings, args: argparse.Namespace) -> int:
    result = _run_command(settings, "lookalike", {
        "seed": args.seed, "reach": args.reach, "size": args.size, "exclude_seed": args.exclude_seed,
        "min_similarity": args.min_similarity, "lookback_days": args.lookback_days})
    if args.json:
        return _print({k: v for k, v in result.items() if k != "text"})
    print(result["text"])
    return 0


def _preview(settings: Settings, args: argparse.Namespace) -> int:
    from audiences.definitions import parse_segment, read_yaml

    definition = read_yaml(Path(args.file))
    # Checked here first: a definition the server would refuse may hold YAML's dates, which are not
    # JSON, and its errors name the file as the user wrote it.
    parse_segment(definition, args.file)
    return _print(_run_command(settings, "preview", {"segments_dir": _abs(args.segments), "definition": definition,
                                                     "source": args.file, "sample": args.sample}))


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from crumb.demo import run_demo

    return run_demo(settings, cookies=args.cookies, days=args.days, keep_serving=args.serve)


def _run_command(settings: Settings, name: str, command_args: dict[str, Any]) -> dict[str, Any]:
    """Run in-process, or through the `crumb serve` that holds the embedded warehouse."""
    from crumb import control
    from crumb.commands import COMMANDS, CommandContext, checked_args
    from crumb.runtime import Runtime
    from crumb.warehouse import embedded_warehouse_busy

    checked = checked_args(name, command_args)  # the server checks them again
    progress = Progress()
    if embedded_warehouse_busy(settings):
        server = control.find_server(settings)
        if server is None:
            raise CrumbError("the embedded warehouse is held by another process that is not `crumb serve`")
        progress.note(f"crumb serve holds the warehouse: running {name} through {server[0]}")
        return control.call(server[0], server[1], name, command_args, progress)
    runtime = Runtime(settings)
    try:
        return COMMANDS[name](CommandContext(runtime), checked, progress)
    finally:
        runtime.close()


def _abs(path: str | None) -> str | None:
    """Paths travel to the server as absolute ones: it may run in another directory."""
    return str(Path(path).resolve()) if path else None


def _print(result: dict[str, Any]) -> int:
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
