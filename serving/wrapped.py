"""The Backend protocol's read-only members, passed through by a backend that wraps another
(FairGate's job line, the ZeroGPU booking): written once, each member explicit."""
from __future__ import annotations


class WrappedBackend:
    def __init__(self, backend):
        self.backend = backend

    @property
    def concurrency(self) -> int:
        return self.backend.concurrency

    @property
    def model(self):
        return self.backend.model

    @property
    def native_size(self) -> int:
        return self.backend.native_size

    @property
    def family_name(self) -> str:
        return self.backend.family_name

    @property
    def train_steps(self) -> int:
        return self.backend.train_steps

    def describe(self) -> str:
        return self.backend.describe()

    def memory_report(self) -> dict:
        return self.backend.memory_report()

    def count_tokens(self, text: str):
        return self.backend.count_tokens(text)  # the tokenizer only: no turn taken, no GPU booked
