"""Every ControlNet preprocessor behind one registry, and control maps at the generation size.

    PREPROCESSORS["canny"](image, low=50, high=150)            -> PIL image (input's size)
    PREPROCESSORS["canny"](image, width=512, height=768)       -> PIL image, 512×768
    control_map("pose (mediapipe)", image, 512, 512)           -> ControlMap(image, message, pose, …)

Names: "none", "canny", "pose (mediapipe)", "pose (openpose)" (only listed by
available_preprocessors() when its weights are on disk), "lineart standard", "shuffle".

control_map() first fits the input to the generation size (pipelines.core.images.fit, the same
resize modes as img2img) and runs the preprocessor there, so edges stay one pixel wide and
pose keypoints come out in generation pixels, ready for the pose editor.

lineart standard and content shuffle are controlnet-aux 0.0.10's weight-free detectors
(LineartStandardDetector, ContentShuffleDetector), re-implemented here in a few lines of
numpy/OpenCV: importing controlnet_aux costs ~6 s and imports every detector (timm, SAM…),
and its shuffle draws from numpy's global RNG. The outputs are identical to controlnet-aux's
(tests/test_preprocessors.py compares them); shuffle takes a seed instead.

This module never imports gradio.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np
from PIL import Image

from pipelines.core.errors import RequestError
from pipelines.core.fields import Field
from pipelines.core.images import fit, to_rgb
from pipelines.pose import PoseResult, detect_pose_mediapipe, detect_pose_openpose, openpose_available
from pipelines.preprocess import canny, to_rgb_array
from pipelines.core.requests import RESIZE_MODES


def _rgb(image) -> np.ndarray:
    return to_rgb_array(to_rgb(image) if isinstance(image, Image.Image) else image)


def _resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """controlnet-aux's resize_image: short side → resolution, both sides rounded to 64."""
    h, w = image.shape[:2]
    k = float(resolution) / min(h, w)
    new_h, new_w = int(np.round(h * k / 64.0)) * 64, int(np.round(w * k / 64.0)) * 64
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def lineart_standard(image, gaussian_sigma: float = 6.0, intensity_threshold: int = 8,
                     detect_resolution: int = 512) -> Image.Image:
    """Dark strokes → white lines on black (controlnet-aux LineartStandardDetector): how much
    darker each pixel is than its Gaussian-blurred neighbourhood, normalised by the median of
    the clearly-dark responses; computed at detect_resolution, returned at the input's size."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    x = _resize_short_side(rgb, detect_resolution).astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), gaussian_sigma)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > intensity_threshold]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)  # flat image: no lines
    intensity *= 127
    lines = intensity.clip(0, 255).astype(np.uint8)
    lines = cv2.resize(np.repeat(lines[:, :, None], 3, axis=2), (w, h), interpolation=cv2.INTER_CUBIC)
    return Image.fromarray(lines)


def _noise_disk(h: int, w: int, f: int, rng: np.random.RandomState) -> np.ndarray:
    """controlnet-aux's make_noise_disk (one channel): smooth noise with features ~f px, in [0, 1]."""
    noise = rng.uniform(low=0, high=1, size=((h // f) + 2, (w // f) + 2, 1))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)
    noise = noise[f: f + h, f: f + w]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None]


def content_shuffle(image, f: int = 256, seed: int = 0) -> Image.Image:
    """Content shuffle (controlnet-aux ContentShuffleDetector): every pixel is fetched from a
    position given by two smooth random fields, so colours and textures stay and layout goes.
    Deterministic for a given seed; same size as the input."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    if f < 1:
        raise RequestError(f"shuffle feature size f must be ≥ 1, got {f}")
    rng = np.random.RandomState(int(seed) % (2**32))
    x = _noise_disk(h, w, f, rng) * float(w - 1)
    y = _noise_disk(h, w, f, rng) * float(h - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return Image.fromarray(cv2.remap(rgb, flow, None, cv2.INTER_LINEAR))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

def Param(default: float, minimum: float, maximum: float, step: float, label: str) -> Field:
    """One preprocessor parameter, declared as a request field is (pipelines/core/fields.py): the
    ControlNet units build their sliders from it."""
    return Field("", type(default), default, label, minimum=minimum, maximum=maximum, step=step)


@dataclass
class ControlMap:
    """A preprocessor's output: the control map plus what the UI shows next to it."""
    image: Image.Image
    preprocessor: str
    params: dict = field(default_factory=dict)
    message: str = ""                  # non-empty: tell the user (no person found, …)
    pose: Optional[PoseResult] = None  # pose preprocessors: keypoints for the editor
    seconds: float = 0.0               # preprocessor time, fitting excluded

    @property
    def ok(self) -> bool:
        """False when the map is empty because nothing was found (e.g. no person)."""
        return not self.message


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[..., ControlMap]  # (rgb PIL image, **params) -> ControlMap at the image's size
    params: dict                    # name -> Param (a Field)
    description: str
    needs_weights: bool = False

    def __post_init__(self):
        self.params.update({key: dataclasses.replace(spec, name=key) for key, spec in self.params.items()})

    def available(self, annotators_dir: Optional[str] = None) -> bool:
        return not self.needs_weights or openpose_available(annotators_dir)

    def check_params(self, params: dict) -> dict:
        """Defaults filled in; unknown names and out-of-range numbers are RequestErrors."""
        unknown = set(params) - set(self.params)
        if unknown:
            accepted = ", ".join(self.params) or "none"
            raise RequestError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))} (accepted: {accepted})")
        full = {k: p.default for k, p in self.params.items()}
        full.update(params)
        for key, spec in self.params.items():
            value = full[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                    or not spec.minimum <= value <= spec.maximum:
                raise RequestError(f"{self.name}: {spec.label} must be a number in [{spec.minimum:g}, {spec.maximum:g}], got {value!r}")
        return full

    def map(self, image, **params) -> ControlMap:
        """Run on an image at its own size; see control_map() for the generation size."""
        if image is None:
            raise RequestError(f"{self.name}: no control image")
        annotators_dir = params.pop("annotators_dir", None)  # accepted by all, used by pose (openpose)
        full = self.check_params(params)
        image = to_rgb(image) if isinstance(image, Image.Image) else Image.fromarray(to_rgb_array(image))
        start = time.perf_counter()
        result = self.run(image, annotators_dir=annotators_dir, **full) if self.needs_weights else self.run(image, **full)
        result.seconds = time.perf_counter() - start
        result.params = full
        return result

    def __call__(self, image, width: Optional[int] = None, height: Optional[int] = None,
                 resize_mode: str = "crop and resize", **params) -> Image.Image:
        """The control map as a PIL RGB image: at (width, height) when given (the input is
        fitted first, see control_map), else at the input's size."""
        if width is not None or height is not None:
            image = _fit(image, width, height, resize_mode)
        return self.map(image, **params).image


def _fit(image, width, height, resize_mode) -> Image.Image:
    if image is None:
        raise RequestError("no control image")
    if resize_mode not in RESIZE_MODES:
        raise RequestError(f"unknown resize mode {resize_mode!r}; expected one of {RESIZE_MODES}")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(to_rgb_array(image))
    width = pil.width if width is None else int(width)
    height = pil.height if height is None else int(height)
    if width <= 0 or height <= 0:
        raise RequestError(f"control map size must be positive, got {width}×{height}")
    return fit(pil, width, height, resize_mode)


def _none(image, **_):
    return ControlMap(image, "none")


def _canny(image, low, high):
    if low > high:
        raise RequestError(f"canny: low threshold ({low:g}) must not exceed high threshold ({high:g})")
    return ControlMap(canny(image, int(low), int(high)), "canny")


def _pose_map(pose: PoseResult, name: str) -> ControlMap:
    return ControlMap(pose.draw(), name, message=pose.message, pose=pose)


def _pose_mediapipe(image, min_visibility):
    return _pose_map(detect_pose_mediapipe(image, min_visibility=min_visibility), "pose (mediapipe)")


def _pose_openpose(image, annotators_dir=None):
    return _pose_map(detect_pose_openpose(image, annotators_dir=annotators_dir), "pose (openpose)")


def _lineart(image, gaussian_sigma, intensity_threshold):
    return ControlMap(lineart_standard(image, gaussian_sigma, int(intensity_threshold)), "lineart standard")


def _shuffle(image, f, seed):
    return ControlMap(content_shuffle(image, int(f), int(seed)), "shuffle")


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", _none, {}, "the image as it is (already an edge or pose map)"),
    Preprocessor("canny", _canny, {
        "low": Param(100, 0, 255, 1, "Canny low threshold"),
        "high": Param(200, 0, 255, 1, "Canny high threshold"),
    }, "OpenCV Canny edges, white on black"),
    Preprocessor("pose (mediapipe)", _pose_mediapipe, {
        "min_visibility": Param(0.5, 0.0, 1.0, 0.05, "Joint visibility threshold"),
    }, "body pose (OpenPose-18) from mediapipe, offline, one person"),
    Preprocessor("pose (openpose)", _pose_openpose, {},
                 "body pose from controlnet-aux OpenPose (needs lllyasviel/Annotators body_pose_model.pth)",
                 needs_weights=True),
    Preprocessor("lineart standard", _lineart, {
        "gaussian_sigma": Param(6.0, 0.5, 32.0, 0.5, "Lineart blur sigma"),
        "intensity_threshold": Param(8, 0, 255, 1, "Lineart intensity threshold"),
    }, "dark strokes as white lines (no weights)"),
    Preprocessor("shuffle", _shuffle, {
        "f": Param(256, 8, 1024, 8, "Shuffle feature size (px)"),
        "seed": Param(0, 0, 2**32 - 1, 1, "Shuffle seed"),
    }, "content shuffle: colours and textures without layout (no weights)"),
)}


def available_preprocessors(annotators_dir: Optional[str] = None) -> list[str]:
    """Registry names usable on this machine now (pose (openpose) only with its weights on disk)."""
    return [name for name, p in PREPROCESSORS.items() if p.available(annotators_dir)]


def control_map(name: str, image, width: int, height: int, resize_mode: str = "crop and resize",
                **params) -> ControlMap:
    """The control map of `image` for a width × height generation: the image is fitted to
    that size (resize_mode as in img2img), then preprocessed there. Errors a user can fix
    (unknown preprocessor or parameter, no image, missing OpenPose weights) are StudioErrors;
    no person found is not an error: ``.ok`` is False, ``.message`` says so, the map is black."""
    if name not in PREPROCESSORS:
        raise RequestError(f"unknown preprocessor {name!r}; expected one of {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[name].map(_fit(image, width, height, resize_mode), **params)
