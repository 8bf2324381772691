"""What ui/ may call on whatever serves generation: the Backend protocol (torch-free).

PipelineManager (one device), serving.procs.ProcessPool (one worker process per GPU of a host,
what `--devices` with several devices starts), serving.pool.ManagerPool (one manager per device
as threads of one process), serving.ray_serve.RayBackend (Ray Serve replicas) and
serving.zerogpu.ZeroGPUBackend (GPU booked per call on Spaces) implement it, each member written out: no attribute forwarding,
no probing with hasattr. tests/test_serving.py holds every class to it.

Every piece of work is a request object (requests.py for generation, lab_requests.py for the
Diffusion lab) handed to run() or stream() with a Job. Interrupt is the Job's: whoever holds
it calls job.cancel() and the work stops at the next step, in this process or on a worker.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    @property
    def concurrency(self) -> int:
        """How many jobs may run at once (devices of a pool, replicas of Ray)."""

    @property
    def model(self) -> Any:
        """The loaded model's ModelInfo (name, source, load seconds), or None."""

    @property
    def native_size(self) -> int:
        """The resolution the loaded model was trained at."""

    @property
    def family_name(self) -> str:
        """The loaded model's family ("SD", "SDXL"): the UI shows family-only fields by it."""

    @property
    def train_steps(self) -> int:
        """T of the loaded model's training schedule (the lab's t slider)."""

    def run(self, request, on_step: Callable | None = None, job=None) -> Any:
        """The request's result (GenerationResult, or a lab result); on_step(StepInfo) per step."""

    def stream(self, request, job=None) -> Iterator:
        """StepInfo per step, then the result; the job is cancelled if the consumer stops early."""

    def load_base(self, source: str) -> Any:
        """Load another base model (ModelLoadError when it cannot; the old one stays)."""

    def describe(self) -> str:
        """One line for the status bar: model, device, size."""

    def memory_report(self) -> dict:
        """Bytes of weights: base, shared by the modes, extra modules, all."""

    def count_tokens(self, text: str) -> tuple[int, int] | None:
        """A prompt's (tokens, limit) as A1111's live counter shows them ('80/150'): the
        tokenizer only, no GPU, never queued behind a job; None when it cannot count now."""


def backend_members() -> dict[str, str]:
    """name → 'property' or 'method' for every member of the protocol."""
    return {name: "property" if isinstance(value, property) else "method"
            for name, value in vars(Backend).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}
