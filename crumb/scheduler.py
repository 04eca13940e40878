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
    # Seconds until the first run, when it depends on the last run before this process (a build's
    # is in the warehouse); None: a whole interval.
    first_in: Callable[[], float] | None = None
    runs: int = 0
    failures: int = 0

    def first_delay(self) -> float:
        if self.first_in is None:
            return self.interval_s
        try:
            return min(max(0.0, self.first_in()), self.interval_s)
        except Exception:  # the last run could not be read: a whole interval, as without it
            log.exception("when is %s due? a whole interval from now", self.name)
            return self.interval_s


class Scheduler:
    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def every(self, interval_s: float, name: str, run: Callable[[], object],
              first_in: Callable[[], float] | None = None) -> None:
        if interval_s > 0:
            self.jobs.append(Job(name, interval_s, run, first_in))

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
        delay = job.first_delay()
        while not self._stop.wait(delay):
            delay = job.interval_s
            try:
                job.run()
                job.runs += 1
            except Exception:  # a failed run is logged and retried at the next interval
                job.failures += 1
                log.exception("scheduled %s failed", job.name)
