"""SHARP's render cameras: resolution rules, intrinsics and the official trajectories.

Follows ml-sharp's ``utils/camera.py`` and ``cli/render.py`` (commit 1eaa046):

* render resolution = the source image size; if the height is above 3000 px both sides are halved
  (integer division); odd sides are then rounded up to even (mp4 players need even sizes);
* intrinsics are built at the source size with ``cx = (W - 1)/2, cy = (H - 1)/2`` (not W/2 as in
  unprojection) and rows 0 and 1 are scaled by render/source size, principal point included;
* eye positions: ``max_lateral = 0.08 * diag * min_depth``, ``max_medial = 0.15 * min_depth`` with
  ``diag = sqrt((W/f)^2 + (H/f)^2)`` and ``min_depth`` the 0.1% quantile of the positive Gaussian z;
* every camera looks at ``(0, 0, max(2, q10))`` (q10 = 10% depth quantile) with world up ``(0, -1, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sharp_export.reference.gaussians import Gaussians3D, SceneMeta

TrajectoryKind = Literal["rotate_forward", "swipe", "shake", "rotate"]
TRAJECTORY_KINDS: tuple[str, ...] = ("rotate_forward", "swipe", "shake", "rotate")
MAX_DISPARITY = 0.08  # TrajectoryParams.max_disparity
MAX_ZOOM = 0.15  # TrajectoryParams.max_zoom
DISTANCE_M = 0.0  # TrajectoryParams.distance_m: eyes move in the z = 0 plane
NEAR_QUANTILE, FOCUS_QUANTILE = 0.001, 0.1
MIN_DEPTH_FOCUS = 2.0  # metres
LARGE_IMAGE_HEIGHT = 3000  # above this the render is half size
VIDEO_FPS = 30


@dataclass
class Camera:
    """A pinhole camera for one rendered frame."""

    viewmat: torch.Tensor  # [4, 4] world -> camera, OpenCV axes (x right, y down, z forward)
    K: torch.Tensor  # [3, 3] pixel intrinsics at (width, height)
    width: int
    height: int


def render_resolution(meta: SceneMeta) -> tuple[int, int, float]:
    """(width, height, scale) SHARP renders a scene at; ``scale`` is 0.5 for halved large images, else 1."""
    width, height, scale = meta.width, meta.height, 1.0
    if height > LARGE_IMAGE_HEIGHT:
        width, height, scale = width // 2, height // 2, 0.5
    return width + width % 2, height + height % 2, scale


def scene_camera_intrinsics(meta: SceneMeta, width: int, height: int) -> torch.Tensor:
    """K [3, 3] for rendering ``meta``'s scene at (width, height), built exactly as ml-sharp builds it."""
    K = torch.tensor(
        [[meta.f_px, 0.0, (meta.width - 1) / 2.0], [0.0, meta.f_px, (meta.height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float32,
    )
    K[0] *= width / meta.width
    K[1] *= height / meta.height
    return K


def depth_quantiles(z: torch.Tensor, quantiles: tuple[float, ...]) -> list[float]:  # z: [N] camera depths
    """torch.quantile's 'linear' rule on the positive depths, for any N (torch.quantile stops at 16M).

    Same arithmetic as torch.quantile: ranks q*(n-1) in the input dtype, the two neighbours found with
    kthvalue, then torch.lerp.
    """
    z = z.reshape(-1)
    z = z[z > 0]
    if z.numel() == 0:
        raise ValueError("no Gaussian has a positive depth; the scene is behind the camera")
    q = torch.tensor(quantiles, dtype=z.dtype)
    ranks = q * (z.numel() - 1)
    below = ranks.floor()
    result = []
    for rank, low in zip(ranks, below, strict=True):
        lo = int(low)
        hi = min(lo + 1, z.numel() - 1)
        v_lo = torch.kthvalue(z, lo + 1).values
        v_hi = torch.kthvalue(z, hi + 1).values if hi != lo else v_lo
        result.append(float(torch.lerp(v_lo, v_hi, rank - low)))
    return result


def eye_positions(kind: str, offset_xyz: np.ndarray, num_frames: int) -> list[torch.Tensor]:
    """Camera centres of one trajectory (ml-sharp create_eye_trajectory_*, one repeat)."""
    off_x, off_y, off_z = (float(v) for v in offset_xyz)
    d = DISTANCE_M
    two_pi = 2.0 * np.pi
    if kind == "swipe":
        points = [(x, 0.0, d) for x in np.linspace(-off_x, off_x, num_frames)]
    elif kind == "shake":
        n_h = num_frames // 2
        points = [(off_x * np.sin(two_pi * t), 0.0, d) for t in np.linspace(0, 1, n_h)]
        points += [(0.0, off_y * np.sin(two_pi * t), d) for t in np.linspace(0, 1, num_frames - n_h)]
    elif kind == "rotate":
        points = [(off_x * np.sin(two_pi * t), off_y * np.cos(two_pi * t), d) for t in np.linspace(0, 1, num_frames)]
    elif kind == "rotate_forward":
        points = [
            (off_x * np.sin(two_pi * t), 0.0, d + off_z * (1.0 - np.cos(two_pi * t)) / 2)
            for t in np.linspace(0, 1, num_frames)
        ]
    else:
        raise ValueError(f"unknown trajectory '{kind}'; expected one of {', '.join(TRAJECTORY_KINDS)}")
    return [torch.tensor(p, dtype=torch.float32) for p in points]


def look_at_viewmat(eye: torch.Tensor, target: torch.Tensor, world_up: torch.Tensor) -> torch.Tensor:
    """World -> camera [4, 4] for a camera at ``eye`` ([3]) looking at ``target`` ([3]), OpenCV axes.

    Columns of the camera-to-world rotation are right, down, front with front = normalise(target - eye),
    right = normalise(front x up), down = front x right; the extrinsics are [R^T | -R^T eye].
    """
    front = target - eye
    front = front / front.norm()
    right = torch.linalg.cross(front, world_up)
    right = right / right.norm()
    down = torch.linalg.cross(front, right)
    rotation = torch.stack([right, down, front], dim=-1)
    viewmat = torch.eye(4, dtype=eye.dtype)
    viewmat[:3, :3] = rotation.T
    viewmat[:3, 3] = -rotation.T @ eye
    return viewmat


def make_trajectory(
    gaussians: Gaussians3D,
    meta: SceneMeta,
    kind: TrajectoryKind = "rotate_forward",
    num_frames: int = 60,
    resolution: tuple[int, int] | None = None,
) -> list[Camera]:
    """The cameras of SHARP's ``kind`` trajectory for this scene (metric OpenCV camera space, batch of one).

    ``resolution`` (width, height) overrides the render size; the intrinsics scale with it.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if kind not in TRAJECTORY_KINDS:
        raise ValueError(f"unknown trajectory '{kind}'; expected one of {', '.join(TRAJECTORY_KINDS)}")
    z = gaussians.mean_vectors[0, :, 2].detach().cpu()
    min_depth, focus_depth = depth_quantiles(z, (NEAR_QUANTILE, FOCUS_QUANTILE))

    diagonal = np.sqrt((meta.width / meta.f_px) ** 2 + (meta.height / meta.f_px) ** 2)
    max_lateral = MAX_DISPARITY * diagonal * min_depth
    max_medial = MAX_ZOOM * min_depth
    offsets = np.array([max_lateral, max_lateral, max_medial])

    if resolution is None:
        width, height, _ = render_resolution(meta)
    else:
        width, height = resolution
    K = scene_camera_intrinsics(meta, width, height)
    target = torch.tensor([0.0, 0.0, max(MIN_DEPTH_FOCUS, focus_depth)])
    world_up = torch.tensor([0.0, -1.0, 0.0])
    return [
        Camera(viewmat=look_at_viewmat(eye, target, world_up), K=K.clone(), width=width, height=height)
        for eye in eye_positions(kind, offsets, num_frames)
    ]
