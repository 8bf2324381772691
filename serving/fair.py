"""One first-come-first-served line in front of the backend, shared by every way in.

Browser jobs come through Gradio's queue (one GPU event at a time per device), REST API jobs
come straight from HTTP handlers. Both call FairGate.stream, which admits jobs in arrival
order, as many at once as the backend has devices: a burst of API requests cannot starve the
browser users (nor the reverse), whatever order the device locks would have picked."""
from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager

from pipelines.core.jobs import GenerationResult, Job, StepInfo, stream_run

from .wrapped import WrappedBackend


class FairGate(WrappedBackend):
    def __init__(self, backend, slots: int | None = None):
        super().__init__(backend)
        self.slots = max(1, slots or getattr(backend, "concurrency", 1))
        self._line: deque = deque()
        self._running = 0
        self._cond = threading.Condition()

    @contextmanager
    def turn(self, job: Job | None = None, exclusive: bool = False):
        """Wait for this caller's turn (FIFO); yields False when the job was cancelled while
        it waited (it then never reaches the backend). An exclusive turn (a model change, a
        request that switches the model first) waits until nothing runs and lets nothing in
        beside it: with several slots (a pool, or a manager batching requests) no other job may
        come between the switch and its generation."""
        ticket = object()
        weight = self.slots if exclusive else 1
        with self._cond:
            self._line.append(ticket)
            try:
                while not (self._line[0] is ticket and self._running + weight <= self.slots):
                    if job is not None and job.cancelled:
                        break
                    self._cond.wait(0.1)
            finally:
                self._line.remove(ticket)
                admitted = not (job is not None and job.cancelled)
                if admitted:
                    self._running += weight
                self._cond.notify_all()
        try:
            yield admitted
        finally:
            if admitted:
                with self._cond:
                    self._running -= weight
                    self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Jobs in line, not yet running."""
        return len(self._line)

    def stream(self, request, job: Job | None = None, prepare=None, on_admit=None):
        """The backend's events once it is this job's turn; prepare() runs first, inside an
        exclusive turn (the REST API's per-request model switch: no other job can come between).
        on_admit() only tells the caller its job was let in (an ordinary turn).
        The turn ends when the backend has produced the result, not when the consumer has
        read every event: a slow reader (Gradio's per-step progress) holds no one up."""
        return stream_run(lambda request, on_step, job: self.run(request, on_step, job, prepare, on_admit), request,
                          job or Job())

    def run(self, request, on_step=None, job: Job | None = None, prepare=None, on_admit=None) -> GenerationResult:
        job = job or Job()
        with self.turn(job, exclusive=prepare is not None) as admitted:
            if not admitted:
                return GenerationResult(request.task, [], ["Interrupted before it started."], interrupted=True)
            if on_admit is not None:
                on_admit()
            if prepare is not None:
                prepare()
            for event in self.backend.stream(request, job):
                if isinstance(event, StepInfo):
                    if on_step is not None:
                        on_step(event)
                else:
                    return event
        raise RuntimeError("the backend ended without a result")

    def load_base(self, source: str):
        """A model change waits its turn too: it must not swap weights under a running job
        (the manager's lock ensures that) nor jump the line."""
        with self.turn(exclusive=True):
            return self.backend.load_base(source)

    @property
    def concurrency(self) -> int:
        return self.slots
