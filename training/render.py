"""Batch rendering of scenes with signed-distance functions in torch (GPU or CPU, same code).

Every shape is a signed distance d(p) (negative inside, in pixels) around its centre; the
pixel's coverage is clamp(0.5 − d, 0, 1), a one-pixel antialiased edge, and objects are
composited in order: image ← image·(1 − a) + colour·a.
SDF formulas follow Inigo Quilez's 2D distance functions (y flipped to point up where noted).
"""
from __future__ import annotations

import math

import torch

from pipelines.preprocess import JOINT_INDEX as J
from training import pose_prior

SQRT3 = math.sqrt(3.0)


def _length(x, y):
    return torch.sqrt(x * x + y * y)


def _box(x, y, half_w, half_h):
    dx, dy = x.abs() - half_w, y.abs() - half_h
    outside = _length(dx.clamp(min=0), dy.clamp(min=0))
    return outside + torch.maximum(dx, dy).clamp(max=0)


def sdf_circle(x, y, r):
    return _length(x, y) - r


def sdf_square(x, y, r):
    return _box(x, y, 0.85 * r, 0.85 * r)


def sdf_ring(x, y, r):
    return (_length(x, y) - 0.72 * r).abs() - 0.28 * r


def sdf_diamond(x, y, r):
    return (x.abs() + y.abs() - 1.05 * r) / math.sqrt(2.0)


def sdf_cross(x, y, r):
    arm = 0.34 * r
    return torch.minimum(_box(x, y, r, arm), _box(x, y, arm, r))


def sdf_triangle(x, y, r):
    """Equilateral triangle pointing up, its bounding box centred on the origin."""
    circum = 1.15 * r
    half_side = circum * SQRT3 / 2
    px = x.abs() - half_side
    py = -y + circum / 4 + circum / 2  # y up; +R/4 centres the box (−R/2 … R); +R/2 is iq's r/√3
    fold = (px + SQRT3 * py) > 0
    px, py = torch.where(fold, (px - SQRT3 * py) / 2, px), torch.where(fold, (-SQRT3 * px - py) / 2, py)
    px = px - torch.minimum(torch.maximum(px, -2 * half_side), torch.zeros_like(px))
    return -_length(px, py) * torch.sign(py)


def sdf_star(x, y, r):
    """Five-pointed star pointing up, inner/outer radius ratio 0.5."""
    outer, inner_ratio = 1.2 * r, 0.5
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = x.abs(), -y  # y up
    for kx in (k1x, -k1x):  # reflect into one fundamental wedge
        dot = (kx * px + k1y * py).clamp(min=0)
        px, py = px - 2 * dot * kx, py - 2 * dot * k1y
    px, py = px.abs(), py - outer
    bax, bay = inner_ratio * -k1y, inner_ratio * k1x - 1
    h = torch.minimum(((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(min=0), outer)
    return _length(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)


SHAPE_SDFS = {
    "circle": sdf_circle, "square": sdf_square, "triangle": sdf_triangle, "star": sdf_star,
    "ring": sdf_ring, "diamond": sdf_diamond, "cross": sdf_cross,
}


def segment_distance(px, py, a, b):
    """Distance from pixels to the segment a→b; a, b: (n, 2) → (n, H, W)."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    bx, by = b[:, 0, None, None], b[:, 1, None, None]
    ex, ey = bx - ax, by - ay
    t = (((px - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey + 1e-6)).clamp(0, 1)
    return _length(px - ax - t * ex, py - ay - t * ey)


# The figure's body: capsules between joints (radius in units of the figure's height).
_BODY_CAPSULES = (
    (("neck",), ("right_hip", "left_hip"), 0.075),       # torso, neck to mid-hip
    (("right_shoulder",), ("left_shoulder",), 0.04),
    (("right_hip",), ("left_hip",), 0.05),
    (("neck",), ("nose",), 0.03),
    (("right_shoulder",), ("right_elbow",), 0.032), (("right_elbow",), ("right_wrist",), 0.03),
    (("left_shoulder",), ("left_elbow",), 0.032), (("left_elbow",), ("left_wrist",), 0.03),
    (("right_hip",), ("right_knee",), 0.042), (("right_knee",), ("right_ankle",), 0.038),
    (("left_hip",), ("left_knee",), 0.042), (("left_knee",), ("left_ankle",), 0.038),
)


def _joint(keypoints, names):
    return torch.stack([keypoints[:, J[n]] for n in names]).mean(0)


def sdf_figure(px, py, keypoints, heights):
    """Signed distance to a person: head disc on the nose plus limb capsules."""
    h = heights[:, None, None]
    nose = keypoints[:, J["nose"]]
    d = _length(px - nose[:, 0, None, None], py - nose[:, 1, None, None]) - pose_prior.HEAD_RADIUS * h
    for a, b, radius in _BODY_CAPSULES:
        d = torch.minimum(d, segment_distance(px, py, _joint(keypoints, a), _joint(keypoints, b)) - radius * h)
    return d


def pixel_grid(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x, y), each (1, size, size)."""
    c = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    return c[None, None, :].expand(1, size, size), c[None, :, None].expand(1, size, size)


def coverage(d: torch.Tensor) -> torch.Tensor:
    return (0.5 - d).clamp(0, 1)
