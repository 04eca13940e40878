"""`crumb serve` as a real process: the control endpoint, clean shutdown, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crumb import control
from crumb.progress import SILENT
from crumb.settings import load_settings
from tests.conftest import free_port
from tests.processes import wait_healthy

CRUMB = [sys.executable, "-m", "crumb.cli"]
EXAMPLES = Path(__file__).resolve().parents[2] / "audiences" / "examples"


def crumb_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUMB_")}
    return {**env, "CRUMB_DATA_DIR": str(data_dir), "CRUMB_PORT": str(port), "CRUMB_FLUSH_INTERVAL_S": "0.2"}


def redis_children(data_dir: Path) -> list[int]:
    """PIDs of redis-server processes serving this data dir."""
    socket_path = str((data_dir / "redis" / "redis.sock").resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "redis-server" in cmdline and socket_path in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen([*CRUMB, "serve"], env=crumb_env(tmp_path, port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, tmp_path, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


Served = tuple[str, Path, subprocess.Popen[bytes]]


def test_commands_run_through_the_server_that_holds_the_warehouse(served: Served) -> None:
    url, data_dir, _process = served
    env = crumb_env(data_dir, int(url.rsplit(":", 1)[1]))
    migrate = subprocess.run([*CRUMB, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    assert "running migrate through" in migrate.stderr
    assert json.loads(migrate.stdout) == {"applied": []}  # the server migrated at start: idempotent
    simulate = subprocess.run([*CRUMB, "simulate", "--cookies", "40", "--days", "2"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert simulate.returncode == 0, simulate.stderr
    loaded = json.loads(simulate.stdout)["events"]
    found = control.find_server(load_settings({"CRUMB_DATA_DIR": str(data_dir)}))
    assert found is not None
    summary = control.call(found[0], found[1], "summary", {}, SILENT)
    assert summary["events"] == loaded > 0

    def audiences_build(*flags: str) -> dict:
        done = subprocess.run([*CRUMB, "audiences", "build", "--segments", str(EXAMPLES), *flags], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first, again, full = audiences_build(), audiences_build(), audiences_build("--full")
    assert first["status"] == again["status"] == full["status"] == "succeeded" and first["members"] > 0
    if first["as_of_ms"] // 86_400_000 == again["as_of_ms"] // 86_400_000:  # not across midnight UTC
        assert again["followed"] == first["build_id"] and again["members"] == first["members"]
    assert full["followed"] == 0 and full["members"] == again["members"]


def test_the_control_endpoint_needs_the_token(served: Served) -> None:
    url, _data_dir, _process = served
    assert httpx.post(f"{url}/admin/api/control/migrate").status_code == 401
    assert httpx.post(f"{url}/admin/api/control/migrate", headers={"authorization": "Bearer nope"}).status_code == 401


def test_the_control_endpoint_refuses_bodies_it_cannot_parse(served: Served) -> None:
    _url, data_dir, _process = served
    found = control.find_server(load_settings({"CRUMB_DATA_DIR": str(data_dir)}))
    assert found is not None
    url, token = found
    for body in (b"{not json", b"[" * 5000 + b"]" * 5000):  # the second: deeper than the parser goes
        reply = httpx.post(f"{url}/admin/api/control/summary", content=body,
                           headers={"authorization": f"Bearer {token}"})
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "bad_json")
    # A body of JSON whose arguments are not the command's: a 400 before it runs.
    reply = httpx.post(f"{url}/admin/api/control/report", json={"overlap": "47301"},
                       headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 400
    assert reply.json()["error"] == {"code": "invalid_request",
                                     "message": "report: overlap: Input should be a valid list"}


def test_sigterm_flushes_every_accepted_event_and_stops_redis(served: Served) -> None:
    url, data_dir, process = served
    assert redis_children(data_dir), "the embedded redis-server should be running"
    sent: list[dict[str, str]] = []
    with httpx.Client(base_url=url) as client:
        for _ in range(50):
            events = [{"event_id": str(uuid.uuid4()), "type": "pageview"} for _ in range(20)]
            assert client.post("/e", json={"site": "sigterm", "events": events}).status_code == 204
            sent += events
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert redis_children(data_dir) == []
    assert not (data_dir / "serve.json").exists()
    # Start again and count what the first process stored.
    port = free_port()
    again = subprocess.Popen([*CRUMB, "serve"], env=crumb_env(data_dir, port))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", again)
        found = control.find_server(load_settings({"CRUMB_DATA_DIR": str(data_dir)}))
        assert found is not None
        assert control.call(found[0], found[1], "summary", {}, SILENT)["events"] == len(sent)
        # A retry that reaches the restarted server is still recognised and dropped.
        retry = httpx.post(f"http://127.0.0.1:{port}/e", json={"site": "sigterm", "events": sent[:20]})
        assert retry.status_code == 204
        assert control.call(found[0], found[1], "summary", {}, SILENT)["events"] == len(sent)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)


def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    env = {**crumb_env(tmp_path, 1), "CRUMB_PORT": "eighty"}
    result = subprocess.run([*CRUMB, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "CRUMB_PORT" in result.stderr
