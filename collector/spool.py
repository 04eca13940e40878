"""Append-only disk spool for batches ClickHouse could not take.

Each batch is one file named by its insert token, written whole (temp file, fsync, rename), so a
crash never leaves half a batch. A replay inserts with the same token: if the first insert had
landed after all, ClickHouse drops the copy, and the batch is stored exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = Sequence[Any]  # in collector.schema.EVENT_COLUMNS order; JSON-safe values (tuples as arrays)


@dataclass
class Batch:
    token: str
    rows: list[Row]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):  # a write cut short by a crash: never renamed
            leftover.unlink()

    def write(self, batch: Batch) -> None:
        final = self.directory / f"{batch.token}.json"
        temporary = final.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(batch.rows, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        _fsync_dir(self.directory)

    def pending(self) -> Iterator[Path]:
        """Spooled batches, oldest first."""
        return iter(sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns))

    def read(self, path: Path) -> Batch:
        with open(path, encoding="utf-8") as source:
            return Batch(token=path.stem, rows=json.load(source))

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def depth(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
