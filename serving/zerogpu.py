"""Hugging Face ZeroGPU: the GPU is lent per call to functions wrapped in `spaces.GPU`, for a
duration the Space declares up front. Off ZeroGPU the wrapper is not applied at all.

No torch.compile there (not supported); the duration is estimated from the request's size:
denoising steps × batch × megapixels, with a floor for model start-up."""
from __future__ import annotations

import os

from .wrapped import WrappedBackend

SECONDS_PER_STEP_PER_MEGAPIXEL = 0.12  # SD 1.5 fp16 with CFG on a shared A100/H200 slice, measured loosely
MIN_SECONDS, MAX_SECONDS = 20, 300
LAB_SECONDS = 60  # a Diffusion-lab experiment: at most a few hundred UNet steps at the native size


def on_zerogpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def gpu_seconds(request) -> int:
    """How long to book the GPU for one request (ZeroGPU kills calls that overrun)."""
    from pipelines.core.lab_requests import LabRequest

    if isinstance(request, LabRequest):
        return LAB_SECONDS
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


class ZeroGPUBackend(WrappedBackend):
    """Wraps a backend so that each request's stream runs inside `spaces.GPU`; implements
    pipelines.core.backend.Backend by handing every other member to the wrapped backend."""

    def __init__(self, backend):
        import spaces  # the `spaces` package; its decorator is a no-op outside Spaces

        super().__init__(backend)
        self._gpu_stream = spaces.GPU(duration=lambda request, job: gpu_seconds(request))(self._stream)

    def _stream(self, request, job):
        yield from self.backend.stream(request, job)

    def stream(self, request, job=None):
        from pipelines.core.jobs import Job

        from pipelines.core.lab_requests import LabRequest

        if isinstance(request, LabRequest) and not request.needs_device:  # the lab's schedules: config only
            return self.backend.stream(request, job or Job())
        return self._gpu_stream(request, job or Job())

    def run(self, request, on_step=None, job=None):
        from pipelines.core.jobs import result_of

        return result_of(self.stream(request, job), on_step)

    def load_base(self, source: str):
        return self.backend.load_base(source)
