"""Erasure reaches the destinations: the next sync sends each platform a removal, in its own wire
format, for every segment it received the erased ID in — through the runner's ordinary path —
then forgets the ID; nothing re-adds it. Real warehouse, real Redis, the strict local platforms."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from activation.destinations.config import GoogleConfig, TTDConfig, WebhookConfig, XandrConfig
from activation.destinations.google import GoogleDestination
from activation.destinations.ttd import TTDDestination
from activation.destinations.webhook import WebhookDestination
from activation.destinations.xandr import XandrDestination
from activation.runner import Target, sync_all
from crumb.privacy import erase
from crumb.progress import SILENT
from tests.activation.conformance.google import GoogleServer
from tests.activation.conformance.ttd import TTDServer
from tests.activation.conformance.webhook import WebhookServer
from tests.activation.conformance.xandr import XandrServer
from tests.activation.test_runner import World, cookies
from tests.conftest import LiveServer

SEGMENT_NAME = "9001"  # Xandr and Google take numeric segment IDs; TTD and the webhook take any name


class Platforms:
    """One destination per platform on the same segment, each with its own partner IDs."""

    def __init__(self, world: World, http: httpx.Client, ttd: TTDServer, xandr: XandrServer,
                 google: GoogleServer, hook: WebhookServer) -> None:
        self.world, self.http = world, http
        self.ttd, self.xandr, self.google, self.hook = ttd, xandr, google, hook
        self.uids: dict[str, dict[str, str]] = {"ttd": {}, "xandr": {}, "google": {}}
        self.partners = {kind: f"{kind}-{uuid.uuid4().hex[:8]}" for kind in self.uids}

    def match(self, ids: list[str]) -> None:
        for cookie in ids:
            self.uids["ttd"][cookie] = str(uuid.uuid4())
            self.uids["xandr"][cookie] = str(uuid.uuid4().int % 10**18)
            self.uids["google"][cookie] = "CAESE" + uuid.uuid4().hex[:20]
        self.world.client.insert("crumb.id_matches", [
            [self.partners[kind], cookie, uids[cookie], int(time.time() * 1000), time.time_ns()]
            for kind, uids in self.uids.items() for cookie in ids
        ], column_names=["partner", "id", "partner_uid", "matched_at", "version"])

    def targets(self, suffix: str = "") -> list[Target]:
        segments = {self.world.segment: SEGMENT_NAME}
        common: dict[str, Any] = dict(segments=segments, rate_limit_per_s=10_000, max_attempts=3)
        name = self.world.destination + suffix
        ttd = TTDConfig(name=f"{name}-ttd", type="ttd", advertiser_id="adv1", token_env="TTD_AUTH_TOKEN",
                        partner=self.partners["ttd"], **common)
        xandr = XandrConfig(name=f"{name}-xandr", type="xandr", member_id=456, token_env="XANDR_TOKEN",
                            partner=self.partners["xandr"], poll_interval_s=0, **common)
        google = GoogleConfig(name=f"{name}-google", type="google", network_id="crumb-nid",
                              partner=self.partners["google"], **common)
        hook = WebhookConfig(name=f"{name}-hook", type="webhook", url=self.hook.url, secret_env="HOOK_SECRET",
                             **common)
        return [
            Target(ttd, TTDDestination(ttd.name, self.ttd.url, "adv1", "ttd-secret", self.http)),
            Target(xandr, XandrDestination(xandr.name, self.xandr.url, 456, "xandr-token", self.http,
                                           poll_interval_s=0)),
            Target(google, GoogleDestination(google.name, self.google.url, "crumb-nid", self.http)),
            Target(hook, WebhookDestination(hook.name, self.hook.url, "hook-secret", self.http, id_key="cookie_id")),
        ]

    def holders(self, cookie: str) -> dict[str, bool]:
        """Which platforms hold the cookie in the segment now."""
        return {
            "ttd": (self.uids["ttd"][cookie], SEGMENT_NAME) in self.ttd.state,
            "xandr": (self.uids["xandr"][cookie], SEGMENT_NAME) in self.xandr.state,
            "google": (self.uids["google"][cookie], int(SEGMENT_NAME)) in self.google.state,
            "hook": (cookie, SEGMENT_NAME) in self.hook.state,
        }

    def wire_mentions(self, cookie: str) -> int:
        """Every request line any platform accepted that names the cookie (or its partner IDs)."""
        ttd = sum(uid == self.uids["ttd"][cookie] for uid, _, _ in self.ttd.accepted)
        xandr = sum(line.startswith(self.uids["xandr"][cookie] + ",") for line in self.xandr.lines)
        google = sum(op[0] == self.uids["google"][cookie] for op in self.google.accepted)
        hook = sum(item["cookie_id"] == cookie for batch in self.hook.batches for item in batch["items"])
        return ttd + xandr + google + hook


@pytest.fixture
def platforms(world: World, http: httpx.Client, ttd: TTDServer, xandr: XandrServer, google: GoogleServer,
              hook: WebhookServer) -> Platforms:
    return Platforms(world, http, ttd, xandr, google, hook)


@pytest.fixture
def world(warehouse: Any) -> World:
    return World(warehouse)


def sync(live_server: LiveServer, targets: list[Target]) -> list[dict[str, Any]]:
    return sync_all(live_server.crumb.runtime, SILENT, targets, sleep=lambda s: None, rng=lambda: 1.0)


def erase_ids(live_server: LiveServer, ids: list[str]) -> list[str]:
    return erase(live_server.client, live_server.crumb.runtime.redis, ids, reason="test")


def ledger(world: World, sql: str, cookie: str) -> list[tuple[Any, ...]]:
    return list(world.client.query(sql, parameters={"id": cookie, "p": world.destination + "%"}).result_rows)


def test_erasure_sends_each_platform_its_removal_and_nothing_comes_back(
    live_server: LiveServer, world: World, platforms: Platforms,
) -> None:
    erased, kept = cookies("e", 1)[0], cookies("k", 1)[0]
    platforms.match([erased, kept])
    world.build(enters=[erased, kept])
    targets = platforms.targets()
    assert [r["sent"] for r in sync(live_server, targets)] == [2, 2, 2, 2]
    assert platforms.holders(erased) == dict.fromkeys(["ttd", "xandr", "google", "hook"], True)

    assert "crumb.delivered (removals queued for destinations)" in erase_ids(live_server, [erased])
    queued = ledger(world, "SELECT count() FROM crumb.pending_removals FINAL WHERE id = {id:String}", erased)
    assert queued == [(4,)]
    rows = sync(live_server, targets)

    assert [(r["status"], r["sent"], r["failed"], r["error"]) for r in rows] == [("succeeded", 1, 0, "")] * 4
    assert platforms.holders(erased) == dict.fromkeys(["ttd", "xandr", "google", "hook"], False)
    assert platforms.holders(kept) == dict.fromkeys(["ttd", "xandr", "google", "hook"], True)
    # Each platform's own removal form (PROTOCOLS.md).
    assert platforms.ttd.accepted[-1] == (platforms.uids["ttd"][erased], SEGMENT_NAME, 0)
    assert platforms.xandr.lines[-1] == f"{platforms.uids['xandr'][erased]},{SEGMENT_NAME}:-1"
    assert platforms.google.accepted[-1][0::3] == (platforms.uids["google"][erased], True)
    assert platforms.hook.batches[-1]["items"] == [{"cookie_id": erased, "add": [], "remove": [SEGMENT_NAME]}]
    for table in ("crumb.pending_removals", "crumb.delivered"):
        assert ledger(world, f"SELECT count() FROM {table} WHERE id = {{id:String}}", erased) == [(0,)]
    assert ledger(world, "SELECT count() FROM crumb.delivered FINAL WHERE id = {id:String} AND present = 1 "
                         "AND destination LIKE {p:String}", kept) == [(4,)]

    # Nothing re-adds it: not the next runs, not the build that drops its membership, nor a
    # destination whose checkpoint is still before the build that once added it.
    mentions = platforms.wire_mentions(erased)
    world.build(enters=[], exits=[erased])
    late = platforms.targets(suffix="-late")
    assert [r["sent"] for r in sync(live_server, targets + late)] == [0] * 4 + [1] * 4  # `kept` only
    assert platforms.wire_mentions(erased) == mentions
    assert ledger(world, "SELECT count() FROM crumb.delivered WHERE id = {id:String}", erased) == [(0,)]


def test_erasure_removals_are_retried_dead_lettered_and_kept_when_credentials_fail(
    live_server: LiveServer, world: World, platforms: Platforms, ttd: TTDServer,
) -> None:
    ids = cookies("r", 3)
    platforms.match(ids)
    world.build(enters=ids)
    (target, *_) = platforms.targets()
    sync(live_server, [target])
    erase_ids(live_server, ids)

    wrong = Target(target.config, TTDDestination(target.config.name, ttd.url, "adv1", "wrong", platforms.http))
    (row,) = sync(live_server, [wrong])
    assert row["status"] == "failed" and "401" in row["error"]
    pending = "SELECT count() FROM crumb.pending_removals FINAL WHERE destination = {d:String}"
    assert world.client.query(pending, parameters={"d": target.config.name}).result_rows == [(3,)]

    ttd.faults.fail_next(1, 503)
    ttd.failing[platforms.uids["ttd"][ids[0]]] = "UserNotMapped"
    (row,) = sync(live_server, [target])
    assert (row["status"], row["sent"], row["failed"], row["retried"]) == ("partial", 2, 1, 3)
    assert world.client.query(pending, parameters={"d": target.config.name}).result_rows == [(0,)]
    dead = world.client.query(
        "SELECT id, change, build_id, error_code FROM crumb.dead_letters WHERE destination = {d:String}",
        parameters={"d": target.config.name}).result_rows
    assert dead == [(ids[0], "exit", 0, "UserNotMapped")]
