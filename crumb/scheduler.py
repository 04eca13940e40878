"""The scheduler inside `crumb serve`: periodic jobs (segment builds; later, destination syncs).

Each job runs in its own thread, one run at a time; the job itself takes whatever cross-process
lock it needs, so several replicas can run the scheduler safely.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("crumb.scheduler")


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]
    runs: int = 0
    failures: int = 0


class Scheduler:
    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def every(self, interval_s: float, name: str, run: Callable[[], object]) -> None:
        if interval_s > 0:
            self.jobs.append(Job(name, interval_s, run))

    def start(self) -> None:
        for job in self.jobs:
            thread = threading.Thread(target=self._loop, args=(job,), name=f"crumb-{job.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _loop(self, job: Job) -> None:
        while not self._stop.wait(job.interval_s):
            try:
                job.run()
                job.runs += 1
            except Exception:  # a failed run is logged and retried at the next interval
                job.failures += 1
                log.exception("scheduled %s failed", job.name)
