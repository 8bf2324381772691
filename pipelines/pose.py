"""Body pose → OpenPose-18 keypoints, offline; keypoint JSON for the pose editor; preset poses.

Detectors
- ``mediapipe`` (default, always offline): mediapipe 0.10.21's legacy ``solutions.pose``
  (``static_image_mode=True``, ``model_complexity=1``). Its models ship inside the wheel
  (pose_detection.tflite, pose_landmark_full.tflite). Complexity 0 and 2 are NOT in the wheel
  and mediapipe would download them from Google Cloud Storage, so they are refused unless
  their file is already there. One person per image (a limit of the legacy solution).
  Its 33 landmarks are mapped to OpenPose-18 (neck = mid-shoulders).
- ``openpose`` (optional): controlnet-aux's OpenPose body network, used only when
  ``body_pose_model.pth`` (Hugging Face ``lllyasviel/Annotators``) is already on disk, in the
  HF cache or in ``SD_STUDIO_ANNOTATORS_DIR``. The file is opened by path; nothing is ever
  downloaded. Missing weights raise ModelLoadError whose message says what to download.
  (CMU licenses these weights for non-commercial use only. DWpose is not offered: in
  controlnet-aux 0.0.10 it needs mmcv/mmdet/mmpose, which are not installed.)

Coordinates are pixels of the image given, (x, y), origin top-left. "right"/"left" are the
person's, as in OpenPose and mediapipe. A joint that was not seen is NaN (confidence 0).

No person found is a result, not an exception: ``PoseResult.found`` is False, the keypoints
array is empty (0, 18, 2) and ``message`` says what happened; drawing it gives a black map.

This module never imports gradio. mediapipe is imported lazily (about 0.7 s).
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
from PIL import Image

from pipelines.core.errors import ModelLoadError
from pipelines.preprocess import JOINT_INDEX, OPENPOSE_JOINTS, draw_openpose, to_rgb_array

N_JOINTS = len(OPENPOSE_JOINTS)  # 18
DEFAULT_MIN_VISIBILITY = 0.5

# ---------------------------------------------------------------------------------------------
# mediapipe's 33 landmarks → OpenPose-18
# ---------------------------------------------------------------------------------------------

MEDIAPIPE_LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
_MP = {name: i for i, name in enumerate(MEDIAPIPE_LANDMARKS)}

# For each OpenPose-18 joint, the mediapipe landmarks it is the mean of (one, or two for the neck).
MEDIAPIPE_TO_OPENPOSE: tuple[tuple[int, ...], ...] = tuple(
    (_MP["left_shoulder"], _MP["right_shoulder"]) if name == "neck" else (_MP[name],)
    for name in OPENPOSE_JOINTS
)


def landmarks_to_openpose(xy: np.ndarray, width: int, height: int, visibility: Optional[np.ndarray] = None,
                          min_visibility: float = DEFAULT_MIN_VISIBILITY) -> tuple[np.ndarray, np.ndarray]:
    """Map mediapipe's 33 pose landmarks to OpenPose-18 pixel keypoints.

    xy: (33, 2) landmark positions normalised to the image (mediapipe's x, y in [0, 1]).
    visibility: (33,) mediapipe visibility scores, or None for "all seen" (1.0).
    Returns keypoints (18, 2) in pixels and confidence (18,). A joint is NaN with confidence 0
    when its landmark's visibility is below ``min_visibility`` or it lies outside the image;
    the neck is the mid-point of the shoulders, seen only when both are, confidence the lower.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.shape != (len(MEDIAPIPE_LANDMARKS), 2):
        raise ValueError(f"expected (33, 2) normalised landmarks, got shape {xy.shape}")
    vis = np.ones(len(MEDIAPIPE_LANDMARKS)) if visibility is None else np.asarray(visibility, dtype=np.float64)
    pixels = xy * np.array([width, height], dtype=np.float64)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    seen = inside & (vis >= min_visibility) & np.isfinite(pixels).all(axis=1)

    keypoints = np.full((N_JOINTS, 2), np.nan)
    confidence = np.zeros(N_JOINTS)
    for joint, sources in enumerate(MEDIAPIPE_TO_OPENPOSE):
        idx = list(sources)
        if seen[idx].all():
            keypoints[joint] = pixels[idx].mean(axis=0)
            confidence[joint] = float(vis[idx].min())
    return keypoints, confidence


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------

@dataclass(eq=False)  # numpy fields: compare .keypoints explicitly
class PoseResult:
    """Detected or edited body poses on a canvas of width × height pixels.

    keypoints: (people, 18, 2) float pixels, OpenPose-18 order (preprocess.OPENPOSE_JOINTS),
      NaN for a joint not seen; (0, 18, 2) when there is nobody. mediapipe gives ≤ 1 person.
    confidence: (people, 18) in [0, 1]; 0 exactly where the joint is NaN.
    message: empty on success, else a sentence for the user (no person found, …).
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    width: int
    height: int
    message: str = ""
    detector: str = ""
    seconds: float = field(default=0.0, compare=False)

    def __post_init__(self):
        kp = np.asarray(self.keypoints, dtype=np.float64)
        if kp.ndim == 2:
            kp = kp[None]
        if kp.ndim != 3 or kp.shape[1:] != (N_JOINTS, 2):
            raise ValueError(f"keypoints must be (18, 2) or (people, 18, 2), got {np.shape(self.keypoints)}")
        conf = np.asarray(self.confidence, dtype=np.float64).reshape(len(kp), N_JOINTS)
        missing = np.isnan(kp).any(axis=2)
        kp[missing] = np.nan
        conf = np.where(missing, 0.0, conf)
        self.keypoints, self.confidence = kp, conf
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"canvas size must be positive, got {self.width}×{self.height}")

    @property
    def found(self) -> bool:
        """At least one person with at least one joint."""
        return bool(len(self.keypoints)) and bool(np.isfinite(self.keypoints).any())

    @property
    def people(self) -> int:
        return len(self.keypoints)

    def person(self, index: int = 0) -> np.ndarray:
        """One person's (18, 2) keypoints (a copy)."""
        return self.keypoints[index].copy()

    def draw(self, width: Optional[int] = None, height: Optional[int] = None) -> Image.Image:
        """The standard ControlNet OpenPose map (preprocess.draw_openpose), black if nobody.
        With width/height, the keypoints are scaled to that canvas first."""
        pose = self if width is None and height is None else self.resized(width or self.width, height or self.height)
        return draw_openpose(pose.keypoints, pose.width, pose.height)

    def resized(self, width: int, height: int) -> "PoseResult":
        """The same pose on a canvas of another size (each axis scaled on its own, like the image)."""
        scale = np.array([width / self.width, height / self.height])
        return PoseResult(self.keypoints * scale, self.confidence.copy(), width, height, self.message, self.detector)

    def move_joint(self, joint: Union[int, str], x: float, y: float, person: int = 0) -> "PoseResult":
        """A copy with one joint moved to (x, y) pixels (a NaN joint becomes seen, confidence 1).
        Use x = y = NaN to hide a joint."""
        j = JOINT_INDEX[joint] if isinstance(joint, str) else int(joint)
        keypoints, confidence = self.keypoints.copy(), self.confidence.copy()
        keypoints[person, j] = (x, y)
        confidence[person, j] = 0.0 if math.isnan(x) or math.isnan(y) else 1.0
        return PoseResult(keypoints, confidence, self.width, self.height, "", self.detector)

    def nearest_joint(self, x: float, y: float) -> Optional[tuple[int, int, float]]:
        """(person, joint, distance in pixels) of the seen joint closest to (x, y), or None."""
        if not self.found:
            return None
        distance = np.hypot(self.keypoints[..., 0] - x, self.keypoints[..., 1] - y)
        distance = np.where(np.isnan(distance), np.inf, distance)
        person, joint = np.unravel_index(int(np.argmin(distance)), distance.shape)
        return int(person), int(joint), float(distance[person, joint])

    def to_dict(self) -> dict:
        return pose_to_dict(self)

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(pose_to_dict(self), indent=indent)


def empty_pose(width: int, height: int, message: str = "", detector: str = "") -> PoseResult:
    return PoseResult(np.zeros((0, N_JOINTS, 2)), np.zeros((0, N_JOINTS)), width, height, message, detector)


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        from pipelines.core.images import to_rgb  # EXIF rotation, alpha flattened onto white

        image = to_rgb(image)
    return to_rgb_array(image)


_MEDIAPIPE_LANDMARK_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}
_mediapipe_lock = threading.Lock()
_mediapipe_models: dict[int, object] = {}


