"""An ASGI app served by uvicorn in a daemon thread on a free loopback port: the live Crumb
server, the ad platforms' conformance servers and the fake ID-sync partner all run this way."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackServer:
    def __init__(self, app: Any, port: int | None = None, lifespan: str = "off", name: str = "loopback") -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan=lifespan))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True,
                                        name=f"{name}-{self.port}")

    def start(self) -> LoopbackServer:
        self._thread.start()
        while not self._server.started:  # bounded by the thread: it ends if start-up fails
            if not self._thread.is_alive():
                raise RuntimeError(f"{self._thread.name} failed to start")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(60)
