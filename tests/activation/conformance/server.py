"""A Starlette app served by uvicorn in a daemon thread on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackServer:
    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True,
                                        name=f"conformance-{self.port}")

    def start(self) -> LoopbackServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("conformance server failed to start")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@dataclass
class Fault:
    status: int
    retry_after: str | None = None


class Faults:
    """Scripted answers for the next calls, before any validation: `fail_next(2, 429, "1")`."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def fail_next(self, count: int, status: int, retry_after: str | None = None) -> None:
        self._queue.extend(Fault(status, retry_after) for _ in range(count))

    def take(self) -> Response | None:
        if not self._queue:
            return None
        fault = self._queue.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return JSONResponse({"Message": "scripted fault"}, status_code=fault.status, headers=headers)


def off_spec(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"Message": message, "ErrorCode": "IncorrectContent"}, status_code=status)