def _mediapipe_pose(model_complexity: int):
    """The cached mediapipe Pose graph (call with _mediapipe_lock held: a graph is not thread-safe)."""
    if model_complexity not in _mediapipe_models:
        if model_complexity not in _MEDIAPIPE_LANDMARK_FILES:
            raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity}")
        import mediapipe  # lazy: ~0.7 s
        from mediapipe.python.solutions import pose as mp_pose

        model = Path(mediapipe.__file__).parent / "modules" / "pose_landmark" / _MEDIAPIPE_LANDMARK_FILES[model_complexity]
        if not model.is_file():
            # mediapipe would fetch it from Google Cloud Storage: refuse instead (offline app).
            raise ModelLoadError(
                f"mediapipe pose model_complexity={model_complexity} needs {model.name}, which is not in the "
                "mediapipe wheel and would be downloaded; use model_complexity=1 (shipped)")
        _mediapipe_models[model_complexity] = mp_pose.Pose(
            static_image_mode=True, model_complexity=model_complexity, enable_segmentation=False)
    return _mediapipe_models[model_complexity]


def detect_pose_mediapipe(image, min_visibility: float = DEFAULT_MIN_VISIBILITY,
                          model_complexity: int = 1) -> PoseResult:
    """One person's OpenPose-18 keypoints from a photo (PIL image or H×W×3 RGB array), offline."""
    import time

    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    start = time.perf_counter()
    with _mediapipe_lock:
        result = _mediapipe_pose(model_complexity).process(rgb)
    seconds = time.perf_counter() - start
    if result.pose_landmarks is None:
        return _nobody(width, height, "mediapipe", seconds)
    marks = result.pose_landmarks.landmark
    xy = np.array([(m.x, m.y) for m in marks])
    visibility = np.array([m.visibility for m in marks])
    keypoints, confidence = landmarks_to_openpose(xy, width, height, visibility, min_visibility)
    if not np.isfinite(keypoints).any():
        return _nobody(width, height, "mediapipe", seconds,
                       f"A person was detected but no joint had visibility ≥ {min_visibility:g} inside the image.")
    return PoseResult(keypoints, confidence, width, height, "", "mediapipe", seconds)


