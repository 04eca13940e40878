"""Append-only disk spool for batches ClickHouse could not take.

Each batch is one file named by its insert token, written whole (temp file, fsync, rename), so a
crash never leaves half a batch. A replay inserts with the same token: if the first insert had
landed after all, ClickHouse drops the copy, and the batch is stored exactly once.

A batch is spooled as its insert payload (`<token>.arrow`). Spools written before payloads
existed hold JSON rows (`<token>.json`): they are still read, and encoded when replayed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from collector.payload import Row, encode_rows, read_payload
from collector.schema import EVENT_COLUMNS

_SUFFIXES = (".arrow", ".json")
_PROPS = EVENT_COLUMNS.index("props")


@dataclass(frozen=True)
class Batch:
    token: str
    payload: bytes  # collector.payload's Arrow stream
    rows: int


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):  # a write cut short by a crash: never renamed
            leftover.unlink()

    def write(self, batch: Batch) -> None:
        final = self.directory / f"{batch.token}.arrow"
        temporary = final.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.write(batch.payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        _fsync_dir(self.directory)

    def pending(self) -> Iterator[Path]:
        """Spooled batches, oldest first."""
        return iter(sorted(self._files(), key=lambda p: p.stat().st_mtime_ns))

    def read(self, path: Path) -> Batch:
        if path.suffix == ".json":
            with open(path, encoding="utf-8") as source:
                rows = [_row_from_json(row) for row in json.load(source)]
            return Batch(token=path.stem, payload=encode_rows(rows), rows=len(rows))
        payload = path.read_bytes()
        return Batch(token=path.stem, payload=payload, rows=read_payload(payload).num_rows)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def depth(self) -> int:
        return sum(1 for _ in self._files())

    def _files(self) -> Iterator[Path]:
        return (path for path in self.directory.iterdir() if path.suffix in _SUFFIXES)


def _row_from_json(row: list[object]) -> Row:
    props = row[_PROPS]
    row[_PROPS] = [tuple(pair) for pair in props] if isinstance(props, list) else props  # JSON made pairs lists
    return row


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
