"""The ControlNet extension's API: `alwayson_scripts.controlnet.args` units → our Control,
its module and model names, and /controlnet/detect."""
from __future__ import annotations

import re
from pathlib import Path

from pipelines.preprocess_extra import PREPROCESSORS, available_preprocessors
from pipelines.core.requests import MAX_CONTROL_UNITS, RESIZE_MODES, Control, ControlUnit

from .errors import ApiError
from .images import decode_image

# The extension's module names → our preprocessors (ours are accepted as they are too).
# OpenPose modules use the OpenPose detector when its weights are on disk, else mediapipe's
# (both draw the same OpenPose-18 body skeleton).
MODULES = {
    "none": "none",
    "canny": "canny",
    "openpose": "pose",
    "openpose_full": "pose",
    "dw_openpose_full": "pose",
    "lineart_standard": "lineart standard",
    "lineart_standard (from white bg & black line)": "lineart standard",
    "shuffle": "shuffle",
}
# threshold_a / threshold_b → our preprocessor parameters (values ≤ -1 mean "the default").
THRESHOLDS = {"canny": ("low", "high"), "pose (mediapipe)": ("min_visibility", None),
              "lineart standard": ("gaussian_sigma", "intensity_threshold"), "shuffle": ("f", "seed")}
RESIZE = {"just resize": "just resize", "crop and resize": "crop and resize", "resize and fill": "resize and fill",
          "inner fit (scale to fit)": "crop and resize", "outer fit (shrink to fit)": "resize and fill",
          "envelope (outer fit)": "resize and fill"}
CONTROL_MODES = {0: "balanced", 1: "my prompt is more important", 2: "controlnet is more important"}
_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")


def _pose() -> str:
    return "pose (openpose)" if "pose (openpose)" in available_preprocessors() else "pose (mediapipe)"


def module_names() -> list[str]:
    return list(MODULES) + [name for name in available_preprocessors() if name not in MODULES]


def resolve_module(name) -> str:
    if not isinstance(name, str):
        raise ApiError(422, "ControlNet module must be text.")
    ours = MODULES.get(name.strip().lower(), name.strip())
    ours = _pose() if ours == "pose" else ours
    if ours not in available_preprocessors():
        raise ApiError(422, f"Unknown ControlNet module {name!r}. Choose one of: {', '.join(module_names())} "
                            "(GET /controlnet/module_list).")
    return ours


def model_name(source: str) -> str:
    path = Path(source)
    return path.stem if path.suffix in (".safetensors", ".ckpt", ".pth") else path.name if path.is_absolute() else source


def resolve_model(name, catalogue: list[str]) -> str:
    if not isinstance(name, str) or name.strip() in ("", "None", "none"):
        raise ApiError(422, "Each enabled ControlNet unit needs a model: one of GET /controlnet/model_list.")
    wanted = _HASH.sub("", name.strip()).lower()  # A1111 titles end with " [hash]"
    for source in catalogue:
        if wanted in (model_name(source).lower(), source.lower() if not Path(source).is_absolute() else None):
            return source
    names = ", ".join(model_name(s) for s in catalogue) or "none on this server"
    raise ApiError(422, f"Unknown ControlNet model {name!r}. Choose one of: {names} (GET /controlnet/model_list).")


def _params(module: str, unit: dict) -> tuple:
    params = []
    for key, ours in zip(("threshold_a", "threshold_b"), THRESHOLDS.get(module, ())):
        value = unit.get(key)
        if ours is None or value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value <= -1):
            continue
        spec = PREPROCESSORS[module].params[ours]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec.minimum <= value <= spec.maximum:
            raise ApiError(422, f"ControlNet {key} for {module} ({spec.label}) must be a number in "
                                f"[{spec.minimum:g}, {spec.maximum:g}]; got {value!r}.")
        params.append((ours, value))
    return tuple(params)


def _unit_image(unit: dict):
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):  # the extension's {"image": …, "mask": …}
        if image.get("mask"):
            raise ApiError(422, "ControlNet unit masks are not supported by this server.")
        image = image.get("image")
    if unit.get("mask") or unit.get("mask_image"):
        raise ApiError(422, "ControlNet unit masks are not supported by this server.")
    return image or None


def units(scripts, width, height, init_image, max_pixels: int, catalogue: list[str]) -> Control | None:
    """alwayson_scripts → Control (None when no unit is enabled). A unit without an image uses
    the img2img init image, as the extension does."""
    if scripts in (None, {}):
        return None
    if not isinstance(scripts, dict):
        raise ApiError(422, "alwayson_scripts must be an object of script names to {\"args\": [...]}.")
    entry = next((value for key, value in scripts.items() if key.lower() == "controlnet"), None)
    if entry is None:
        return None
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list) or not all(isinstance(unit, dict) for unit in args):
        raise ApiError(422, "alwayson_scripts.controlnet.args must be a list of unit objects.")
    built, modes = [], set()
    for index, unit in enumerate(args):
        if not unit.get("enabled", True):
            continue
        what = f"ControlNet unit {index + 1}"
        module = resolve_module(unit.get("module", "none"))
        text = _unit_image(unit)
        if text is None and init_image is None:
            raise ApiError(422, f"{what} needs an image (base64).")
        image = decode_image(text, f"{what} image", max_pixels) if text is not None else init_image
        resize = unit.get("resize_mode", "Crop and Resize")
        resize = RESIZE_MODES[resize] if isinstance(resize, int) and not isinstance(resize, bool) and 0 <= resize < 3 \
            else RESIZE.get(str(resize).lower())
        if resize is None:
            raise ApiError(422, f"{what}: unknown resize_mode {unit.get('resize_mode')!r}. "
                                "Choose Just Resize, Crop and Resize or Resize and Fill.")
        mode = unit.get("control_mode", 0)
        mode = CONTROL_MODES.get(mode, str(mode).lower()) if not isinstance(mode, bool) else str(mode)
        if mode == "my prompt is more important" or mode not in CONTROL_MODES.values():
            raise ApiError(422, f"{what}: control_mode {unit.get('control_mode')!r} is not supported: use Balanced "
                                "(0) or ControlNet is more important (2, the guess mode).")
        modes.add(mode)
        built.append(ControlUnit(
            model=resolve_model(unit.get("model"), catalogue), image=image, preprocessor=module,
            params=_params(module, unit), weight=unit.get("weight", 1.0), start=unit.get("guidance_start", 0.0),
            end=unit.get("guidance_end", 1.0), resize_mode=resize))
    if not built:
        return None
    if len(built) > MAX_CONTROL_UNITS:
        raise ApiError(422, f"Use at most {MAX_CONTROL_UNITS} enabled ControlNet units, got {len(built)}.")
    if len(modes) > 1:
        raise ApiError(422, "All ControlNet units must use the same control_mode here (the guess mode is per request).")
    return Control(units=tuple(built), guess_mode=modes == {"controlnet is more important"})


def without_images(entry):
    if isinstance(entry, dict) and isinstance(entry.get("args"), list):
        return {**entry, "args": [{**u, "image": None, "input_image": None} if isinstance(u, dict) else u
                                  for u in entry["args"]]}
    return entry