def _nobody(width, height, detector, seconds, reason="") -> PoseResult:
    message = (reason or f"No person found in the image ({detector}).") + (
        " The pose map is empty: try a photo showing the upper body, or pick a preset pose / edit the keypoints.")
    pose = empty_pose(width, height, message, detector)
    pose.seconds = seconds
    return pose


# --- optional: controlnet-aux OpenPose (local weights only) ----------------------------------

ANNOTATORS_ENV = "SD_STUDIO_ANNOTATORS_DIR"
OPENPOSE_REPO = "lllyasviel/Annotators"
OPENPOSE_FILE = "body_pose_model.pth"
_OPENPOSE_CACHE_CANDIDATES = ((OPENPOSE_REPO, OPENPOSE_FILE), ("lllyasviel/ControlNet", "annotator/ckpts/body_pose_model.pth"))


def openpose_weights_path(annotators_dir: Optional[str] = None) -> Optional[Path]:
    """Where body_pose_model.pth is on this machine, or None. Looks only at the disk:
    ``annotators_dir`` (else env SD_STUDIO_ANNOTATORS_DIR) and its annotator/ckpts/, then the
    Hugging Face cache of lllyasviel/Annotators (or lllyasviel/ControlNet)."""
    folder = annotators_dir if annotators_dir is not None else os.environ.get(ANNOTATORS_ENV, "")
    if folder:
        for candidate in (Path(folder) / OPENPOSE_FILE, Path(folder) / "annotator" / "ckpts" / OPENPOSE_FILE):
            if candidate.is_file():
                return candidate
    try:
        from huggingface_hub import try_to_load_from_cache  # reads the cache folder, never the network
    except ImportError:  # pragma: no cover
        return None
    for repo, filename in _OPENPOSE_CACHE_CANDIDATES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def openpose_available(annotators_dir: Optional[str] = None) -> bool:
    return openpose_weights_path(annotators_dir) is not None


