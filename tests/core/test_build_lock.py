"""The build lock (`crumb.privacy.build_lock`): one build, erasure or migration at a time, on a
lease its holder renews, so that a holder that stops without releasing it frees it within a lease."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crumb.errors import CrumbError
from crumb.privacy import BUILD_LOCK_KEY, BUILD_LOCK_LEASE_S, build_lock
from tests.conftest import LiveServer

BUSY = CrumbError("busy")


def test_the_holder_renews_its_lease(live_server: LiveServer) -> None:
    redis_client = live_server.crumb.runtime.redis
    with build_lock(redis_client, wait_s=0, busy=BUSY, lease_s=3.0):
        lowest = redis_client.pttl(BUILD_LOCK_KEY)
        for _ in range(100_000):  # until a renewal puts the time to live back up (one is due each second)
            left = redis_client.pttl(BUILD_LOCK_KEY)
            if left > lowest:
                break
            lowest = left
        assert lowest < left <= 3000
        with pytest.raises(CrumbError, match="busy"):
            with build_lock(redis_client, wait_s=0, busy=BUSY):
                pass
    assert redis_client.exists(BUILD_LOCK_KEY) == 0


def test_a_holder_that_dies_frees_it_within_a_lease(live_server: LiveServer) -> None:
    # Held for a build's longest run (6 h) instead, a build killed mid-way kept every build and
    # erasure out for hours.
    runtime = live_server.crumb.runtime
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, redis\n"
         "from crumb.errors import CrumbError\n"
         "from crumb.privacy import build_lock\n"
         "with build_lock(redis.Redis.from_url(sys.argv[1]), wait_s=0, busy=CrumbError('busy')):\n"
         "    print('held', flush=True)\n"
         "    sys.stdin.read()\n",
         runtime._redis_url()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    finally:
        holder.kill()
        holder.wait()
    left = runtime.redis.pttl(BUILD_LOCK_KEY)
    assert 0 < left <= BUILD_LOCK_LEASE_S * 1000
    runtime.redis.delete(BUILD_LOCK_KEY)  # the next tests' builds need not wait for it


def test_a_lease_lost_while_held_does_not_undo_the_work(live_server: LiveServer) -> None:
    # Redis away for over a lease (a failover, a restart without its data): releasing it raised,
    # and a build that had succeeded reached its caller as an error.
    redis_client = live_server.crumb.runtime.redis
    with build_lock(redis_client, wait_s=0, busy=BUSY):
        redis_client.delete(BUILD_LOCK_KEY)
    assert redis_client.exists(BUILD_LOCK_KEY) == 0
