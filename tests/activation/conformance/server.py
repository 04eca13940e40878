"""A Starlette app served by uvicorn in a daemon thread on a free loopback port."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from starlette.responses import JSONResponse, Response

from tests.loopback import LoopbackServer, free_port

__all__ = ["LoopbackServer", "free_port"]


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

