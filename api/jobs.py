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

        def started():
            record.started_at = time.time()
            if prepare is not None:
                prepare()

        def work():
            try:
                for event in self.backend.stream(request, record.job, prepare=started):
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

    def interrupt(self, caller: str) -> int:
        """Stop the caller's running jobs (their images so far come back); waiting ones stay."""
        running = [job for job in self._mine(caller) if job.running]
        for record in running:
            record.job.cancel()
        return len(running)

    def skip(self, caller: str) -> int:
        running = [job for job in self._mine(caller) if job.running]
        for record in running:
            record.job.skip()
        return len(running)

    def progress(self, caller: str) -> tuple[ApiJob | None, int]:
        """The caller's current job (the running one, else the first waiting) and how many
        of the caller's jobs are in all."""
        mine = self._mine(caller)
        running = [job for job in mine if job.running]
        return (running[0] if running else mine[0] if mine else None), len(mine)