def openpose_missing_message(annotators_dir: Optional[str] = None) -> str:
    folder = annotators_dir if annotators_dir is not None else os.environ.get(ANNOTATORS_ENV, "")
    where = f"{folder!r} and " if folder else ""
    return (f"OpenPose weights not found (looked in {where}the Hugging Face cache). Download "
            f"{OPENPOSE_FILE} from the Hub repo {OPENPOSE_REPO} where there is internet, e.g. "
            f"`hf download {OPENPOSE_REPO} {OPENPOSE_FILE}`, or copy it into a folder and set "
            f"{ANNOTATORS_ENV} to that folder. (CMU's OpenPose weights are for non-commercial use.) "
            "The 'pose (mediapipe)' preprocessor works without any download.")


_openpose_lock = threading.Lock()
_openpose_models: dict[str, object] = {}


def detect_pose_openpose(image, annotators_dir: Optional[str] = None, device: str = "cpu") -> PoseResult:
    """Every person's OpenPose-18 keypoints with controlnet-aux's OpenPose body network, from
    local weights only. Raises ModelLoadError (message: what to download) when they are absent."""
    import time

    path = openpose_weights_path(annotators_dir)
    if path is None:
        raise ModelLoadError(openpose_missing_message(annotators_dir))
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    with _openpose_lock:
        body = _openpose_models.get(str(path))
        if body is None:
            try:
                import warnings

                with warnings.catch_warnings():  # controlnet-aux's import warns about timm/SAM internals
                    warnings.simplefilter("ignore")
                    from controlnet_aux.open_pose.body import Body  # imports all of controlnet-aux: ~6 s
                body = Body(str(path)).to(device)
            except Exception as error:  # corrupt file, wrong checkpoint…
                raise ModelLoadError(f"Could not load OpenPose weights {path}: {error}") from error
            _openpose_models[str(path)] = body
        start = time.perf_counter()
        candidate, subset = body(np.ascontiguousarray(rgb[:, :, ::-1]))  # the network wants BGR
        seconds = time.perf_counter() - start
        bodies = body.format_body_result(candidate, subset)
    if not bodies:
        return _nobody(width, height, "openpose", seconds)
    keypoints = np.full((len(bodies), N_JOINTS, 2), np.nan)
    confidence = np.zeros((len(bodies), N_JOINTS))
    for p, found in enumerate(bodies):
        for j, keypoint in enumerate(found.keypoints[:N_JOINTS]):
            if keypoint is not None:
                keypoints[p, j] = (keypoint.x, keypoint.y)
                confidence[p, j] = float(np.clip(keypoint.score, 0.0, 1.0)) or 1e-3
    return PoseResult(keypoints, confidence, width, height, "", "openpose", seconds)


DETECTORS = ("mediapipe", "openpose")


def detect_pose(image, detector: str = "mediapipe", **kwargs) -> PoseResult:
    """Dispatch to detect_pose_mediapipe / detect_pose_openpose."""
    if detector == "mediapipe":
        return detect_pose_mediapipe(image, **kwargs)
    if detector == "openpose":
        return detect_pose_openpose(image, **kwargs)
    raise ValueError(f"unknown pose detector {detector!r}; expected one of {DETECTORS}")


