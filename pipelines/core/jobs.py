"""One running request's handle: its cancel flag and what it reports per step.

The caller (a UI session, a test, a remote worker) owns the Job; only the holder of a Job can
interrupt it, so one user can never stop another's generation."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class StepInfo:
    step: int  # steps done in this batch, 1-based
    total: int  # denoising steps of this batch (img2img runs fewer than requested)
    batch: int  # 0-based batch index
    batch_count: int
    preview: Image.Image | None = None

    @property
    def fraction(self) -> float:
        """Progress over the whole job, 0…1."""
        return (self.batch + self.step / max(self.total, 1)) / max(self.batch_count, 1)


@dataclass
class Job:
    _cancel: threading.Event = field(default_factory=threading.Event)
    _skip: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def skip(self) -> None:
        """End the batch being sampled now (its images are kept as they are) and go on with
        the next batch: A1111's Skip."""
        self._skip.set()

    @property
    def skipping(self) -> bool:
        return self._skip.is_set()

    def take_skip(self) -> bool:
        """True once per skip request: the batch loop consumes it."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str


@dataclass
class GenerationResult:
    task: str
    images: list[GeneratedImage]
    notes: list[str]
    interrupted: bool = False
    seconds: float = 0.0
    worker: str = ""  # which process/device made it (pools and Ray replicas)


def stream_run(run, request, job: Job):
    """Turn a blocking run(request, on_step=…, job=…) into a generator of StepInfo events
    ending with the GenerationResult (errors are re-raised here, in the consumer). The work
    runs in a thread; if the consumer stops iterating, the job is cancelled."""
    import queue
    import threading

    events: queue.Queue = queue.Queue()

    def work():
        try:
            events.put(("done", run(request, on_step=lambda step: events.put(("step", step)), job=job)))
        except BaseException as error:  # handed to the consumer, who decides what the user sees
            events.put(("error", error))

    threading.Thread(target=work, name="generate", daemon=True).start()
    finished = False
    try:
        while True:
            kind, payload = events.get()
            if kind == "step":
                yield payload
                continue
            finished = True
            if kind == "error":
                raise payload
            yield payload
            return
    finally:
        if not finished:
            job.cancel()


def result_of(events, on_step=None):
    """stream_run's inverse: the result at the end of a stream of StepInfo events, each step
    handed to on_step on the way (how a streaming backend offers run())."""
    for event in events:
        if isinstance(event, StepInfo):
            if on_step is not None:
                on_step(event)
            continue
        return event
    raise RuntimeError("the stream ended without a result")
