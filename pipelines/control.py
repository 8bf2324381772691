"""Control units → control maps at the generation size (the preprocessors live in
preprocess.py / preprocess_extra.py / pose.py; this is the manager's one call into them)."""
from __future__ import annotations

from PIL import Image

from .core.requests import ControlUnit


def control_maps(units: tuple[ControlUnit, ...], width: int, height: int) -> tuple[list[Image.Image], list[str]]:
    """Each unit's preprocessor applied to its image fitted to width × height; notes for what
    the user should know (e.g. no person found: the map is empty, so that unit steers nothing)."""
    from .preprocess_extra import control_map  # imported on first use: mediapipe & co. load slowly

    maps, notes = [], []
    for index, unit in enumerate(units):
        result = control_map(unit.preprocessor, unit.image, width, height, unit.resize_mode, **dict(unit.params))
        if result.message:
            notes.append(f"ControlNet unit {index + 1} ({unit.preprocessor}): {result.message}")
        maps.append(result.image)
    return maps, notes
