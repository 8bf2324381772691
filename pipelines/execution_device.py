"""A pipeline's execution device, told once instead of searched on every call.

diffusers' ``DiffusionPipeline._execution_device`` walks every submodule of every component
(looking for offload hooks) each time it is read: ~7.5 ms of host time on SD 1.5's modules, read
twice per generation (our prompt encoding and the pipeline's __call__), before the first step —
on a GPU, where the steps are queued graph launches, that delays the whole request. The manager
pins the answer on the pipelines whose modules it placed on one device itself (not with CPU
offload, whose hooks move modules per call); any other pipeline keeps diffusers' search.
"""
from __future__ import annotations

from diffusers import DiffusionPipeline

_SEARCH = getattr(DiffusionPipeline._execution_device, "fget", None)
_SEARCH = getattr(_SEARCH, "_sd_studio_search", _SEARCH)  # diffusers' own, also after a reload of this module
PINNED = "_sd_studio_execution_device"


def _execution_device(self):
    pinned = self.__dict__.get(PINNED)
    return pinned if pinned is not None else _SEARCH(self)


_execution_device._sd_studio_search = _SEARCH


def pin_execution_device(pipe) -> None:
    """From now on pipe._execution_device is what diffusers finds now (the same device object,
    so comparisons and .to() behave exactly as before)."""
    if DiffusionPipeline.__dict__["_execution_device"].fget is not _execution_device:
        DiffusionPipeline._execution_device = property(_execution_device, doc=_SEARCH.__doc__)
    pipe.__dict__.pop(PINNED, None)
    pipe.__dict__[PINNED] = _SEARCH(pipe)
