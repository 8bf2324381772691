"""Control units → control maps at the generation size (the preprocessors live in
preprocess.py / preprocess_extra.py / pose.py; this is the manager's one call into them)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .core.requests import ControlUnit
from .noise import to_device_without_sync


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


def maps_on_device(maps: list[Image.Image], device: torch.device) -> list[torch.Tensor]:
    """The maps as diffusers' control image processor makes them from a PIL image — (1, 3, H,
    W) float32 RGB bytes / 255, bit for bit — but made on the device: 1 byte per value crosses
    from pinned memory instead of a float32 array built on the host and copied with a sync, all
    while the GPU waits for the request's first step. The pipeline's processor passes such a
    tensor through (its resize to the size it already has is the identity)."""
    tensors = []
    for image in maps:
        pixels = to_device_without_sync(torch.from_numpy(np.array(image.convert("RGB"))), device)
        tensors.append(pixels.permute(2, 0, 1)[None].contiguous().float() / 255)
    return tensors
