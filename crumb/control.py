"""The local control endpoint: how `crumb migrate`, `simulate` (and later build, sync, erase)
reach the warehouse while `crumb serve` holds it.

The server announces itself in `<data dir>/serve.json`; the CLI posts the command there with the
admin token and streams the progress lines back. Each line is a JSON object:
`{"progress": "..."}`, then one `{"result": {...}}` or `{"error": {...}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from crumb.commands import COMMANDS, CommandContext, checked_args
from crumb.errors import ControlError, InvalidArguments
from crumb.progress import Progress
from crumb.runtime import read_secret_file
from crumb.settings import Settings

ANNOUNCE_FILE = "serve.json"


def announce(settings: Settings, pid: int) -> None:
    path = settings.data_dir / ANNOUNCE_FILE
    path.write_text(json.dumps({"url": _local_url(settings), "pid": pid}))


def withdraw(settings: Settings) -> None:
    (settings.data_dir / ANNOUNCE_FILE).unlink(missing_ok=True)


def _local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    host = "[::1]" if host == "::" else host
    return f"http://{host}:{settings.port}"


def authorized(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def routes(token: str, ctx: CommandContext) -> list[Route]:
    async def run(request: Request) -> Response:
        if not authorized(request, token):
            return JSONResponse({"error": {"code": "unauthorized", "message": "bearer token required"}}, 401)
        command = COMMANDS.get(request.path_params["command"])
        if command is None:
            return JSONResponse({"error": {"code": "unknown_command", "message": "no such command"}}, 404)
        try:
            args = json.loads(await request.body() or b"{}")
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            return JSONResponse({"error": {"code": "bad_json", "message": "body must be JSON"}}, 400)
        if not isinstance(args, dict):
            return JSONResponse({"error": {"code": "bad_json", "message": "body must be an object"}}, 400)
        try:
            args = checked_args(request.path_params["command"], args)
        except InvalidArguments as error:
            return JSONResponse({"error": {"code": error.code, "message": str(error)}}, 400)
        return StreamingResponse(_stream(command, ctx, args), media_type="application/x-ndjson")

    return [Route("/admin/api/control/{command}", run, methods=["POST"])]


async def _stream(
    command: Callable[..., dict[str, Any]], ctx: CommandContext, args: dict[str, Any]
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def emit(obj: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, (json.dumps(obj, default=str) + "\n").encode())

    def work() -> None:
        try:
            emit({"result": command(ctx, args, Progress(sink=lambda line: emit({"progress": line})))})
        except Exception as exc:  # reported to the caller; the server keeps running
            emit({"error": {"code": getattr(exc, "code", type(exc).__name__), "message": str(exc)}})
        finally:
            loop.call_soon_threadsafe(lines.put_nowait, None)

    task = asyncio.ensure_future(anyio.to_thread.run_sync(work))
    while (line := await lines.get()) is not None:
        yield line
    await task


def find_server(settings: Settings) -> tuple[str, str] | None:
    """(url, token) of the `crumb serve` that announced itself in this data dir, if alive."""
    path = settings.data_dir / ANNOUNCE_FILE
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, PermissionError, ValueError, KeyError):
        return None
    token = settings.admin_token.get_secret_value() or read_secret_file(settings.data_dir, "admin_token") or ""
    return info["url"], token


def call(url: str, token: str, command: str, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Run a command on the server, relaying its progress; returns its result."""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.stream("POST", f"{url}/admin/api/control/{command}", json=args, headers=headers, timeout=None) as reply:
        if reply.status_code != 200:
            reply.read()
            raise ControlError(f"server answered {reply.status_code}: {reply.text}")
        for raw in reply.iter_lines():
            message = json.loads(raw)
            if "progress" in message:
                progress.note(message["progress"])
            elif "result" in message:
                return dict(message["result"])
            elif "error" in message:
                raise ControlError(f"{message['error']['code']}: {message['error']['message']}")
    raise ControlError("the server closed the stream without a result")
