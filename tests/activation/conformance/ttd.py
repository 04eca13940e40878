"""The Trade Desk Data API, first-party: `POST /data/advertiser` (per PROTOCOLS.md)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.activation.conformance.server import Faults, LoopbackServer, off_spec

MAX_TTL = 180 * 24 * 60


class TTDServer:
    def __init__(self, advertiser_id: str = "adv1", token: str = "ttd-secret", max_items: int = 10_000,
                 max_concurrent: int = 4) -> None:
        self.advertiser_id = advertiser_id
        self.token = token
        self.max_items = max_items
        self.max_concurrent = max_concurrent
        self.faults = Faults()
        self.failing: dict[str, str] = {}  # TDID → ErrorCode answered in FailedLines
        self.accepted: list[tuple[str, str, int]] = []  # (TDID, Name, TtlInMinutes)
        self.state: dict[tuple[str, str], int] = {}  # what the platform now holds
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = Starlette(routes=[Route("/data/advertiser", self._advertiser, methods=["POST"])])
        self.server = LoopbackServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    async def _advertiser(self, request: Request) -> Response:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.in_flight > self.max_concurrent:
                return JSONResponse({"Message": "too many concurrent callers"}, status_code=429,
                                    headers={"Retry-After": "1"})
            return self.faults.take() or await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: Request) -> Response:
        if request.headers.get("TTD-Auth") != self.token:
            return JSONResponse({"Message": "AuthenticationFailed"}, status_code=401)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return off_spec("Content-Type must be application/json", 415)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return off_spec("SerializationFailed")
        problem = self._check(body)
        if problem:
            return off_spec(problem)
        if len(body["Items"]) > self.max_items:
            return JSONResponse({"Message": "Request too large"}, status_code=413)
        return JSONResponse({"FailedLines": self._apply(body["Items"])})

    def _check(self, body: Any) -> str | None:
        if not isinstance(body, dict) or set(body) != {"AdvertiserId", "Items"}:
            return "body must be exactly {AdvertiserId, Items}"
        if body["AdvertiserId"] != self.advertiser_id:
            return "unknown AdvertiserId"
        if not isinstance(body["Items"], list) or not body["Items"]:
            return "Items must be a non-empty list"
        for item in body["Items"]:
            if not isinstance(item, dict) or set(item) != {"TDID", "Data"} or not _is_uuid(item["TDID"]):
                return f"bad item {item!r}"
            if not isinstance(item["Data"], list) or not item["Data"]:
                return f"item {item['TDID']} has no Data"
            for data in item["Data"]:
                if not isinstance(data, dict) or set(data) != {"Name", "TtlInMinutes"}:
                    return f"bad Data {data!r}"
                if not isinstance(data["Name"], str) or not data["Name"]:
                    return "Name must be a non-empty string"
                ttl = data["TtlInMinutes"]
                if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
                    return f"InvalidTtlInMinutes {ttl!r}"
        return None

    def _apply(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        failed = []
        for number, item in enumerate(items, start=1):
            for data in item["Data"]:
                code = self.failing.get(item["TDID"])
                if code:
                    failed.append({"TDID": item["TDID"], "DataName": data["Name"], "ErrorCode": code,
                                   "Message": f"{code} (scripted)", "ItemNumber": str(number)})
                    continue
                self.accepted.append((item["TDID"], data["Name"], data["TtlInMinutes"]))
                key = (item["TDID"], data["Name"])
                if data["TtlInMinutes"] == 0:
                    self.state.pop(key, None)
                else:
                    self.state[key] = data["TtlInMinutes"]
        return failed


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)
