import threading

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
