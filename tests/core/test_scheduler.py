import threading

from audiences.jobs import due_in
from crumb.scheduler import Scheduler


def test_jobs_run_repeatedly_and_survive_failures() -> None:
    ran = threading.Semaphore(0)
    calls = []

    def flaky() -> None:
        calls.append(1)
        ran.release()
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    scheduler = Scheduler()
    scheduler.every(0.01, "flaky", flaky)
    scheduler.every(0, "disabled", lambda: calls.append("never"))
    scheduler.start()
    try:
        assert ran.acquire(timeout=10) and ran.acquire(timeout=10)
    finally:
        scheduler.stop()
    assert [j.name for j in scheduler.jobs] == ["flaky"]
    assert scheduler.jobs[0].failures == 1 and scheduler.jobs[0].runs >= 1
    assert "never" not in calls


def test_a_job_runs_first_when_it_is_due() -> None:
    # A build an interval after the last one ended, not after each start of the server: one
    # restarted more often than its interval never built.
    ran = threading.Event()
    scheduler = Scheduler()
    scheduler.every(3600, "due", ran.set, first_in=lambda: 0.0)
    scheduler.every(3600, "not yet", lambda: None, first_in=lambda: 1800.0)
    scheduler.every(3600, "unknown", lambda: None, first_in=lambda: 1 / 0)
    scheduler.start()
    try:
        assert ran.wait(timeout=10)
    finally:
        scheduler.stop()
    assert [job.first_delay() for job in scheduler.jobs] == [0.0, 1800.0, 3600]


def test_a_build_is_due_an_interval_after_the_last_one_started() -> None:
    assert due_in(None, now_ms=10_000_000, interval_s=3600) == 3600  # none yet: a whole interval
    assert due_in(10_000_000 - 600_000, now_ms=10_000_000, interval_s=3600) == 3000
    assert due_in(10_000_000 - 7_200_000, now_ms=10_000_000, interval_s=3600) == 0.0
