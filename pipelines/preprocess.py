"""Control-map preprocessors shared by the app and by training (so both see the same maps).

- canny: OpenCV's Canny edge detector, returned as a 3-channel RGB control map (white edges
  on black), as the ControlNet canny models expect.
- draw_openpose: the standard ControlNet OpenPose body drawing for OpenPose-18 keypoints:
  17 limbs as filled ellipses in 60 % of the limb's colour, then every joint as a disc of
  radius 4 in its full colour, on black. This matches controlnet-aux's body drawing.

This module never imports gradio (pipelines/ is UI-free).
"""
from __future__ import annotations

import math
from typing import Union

import cv2
import numpy as np
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray]

# OpenPose-18 (COCO-18) body keypoints, in OpenPose's order. "right" is the person's right,
# which is on the image's left for someone facing the camera.
OPENPOSE_JOINTS = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
JOINT_INDEX = {name: i for i, name in enumerate(OPENPOSE_JOINTS)}

# The 17 limbs ControlNet's OpenPose maps draw (0-based joint indices), in drawing order;
# limb i is drawn in OPENPOSE_COLOURS[i].
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),        # shoulders, arms
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),  # torso sides, legs
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),          # neck to nose, eyes, ears
)

# One colour per joint (and per limb, by position), RGB: a hue sweep red → magenta.
OPENPOSE_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_BRIGHTNESS = 0.6  # limbs are drawn dimmer than joints
STICK_WIDTH = 4  # half the limb thickness, in pixels (ControlNet's fixed value)
JOINT_RADIUS = 4


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """PIL image or array (H×W, H×W×3, H×W×4) → contiguous uint8 H×W×3 RGB."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def canny_edges(image: ImageLike, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges of an RGB image as an H×W uint8 map of 0/255.

    Hysteresis: gradients above `high` start edges, those above `low` continue them.
    OpenCV takes the strongest channel's gradient on colour input, so two colours of equal
    grey level still give an edge.
    """
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds need 0 <= low <= high, got low={low}, high={high}")
    return cv2.Canny(to_rgb_array(image), float(low), float(high))


def canny(image: ImageLike, low: int = 100, high: int = 200) -> Image.Image:
    """The canny ControlNet control map: white edges on black, RGB."""
    edges = canny_edges(image, low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def draw_openpose_array(keypoints: np.ndarray, width: int, height: int,
                        stick_width: int = STICK_WIDTH, joint_radius: int = JOINT_RADIUS) -> np.ndarray:
    """Draw OpenPose-18 bodies on black; returns H×W×3 uint8 RGB.

    keypoints: (18, 2) or (people, 18, 2) pixel coordinates (x, y); NaN marks a joint that
    was not found, and every limb touching it is skipped.
    """
    people = np.asarray(keypoints, dtype=np.float64)
    if people.ndim == 2:
        people = people[None]
    if people.shape[1:] != (len(OPENPOSE_JOINTS), 2):
        raise ValueError(f"keypoints must be (18, 2) or (N, 18, 2), got {people.shape}")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        found = ~np.isnan(person).any(axis=1)
        for (a, b), colour in zip(OPENPOSE_LIMBS, OPENPOSE_COLOURS):
            if found[a] and found[b]:
                _fill_limb(canvas, person[a], person[b], colour, stick_width)
        for (x, y), ok, colour in zip(person, found, OPENPOSE_COLOURS):
            if ok:
                cv2.circle(canvas, (int(x), int(y)), joint_radius, colour, thickness=-1)
    return canvas


def draw_openpose(keypoints: np.ndarray, width: int, height: int, **kwargs) -> Image.Image:
    """The pose ControlNet control map as a PIL RGB image (see draw_openpose_array)."""
    return Image.fromarray(draw_openpose_array(keypoints, width, height, **kwargs))


def _fill_limb(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, colour, stick_width: int) -> None:
    """A limb is an ellipse spanning the two joints: semi-axes (length / 2, stick_width),
    centred between them and turned along the limb (OpenCV angles are in whole degrees)."""
    centre = (start + end) / 2.0
    dx, dy = start - end  # measured from the end joint, so int() truncation matches ControlNet's maps
    half_length = math.hypot(dx, dy) / 2.0
    angle = math.degrees(math.atan2(dy, dx))
    polygon = cv2.ellipse2Poly((int(centre[0]), int(centre[1])), (int(half_length), stick_width),
                               int(angle), 0, 360, 1)
    dim = [int(c * LIMB_BRIGHTNESS) for c in colour]
    cv2.fillConvexPoly(canvas, polygon, dim)
