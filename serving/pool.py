"""Several devices in one host: one PipelineManager per device, each job to the least busy.

Each manager holds its own copy of the weights (one per GPU) and its own lock; the Gradio
queue lets as many GPU jobs run at once as there are devices."""
from __future__ import annotations

import threading
from contextlib import contextmanager

from pipelines.core.jobs import GenerationResult, Job, stream_run


class ManagerPool:
    """Implements pipelines.core.backend.Backend over several PipelineManagers."""

    def __init__(self, managers: list):
        if not managers:
            raise ValueError("a pool needs at least one manager")
        self.managers = managers
        self._busy = [0] * len(managers)
        self._lock = threading.Lock()

    @contextmanager
    def _least_busy(self):
        with self._lock:
            index = min(range(len(self.managers)), key=lambda i: self._busy[i])
            self._busy[index] += 1
        try:
            yield index, self.managers[index]
        finally:
            with self._lock:
                self._busy[index] -= 1

    def run(self, request, on_step=None, job: Job | None = None):
        with self._least_busy() as (index, manager):
            result = manager.run(request, on_step=on_step, job=job)
            if isinstance(result, GenerationResult):  # lab results say nothing of their worker
                result.worker = f"{result.worker} (slot {index})"
            return result

    def stream(self, request, job: Job | None = None):
        return stream_run(self.run, request, job or Job())

    def load_base(self, source: str):
        """Load on every device; all or nothing is not promised — each keeps its previous
        model when its own load fails, and the error is raised."""
        infos = [manager.load_base(source) for manager in self.managers]
        return infos[0]

    @property
    def concurrency(self) -> int:
        # each manager lets as many requests wait as one of its batches holds (batching.py)
        return sum(getattr(m, "concurrency", 1) for m in self.managers)

    @property
    def model(self):
        return self.managers[0].model

    @property
    def native_size(self) -> int:
        return self.managers[0].native_size

    @property
    def family_name(self) -> str:
        return self.managers[0].family_name

    @property
    def train_steps(self) -> int:
        return self.managers[0].train_steps

    def describe(self) -> str:
        devices = ", ".join(str(m.device) for m in self.managers)
        return f"{self.managers[0].describe()} Pool of {len(self.managers)} devices: {devices}."

    def memory_report(self) -> dict:
        return self.managers[0].memory_report()

    def count_tokens(self, text: str):
        return self.managers[0].count_tokens(text)  # every device holds the same tokenizer

