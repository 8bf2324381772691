"""Hugging Face ZeroGPU: the GPU is lent per call to functions wrapped in `spaces.GPU`, for a
duration the Space declares up front. Off ZeroGPU the wrapper is not applied at all.

No torch.compile there (not supported); the duration is estimated from the request's size:
denoising steps × batch × megapixels, with a floor for model start-up."""
from __future__ import annotations

import os

SECONDS_PER_STEP_PER_MEGAPIXEL = 0.12  # SD 1.5 fp16 with CFG on a shared A100/H200 slice, measured loosely
MIN_SECONDS, MAX_SECONDS = 20, 300


def on_zerogpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def gpu_seconds(request) -> int:
    """How long to book the GPU for one request (ZeroGPU kills calls that overrun)."""
    s = request.sampling
    megapixels = request.width * request.height / 1e6
    steps = s.steps * getattr(request, "repaint_r", 1) * s.batch_count
    if getattr(request, "enable_hr", False):  # the hires pass, as first-pass steps of equal cost
        width, height = request.hires_size
        second = (request.hr_second_pass_steps or s.steps) * request.denoising_strength
        steps += second * width * height / 1e6 / megapixels * s.batch_count
    cfg = 2 if s.cfg else 1
    units = 1 + len(request.control.units) if getattr(request, "control", None) else 1
    estimate = MIN_SECONDS + SECONDS_PER_STEP_PER_MEGAPIXEL * steps * megapixels * s.batch_size * cfg / 2 * units
    return int(min(MAX_SECONDS, estimate))


class ZeroGPUBackend:
    """Wraps a backend so that each request's stream runs inside `spaces.GPU`."""

    def __init__(self, backend):
        import spaces  # the `spaces` package; its decorator is a no-op outside Spaces

        self.backend = backend
        self._spaces = spaces
        self._gpu_stream = spaces.GPU(duration=lambda request, job: gpu_seconds(request))(self._stream)

    def _stream(self, request, job):
        yield from self.backend.stream(request, job)

    def stream(self, request, job=None):
        from pipelines.jobs import Job

        return self._gpu_stream(request, job or Job())

    def lab(self):
        """The Diffusion lab's GPU work, each call booked like a small request."""
        return _BookedCalls(self.backend.lab(), self._spaces)

    def __getattr__(self, name):
        return getattr(self.backend, name)


class _BookedCalls:
    LAB_SECONDS = 60

    def __init__(self, target, spaces):
        self.target, self.spaces = target, spaces

    def __getattr__(self, name):
        attribute = getattr(self.target, name)
        if not callable(attribute):
            return attribute
        return self.spaces.GPU(duration=self.LAB_SECONDS)(attribute)
