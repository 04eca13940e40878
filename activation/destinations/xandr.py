"""Xandr Batch Segment Service: one gzip'd Latin-1 file per push, in three steps —
`POST /batch-segment?member_id=N` (job_id, upload_url) → POST the file to upload_url within five
minutes → poll `GET /batch-segment?member_id=N&job_id=J` until `phase` is completed or error.

Line format, fields [SEG_ID, EXPIRATION] with separators `,` `;` `:` — `UID,SEG:EXP;SEG:EXP`.
EXPIRATION is minutes, 0 the 180-day maximum, -1 a removal; at most 1800 segments a line.
BSS reports counters (num_valid, num_invalid_user, ...) but not which lines failed, so a
completed job's items count as delivered and the invalid counts travel in `PushResult.unattributed`.
"""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from activation.destinations.base import (
    Batch,
    Failure,
    Item,
    PermanentError,
    PushResult,
    RetryableError,
    request,
)

MAX_SEGMENTS_PER_LINE = 1800
MAX_EXPIRATION_MINUTES = 180 * 24 * 60
INVALID_COUNTERS = ("num_invalid_format", "num_invalid_user", "num_invalid_segment", "num_unauth_segment",
                    "num_past_expiration", "num_other_error")


class XandrDestination:
    def __init__(
        self, name: str, endpoint: str, member_id: int, token: str, client: httpx.Client,
        max_batch_items: int = 100_000, poll_interval_s: float = 5.0, max_polls: int = 360,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.max_batch_items = max_batch_items
        self._url = endpoint.rstrip("/") + "/batch-segment"
        self._member_id = member_id
        self._headers = {"Authorization": token}
        self._client = client
        self._poll_interval_s = poll_interval_s
        self._max_polls = max_polls
        self._sleep = sleep

    def push(self, batch: Batch) -> PushResult:
        lines, bad = encode_lines(batch.items)
        result = PushResult(failed=bad)
        sendable = [i for i in batch.items if i not in {f.item for f in bad}]
        if not sendable:
            return result
        job = self._create_job()
        self._upload(job["upload_url"], gzip.compress(b"".join(lines)))
        status = self._wait(job["job_id"])
        result.requests = 3 + status.pop("_polls")
        if status.get("phase") == "error":
            message = str(status.get("error_code") or status.get("error_message") or "job failed")
            result.failed.extend(Failure(i, "job_error", message, False) for i in sendable)
            return result
        result.delivered = sendable
        result.unattributed = sum(int(status.get(name) or 0) for name in INVALID_COUNTERS)
        return result

    def _create_job(self) -> dict[str, Any]:
        response = request(self._client, "POST", self._url, params={"member_id": self._member_id},
                           headers=self._headers)
        return _job(response.json())

    def _upload(self, url: str, body: bytes) -> None:
        try:
            request(self._client, "POST", url, content=body, headers={"Content-Type": "application/octet-stream"})
        except PermanentError as exc:  # an expired upload URL: a new job will do
            raise RetryableError(f"upload refused: {exc}", code=exc.code) from None

    def _wait(self, job_id: str) -> dict[str, Any]:
        for polls in range(1, self._max_polls + 1):
            response = request(self._client, "GET", self._url, headers=self._headers,
                               params={"member_id": self._member_id, "job_id": job_id})
            job = _job(response.json())
            if job.get("phase") in ("completed", "error"):
                return {**job, "_polls": polls}
            self._sleep(self._poll_interval_s)
        raise RetryableError(f"job {job_id} did not finish after {self._max_polls} polls", code="job_timeout")


def encode_lines(items: Sequence[Item]) -> tuple[list[bytes], list[Failure]]:
    """File lines for the items (Latin-1, `\\n`-terminated) and the items that cannot be encoded."""
    segments: dict[str, list[str]] = defaultdict(list)
    bad: list[Failure] = []
    for item in items:
        if not _encodable(item):
            bad.append(Failure(item, "invalid_format", "UID and segment ID must be Latin-1 and free of , ; :", False))
            continue
        segments[item.partner_uid].append(f"{item.partner_segment}:{expiration(item)}")
    lines = []
    for uid, segs in segments.items():
        for start in range(0, len(segs), MAX_SEGMENTS_PER_LINE):
            lines.append(f"{uid},{';'.join(segs[start:start + MAX_SEGMENTS_PER_LINE])}\n".encode("latin-1"))
    return lines, bad


def expiration(item: Item) -> int:
    if item.change == "exit":
        return -1
    return 0 if item.ttl_minutes >= MAX_EXPIRATION_MINUTES else max(item.ttl_minutes, 1)


def _encodable(item: Item) -> bool:
    text = item.partner_uid + item.partner_segment
    return bool(item.partner_uid) and item.partner_segment.isdigit() and not any(c in text for c in ",;:\n") \
        and all(ord(c) < 256 for c in text)


def _job(body: Any) -> dict[str, Any]:
    response = body.get("response") if isinstance(body, dict) else None
    if not isinstance(response, dict) or response.get("status") != "OK":
        raise PermanentError(f"unexpected BSS answer: {str(body)[:200]}", code="bad_response")
    job = response.get("batch_segment_upload_job")
    job = job[0] if isinstance(job, list) and job else job
    if not isinstance(job, dict):
        raise PermanentError(f"no batch_segment_upload_job in {str(body)[:200]}", code="bad_response")
    return job
