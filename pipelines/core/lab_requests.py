"""Diffusion-lab requests: what the lab tab (or an API client) asks a backend to run. Torch-free,
validated when built, so they travel like generation requests — through backend.run/stream
with a Job (interruptible, to a pool slot or a Ray replica) — and the manager dispatches them
to pipelines/lab.py. What depends on the loaded model (t ≤ T) is checked there."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from PIL import Image

from .errors import RequestError
from .requests import MAX_SEED, _require_number, _require_text

MAX_LAB_STEPS = 1000
MAX_SCALES = 8  # finished images in the CFG anatomy
SCALE_RANGE = (0.0, 30.0)  # what the CFG anatomy may compare (0: unconditional extrapolated away)


class LabRequest:
    """Base of the lab's requests. Validated in __post_init__: nothing for Limits to normalise."""

    task: ClassVar[str]
    is_normalized: ClassVar[bool] = True
    needs_device: ClassVar[bool] = True  # False: answered from the model's config alone

    def _coerce_int(self, *names: str) -> None:
        for name in names:
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass(frozen=True)
class LabForwardRequest(LabRequest):
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε of an image (None: the demo picture), in latents and pixels."""

    image: Image.Image | None = None
    t: int = 500  # 0 = the image, T = the end of the training schedule
    seed: int = 0  # of ε
    task: ClassVar[str] = "lab_forward"

    def __post_init__(self):
        if self.image is not None and not isinstance(self.image, Image.Image):
            raise RequestError(f"The lab image must be an image, got {type(self.image).__name__}.")
        _require_number("t", self.t, -1e9, 1e9, integer=True)
        if self.t < 0:
            raise RequestError(f"t must be at least 0 (the image itself), got {self.t:g}.")
        _require_number("Noise seed", self.seed, -1, MAX_SEED, integer=True)
        self._coerce_int("t", "seed")


@dataclass(frozen=True)
class LabSchedulesRequest(LabRequest):
    """β_t, ᾱ_t, log SNR_t of the reference schedules and of the loaded model."""

    task: ClassVar[str] = "lab_schedules"
    needs_device: ClassVar[bool] = False


@dataclass(frozen=True)
class LabTrajectoryRequest(LabRequest):
    """DDIM from one x_T with η = 0 and η = 1: x_t and x̂_0 every `every` steps."""

    prompt: str = ""
    negative: str = ""
    steps: int = 20
    every: int = 5
    cfg_scale: float = 7.0
    seed: int = 0
    task: ClassVar[str] = "lab_trajectory"

    def __post_init__(self):
        _require_text("Prompt", self.prompt)
        _require_text("Negative prompt", self.negative)
        _require_number("Steps", self.steps, 1, MAX_LAB_STEPS, integer=True)
        _require_number("Show every k steps", self.every, 1, MAX_LAB_STEPS, integer=True)
        if self.every > self.steps:
            raise RequestError(f"Show every {int(self.every)} steps is more than the {int(self.steps)} steps of the run.")
        _require_number("CFG scale", self.cfg_scale, 1.0, 30.0)
        _require_number("Seed", self.seed, -1, MAX_SEED, integer=True)
        self._coerce_int("steps", "every", "seed")
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))


@dataclass(frozen=True)
class LabCfgRequest(LabRequest):
    """At one DDIM step: ε_uncond, ε_cond and the guided ε as x̂_0; then the finished image per scale."""

    prompt: str = ""
    negative: str = ""
    steps: int = 20
    step: int = 1  # the inspected step, 1-based as the user counts
    scale: float = 7.0
    seed: int = 0
    scales: tuple[float, ...] = (1.0, 3.0, 7.0, 12.0, 20.0)
    task: ClassVar[str] = "lab_cfg"

    def __post_init__(self):
        _require_text("Prompt", self.prompt)
        _require_text("Negative prompt", self.negative)
        _require_number("Steps", self.steps, 1, MAX_LAB_STEPS, integer=True)
        _require_number("Inspect step", self.step, -10**6, 10**6)
        if not 1 <= self.step <= self.steps:
            raise RequestError(f"Inspect step must be between 1 and the {int(self.steps)} steps of the run.")
        _require_number("CFG scale", self.scale, 1.0, 30.0)
        _require_number("Seed", self.seed, -1, MAX_SEED, integer=True)
        if not 1 <= len(self.scales) <= MAX_SCALES:
            raise RequestError(f"Give between 1 and {MAX_SCALES} scales for the finished images.")
        for value in self.scales:
            _require_number("Scale", value, -1e6, 1e6)
        if not all(SCALE_RANGE[0] <= v <= SCALE_RANGE[1] for v in self.scales):
            raise RequestError(f"Scales must be between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g}.")
        self._coerce_int("steps", "step", "seed")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "scales", tuple(float(v) for v in self.scales))


LAB_REQUESTS = (LabForwardRequest, LabSchedulesRequest, LabTrajectoryRequest, LabCfgRequest)
