"""Which job belongs to which browser session, so Interrupt stops only the presser's job."""
from __future__ import annotations

import threading

from pipelines.jobs import Job


class SessionJobs:
    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Job:
        job = Job()
        with self._lock:
            self._jobs[session] = job
        return job

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]

    def interrupt(self, session: str) -> bool:
        """Cancel this session's running job; True when there was one."""
        job = self._get(session)
        if job is not None:
            job.cancel()
        return job is not None

    def skip(self, session: str) -> bool:
        """End the image this session's job is sampling now and go on with its next batch
        (A1111's Skip); True when there was a job."""
        job = self._get(session)
        if job is not None:
            job.skip()
        return job is not None

    def _get(self, session: str) -> Job | None:
        with self._lock:
            return self._jobs.get(session)
