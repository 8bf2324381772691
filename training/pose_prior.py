"""A small prior over OpenPose-18 skeletons: a few named poses, each a set of limb angles
plus Gaussian jitter, built into pixel keypoints for a figure of a given height.

Angles are in degrees from straight down, positive towards the image's right. The figure
faces the viewer, so its right side is on the image's left (OpenPose's convention).
"""
from __future__ import annotations

import torch

from pipelines.preprocess import JOINT_INDEX as J

# Caption phrase for each pose, in pose-id order.
POSES = ("standing", "with arms raised", "with arms out", "waving", "walking", "sitting")

# Limb angles per pose: right upper arm, right forearm, left upper arm, left forearm,
# right thigh, right shin, left thigh, left shin.
_LIMB_ANGLES = {
    "standing":         (-12, -8, 12, 8, -4, -2, 4, 2),
    "with arms raised": (-150, -165, 150, 165, -5, -3, 5, 3),
    "with arms out":    (-90, -90, 90, 90, -5, -3, 5, 3),
    "waving":           (-12, -8, 115, 165, -4, -2, 4, 2),   # left arm up, forearm up
    "walking":          (-20, -10, 20, 35, 25, 5, -20, -35),  # stride towards image right
    "sitting":          (15, 60, 15, 60, 90, 5, 90, 5),       # thighs forward, shins down
}
# Poses seen from the side are drawn narrower; those with a direction may be mirrored.
_WIDTH = {"walking": 0.5, "sitting": 0.6}
_MIRRORABLE = {"waving", "walking", "sitting"}
ANGLE_JITTER_DEG = 7.0

# Body proportions in units of the figure's height (neck at the origin, y down).
NOSE_Y = -0.10
HEAD_RADIUS = 0.075
SHOULDER_HALF = 0.11
HIP_HALF = 0.065
TORSO = 0.33
UPPER_ARM, FOREARM = 0.16, 0.15
THIGH, SHIN = 0.23, 0.23


def _direction(deg: torch.Tensor) -> torch.Tensor:
    rad = torch.deg2rad(deg)
    return torch.stack([torch.sin(rad), torch.cos(rad)], dim=-1)


def skeletons(pose_ids: torch.Tensor, heights: torch.Tensor, centres: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """Keypoints (n, 18, 2) in pixels for figures of `heights` px whose bounding box (head
    included) is centred on `centres` (n, 2)."""
    n = len(pose_ids)
    names = [POSES[i] for i in pose_ids.tolist()]
    angles = torch.tensor([_LIMB_ANGLES[p] for p in names], dtype=torch.float32)
    angles = angles + ANGLE_JITTER_DEG * torch.randn(n, 8, generator=generator)
    mirror = torch.tensor([p in _MIRRORABLE for p in names]) & (torch.rand(n, generator=generator) < 0.5)
    # Mirroring a facing figure swaps which side does what: negate angles, swap right/left.
    mirrored = -angles[:, [2, 3, 0, 1, 6, 7, 4, 5]]
    angles = torch.where(mirror[:, None], mirrored, angles)
    width = torch.tensor([_WIDTH.get(p, 1.0) for p in names])[:, None]
    h = heights[:, None]

    k = torch.zeros(n, 18, 2)
    neck = torch.zeros(n, 2)
    k[:, J["neck"]] = neck
    k[:, J["nose"]] = neck + torch.tensor([0.0, NOSE_Y]) * h
    narrow = torch.cat([width, torch.ones_like(width)], 1) * h  # side-on poses: narrower shoulders and hips
    for side, sign in (("right", -1.0), ("left", 1.0)):
        k[:, J[f"{side}_shoulder"]] = neck + torch.tensor([sign * SHOULDER_HALF, 0.02]) * narrow
        k[:, J[f"{side}_hip"]] = neck + torch.tensor([sign * HIP_HALF, TORSO]) * narrow
        k[:, J[f"{side}_eye"]] = k[:, J["nose"]] + torch.tensor([sign * 0.025, -0.02]) * h
        k[:, J[f"{side}_ear"]] = k[:, J["nose"]] + torch.tensor([sign * 0.05, -0.005]) * h
    chains = (("right_shoulder", "right_elbow", "right_wrist", 0, UPPER_ARM, FOREARM),
              ("left_shoulder", "left_elbow", "left_wrist", 2, UPPER_ARM, FOREARM),
              ("right_hip", "right_knee", "right_ankle", 4, THIGH, SHIN),
              ("left_hip", "left_knee", "left_ankle", 6, THIGH, SHIN))
    for root, mid, tip, a, first, second in chains:
        k[:, J[mid]] = k[:, J[root]] + first * h * _direction(angles[:, a])
        k[:, J[tip]] = k[:, J[mid]] + second * h * _direction(angles[:, a + 1])

    # Centre the figure's bounding box (joints plus the head disc) on the requested point.
    head_top = k[:, J["nose"], 1] - HEAD_RADIUS * heights
    lo = torch.stack([k[:, :, 0].min(1).values, torch.minimum(k[:, :, 1].min(1).values, head_top)], 1)
    hi = k.max(1).values
    return k + (centres - (lo + hi) / 2)[:, None, :]
