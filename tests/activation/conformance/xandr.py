"""Xandr Batch Segment Service: job → upload (gzip, Latin-1, `UID,SEG:EXP;...`) → status."""

from __future__ import annotations

import gzip
import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.activation.conformance.server import Faults, LoopbackServer, off_spec

UPLOAD_WINDOW_S = 300
_SEGMENT = re.compile(r"^[0-9]+:-?[0-9]+$")


@dataclass
class Job:
    job_id: str
    created: float
    phase: str = "waiting"  # waiting → validating → completed | error
    polls: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class XandrServer:
    def __init__(self, member_id: int = 456, token: str = "xandr-token", polls_until_done: int = 2) -> None:
        self.member_id = member_id
        self.token = token
        self.polls_until_done = polls_until_done
        self.faults = Faults()
        self.invalid_users: set[str] = set()
        self.jobs: dict[str, Job] = {}
        self.lines: list[str] = []  # every accepted line, as uploaded
        self.state: dict[tuple[str, str], int] = {}  # (UID, SEG) → expiration minutes
        self.app = Starlette(routes=[
            Route("/batch-segment", self._job, methods=["POST", "GET"]),
            Route("/segment-upload/{job_id}", self._upload, methods=["POST"]),
        ])
        self.server = LoopbackServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    async def _job(self, request: Request) -> Response:
        fault = self.faults.take()
        if fault:
            return fault
        if request.headers.get("Authorization") != self.token:
            return JSONResponse({"response": {"error_id": "NOAUTH", "error": "Authentication failed"}},
                                status_code=401)
        if request.query_params.get("member_id") != str(self.member_id):
            return off_spec("member_id is required and must be yours")
        if request.method == "POST":
            if await request.body():
                return off_spec("the job request is an empty POST")
            job = Job(uuid.uuid4().hex, time.time())
            self.jobs[job.job_id] = job
            return _ok({"job_id": job.job_id, "id": len(self.jobs), "member_id": self.member_id,
                        "upload_url": f"{self.url}/segment-upload/{job.job_id}"})
        job = self.jobs.get(request.query_params.get("job_id", ""))
        if job is None:
            return off_spec("unknown job_id", 404)
        job.polls += 1
        if job.phase == "validating" and job.polls >= self.polls_until_done:
            job.phase = "completed"
        return _ok([{"job_id": job.job_id, "phase": job.phase, "member_id": self.member_id, **job.counters}])

    async def _upload(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["job_id"])
        if job is None or job.phase != "waiting":
            return off_spec("unknown or used upload URL", 404)
        if time.time() - job.created > UPLOAD_WINDOW_S:
            return off_spec("upload URL expired", 403)
        try:
            text = gzip.decompress(await request.body()).decode("latin-1")
        except (OSError, EOFError, zlib.error):
            return off_spec("the file must be gzip")
        problem = self._apply(job, text)
        if problem:
            job.phase = "error"
            return off_spec(problem)
        job.phase = "validating"
        return _ok({"job_id": job.job_id})

    def _apply(self, job: Job, text: str) -> str | None:
        if not text.endswith("\n"):
            return "lines end with \\n"
        lines = text[:-1].split("\n")
        counters = {"num_valid": 0, "num_invalid_format": 0, "num_invalid_user": 0}
        for line in lines:
            uid, sep, rest = line.partition(",")
            segments = rest.split(";") if sep else []
            if not uid.isdigit() or not segments or not all(_SEGMENT.match(s) for s in segments):
                return f"line off the [SEG_ID, EXPIRATION] format: {line!r}"
            if len(segments) > 1800:
                return "more than 1800 segments on a line"
            if uid in self.invalid_users:
                counters["num_invalid_user"] += 1
                continue
            counters["num_valid"] += 1
            self.lines.append(line)
            for segment in segments:
                seg_id, expiration = segment.split(":")
                if int(expiration) < -1:
                    return f"EXPIRATION {expiration} < -1"
                if int(expiration) == -1:
                    self.state.pop((uid, seg_id), None)
                else:
                    self.state[(uid, seg_id)] = int(expiration)
        job.counters = counters
        return None


def _ok(job: Any) -> JSONResponse:
    return JSONResponse({"response": {"status": "OK", "batch_segment_upload_job": job}})
