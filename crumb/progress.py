"""Progress for long CLI work: a person is watching, locally or through the control endpoint."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Reports what a long job is doing. Lines go to a sink: a terminal, or a streamed response."""

    def __init__(self, sink: Callable[[str], None] | None = None, every_s: float = 0.5) -> None:
        self._sink = sink or _stderr_sink(sys.stderr)
        self._every_s = every_s
        self._last = 0.0

    def note(self, message: str) -> None:
        self._sink(message)

    def count(self, what: str, done: int, total: int | None = None) -> None:
        """Rate-limited progress of a counted task; the final call (done == total) always shows."""
        now = time.monotonic()
        if now - self._last < self._every_s and done != total:
            return
        self._last = now
        self._sink(f"{what}: {done:,}" + (f" / {total:,} ({done / total:.0%})" if total else ""))


def _stderr_sink(stream: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return write


SILENT = Progress(sink=lambda _line: None)
