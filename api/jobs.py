"""REST API jobs: each request runs through the shared backend line (serving/fair.py) on a
thread of its own, so a waiting request holds no worker thread that Gradio needs; progress,
interrupt and skip act on the jobs of the caller who asks (the login name, or everyone
without a login, as in A1111) — never on a browser user's job."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from pipelines.core.jobs import GenerationResult, Job, StepInfo

from .errors import ApiError


@dataclass
class ApiJob:
    caller: str
    task: str
    job: Job = field(default_factory=Job)
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None  # admitted to the backend
    step: StepInfo | None = None
    preview: object = None  # the latest live preview (PIL image)

    @property
    def running(self) -> bool:
        return self.started_at is not None


class ApiJobs:
    def __init__(self, backend, max_jobs: int):
        self.backend = backend
        self.max_jobs = max_jobs
        self._jobs: list[ApiJob] = []
        self._lock = threading.Lock()

    async def run(self, request, caller: str, prepare=None, disconnected=None) -> GenerationResult:
        """The request's result, waiting (without blocking the event loop) for its turn. When
        the HTTP client goes away the job is cancelled."""
        record = ApiJob(caller, request.task)
        with self._lock:
            if len(self._jobs) >= self.max_jobs:
                raise ApiError(503, "The queue is full: try again in a moment.")
            self._jobs.append(record)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(method, value):
            if not done.done():
                getattr(done, method)(value)

        def admitted():
            record.started_at = time.time()

        def work():
            try:  # only a model switch (prepare) takes the line's exclusive turn
                for event in self.backend.stream(request, record.job, prepare=prepare, on_admit=admitted):
                    if isinstance(event, StepInfo):
                        record.step = event
                        record.preview = event.preview if event.preview is not None else record.preview
                    else:
                        loop.call_soon_threadsafe(settle, "set_result", event)
                        return
                raise RuntimeError("the backend ended without a result")
            except BaseException as error:  # handed to the awaiting handler
                loop.call_soon_threadsafe(settle, "set_exception", error)

        threading.Thread(target=work, name="api-generate", daemon=True).start()
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(done), timeout=1.0)
                except asyncio.TimeoutError:
                    if disconnected is not None and await disconnected():
                        record.job.cancel()
        finally:
            if not done.done():
                record.job.cancel()
            with self._lock:
                self._jobs.remove(record)

    def _mine(self, caller: str) -> list[ApiJob]:
        with self._lock:
            return [job for job in self._jobs if job.caller == caller]

    @staticmethod
    def _current(mine: list[ApiJob]) -> list[ApiJob]:
        """Of a caller's jobs, those being sampled now (several when they share a batch). A job
        let in may still wait in the device's line behind others (a batch's worth are let in at
        once): it is current only once it reports a step, or when none of the caller's has yet
        (the first let in is about to start)."""
        admitted = [job for job in mine if job.running]
        return [job for job in admitted if job.step is not None] or admitted[:1]

    def interrupt(self, caller: str) -> int:
        """Stop the caller's current job (its images so far come back), as A1111 does; the
        caller's other jobs, waiting, run after it."""
        current = self._current(self._mine(caller))
        for record in current:
            record.job.cancel()
        return len(current)

    def skip(self, caller: str) -> int:
        current = self._current(self._mine(caller))
        for record in current:
            record.job.skip()
        return len(current)

    def progress(self, caller: str) -> tuple[ApiJob | None, int]:
        """The caller's current job (else the first waiting) and how many of the caller's jobs
        are in all."""
        mine = self._mine(caller)
        current = self._current(mine)
        return (current[0] if current else mine[0] if mine else None), len(mine)