# ---------------------------------------------------------------------------------------------
# OpenPose JSON (the pose editor's format)
# ---------------------------------------------------------------------------------------------

def pose_to_dict(pose: PoseResult) -> dict:
    """OpenPose's JSON convention, as ControlNet's pose editors use it: pixel coordinates,
    ``pose_keypoints_2d`` = [x0, y0, c0, x1, y1, c1, …] for the 18 joints; a joint not seen
    is 0, 0, 0."""
    people = []
    for keypoints, confidence in zip(pose.keypoints, pose.confidence):
        flat = []
        for (x, y), c in zip(keypoints, confidence):
            flat += [0.0, 0.0, 0.0] if math.isnan(x) or math.isnan(y) else [round(float(x), 2), round(float(y), 2), round(float(c), 4)]
        people.append({"pose_keypoints_2d": flat})
    return {"version": 1.3, "people": people, "canvas_width": pose.width, "canvas_height": pose.height}


def pose_to_json(pose: PoseResult, indent: Optional[int] = None) -> str:
    return json.dumps(pose_to_dict(pose), indent=indent)


def pose_from_json(data: Union[str, bytes, Mapping], width: Optional[int] = None,
                   height: Optional[int] = None) -> PoseResult:
    """Parse OpenPose JSON (text or an already-parsed dict) into a PoseResult.

    The canvas size comes from ``canvas_width``/``canvas_height``, else from width/height.
    A joint with confidence 0 is "not seen" (NaN). Hand and face keypoints are ignored.
    Raises ValueError with a message saying what is wrong and where.
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise ValueError(f"pose JSON is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], Mapping):
        data = data[0]  # some editors export a list of one frame
    if not isinstance(data, Mapping):
        raise ValueError(f"pose JSON must be an object with a 'people' list, got {type(data).__name__}")
    if "people" not in data:
        raise ValueError("pose JSON has no 'people' list (expected {\"people\": [{\"pose_keypoints_2d\": [x, y, c, …]}], "
                         "\"canvas_width\": W, \"canvas_height\": H})")
    people = data["people"]
    if not isinstance(people, list):
        raise ValueError(f"'people' must be a list, got {type(people).__name__}")

    def size(key, given):
        value = data.get(key, given)
        if value is None:
            raise ValueError(f"pose JSON has no '{key}' (and no size was given to the loader)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value <= 0:
            raise ValueError(f"'{key}' must be a positive integer, got {value!r}")
        return int(value)

    canvas_w, canvas_h = size("canvas_width", width), size("canvas_height", height)
    keypoints = np.full((len(people), N_JOINTS, 2), np.nan)
    confidence = np.zeros((len(people), N_JOINTS))
    for p, person in enumerate(people):
        where = f"people[{p}]"
        if not isinstance(person, Mapping) or "pose_keypoints_2d" not in person:
            raise ValueError(f"{where} must be an object with 'pose_keypoints_2d'")
        flat = person["pose_keypoints_2d"]
        if not isinstance(flat, list):
            raise ValueError(f"{where}.pose_keypoints_2d must be a list of numbers")
        if len(flat) != 3 * N_JOINTS:
            hint = " (that is BODY_25; only OpenPose-18 / COCO-18 is supported)" if len(flat) == 75 else ""
            raise ValueError(f"{where}.pose_keypoints_2d must hold 54 numbers (18 joints × x, y, confidence), "
                             f"got {len(flat)}{hint}")
        for i, value in enumerate(flat):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                joint = OPENPOSE_JOINTS[i // 3]
                raise ValueError(f"{where}.pose_keypoints_2d[{i}] ({joint} {'xyc'[i % 3]}) must be a finite number, got {value!r}")
        triples = np.asarray(flat, dtype=np.float64).reshape(N_JOINTS, 3)
        if (triples[:, 2] < 0).any():
            joint = OPENPOSE_JOINTS[int(np.argmax(triples[:, 2] < 0))]
            raise ValueError(f"{where}: confidence of {joint} is negative")
        seen = triples[:, 2] > 0
        keypoints[p, seen] = triples[seen, :2]
        confidence[p, seen] = np.minimum(triples[seen, 2], 1.0)
    return PoseResult(keypoints, confidence, canvas_w, canvas_h, "", "json")


def save_pose_json(pose: PoseResult, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.write_text(pose_to_json(pose, indent=1))
    return path


def load_pose_json(path: Union[str, Path], width: Optional[int] = None, height: Optional[int] = None) -> PoseResult:
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (JSON) file") from None
    return pose_from_json(text, width, height)


# ---------------------------------------------------------------------------------------------
# Preset poses
# ---------------------------------------------------------------------------------------------

_NAN = (math.nan, math.nan)

# Figures in arbitrary units, y down, facing the camera unless noted (the person's right is
# on the image's left). Order: OPENPOSE_JOINTS. preset_pose() fits their bounding box.
_PRESETS: dict[str, tuple[tuple[float, float], ...]] = {
    "standing": (
        (50, 10), (50, 20), (41, 21), (38, 36), (37, 50), (59, 21), (62, 36), (63, 50),
        (45, 52), (45, 74), (45, 95), (55, 52), (55, 74), (55, 95), (48, 8.5), (52, 8.5), (46, 10), (54, 10),
    ),
    "arms up": (
        (50, 10), (50, 20), (41, 21), (37, 9), (36, -4), (59, 21), (63, 9), (64, -4),
        (45, 52), (45, 74), (45, 95), (55, 52), (55, 74), (55, 95), (48, 8.5), (52, 8.5), (46, 10), (54, 10),
    ),
    "T-pose": (
        (50, 10), (50, 20), (41, 21), (28, 21), (15, 21), (59, 21), (72, 21), (85, 21),
        (45, 52), (45, 74), (45, 95), (55, 52), (55, 74), (55, 95), (48, 8.5), (52, 8.5), (46, 10), (54, 10),
    ),
    # side view, walking to the image's right: the left side faces the camera, right eye/ear hidden
    "walking": (
        (55, 10), (50, 20), (49, 21), (45, 35), (42, 47), (51, 21), (56, 35), (60, 46),
        (49, 52), (46, 73), (40, 93), (51, 52), (56, 72), (58, 95), _NAN, (53, 8.5), _NAN, (49, 9.5),
    ),
    # side view, seated facing the image's right: thighs horizontal, shins vertical
    "sitting": (
        (55, 12), (50, 22), (49, 23), (50, 40), (58, 50), (51, 23), (52, 40), (60, 50),
        (49, 58), (69, 60), (69, 90), (51, 58), (71, 60), (71, 90), _NAN, (53, 10.5), _NAN, (49, 11.5),
    ),
}
PRESET_POSES = tuple(_PRESETS)


def preset_pose(name: str, width: int, height: int, margin: float = 0.08) -> PoseResult:
    """A preset pose (see PRESET_POSES) fitted into a width × height canvas: aspect ratio kept,
    centred, ``margin`` (fraction of each side) left free around the figure's joints."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset pose {name!r}; choose one of {', '.join(PRESET_POSES)}")
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    points = np.array(_PRESETS[name], dtype=np.float64)
    lo, hi = np.nanmin(points, axis=0), np.nanmax(points, axis=0)
    extent = np.maximum(hi - lo, 1e-9)
    available = np.array([width, height], dtype=np.float64) * (1 - 2 * margin)
    scale = float(np.min(available / extent))
    offset = (np.array([width, height]) - extent * scale) / 2.0
    keypoints = (points - lo) * scale + offset
    confidence = np.where(np.isnan(points).any(axis=1), 0.0, 1.0)
    return PoseResult(keypoints, confidence, width, height, "", "preset")
