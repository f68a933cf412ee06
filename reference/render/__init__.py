"""Rendering SHARP scenes anywhere: a pure-PyTorch rasterizer with gsplat 1.5.3 "classic" semantics,
a lazy gsplat (CUDA) backend, SHARP's cameras and trajectories, and video writing.
"""

from sharp_export.reference.render.cameras import (
    TRAJECTORY_KINDS,
    Camera,
    make_trajectory,
    render_resolution,
    scene_camera_intrinsics,
)
from sharp_export.reference.render.gsplat_backend import (
    GsplatUnavailableError,
    gsplat_available,
    linear_to_srgb,
    rasterize,
    rasterize_gsplat,
    render_scene,
    resolve_backend,
)
from sharp_export.reference.render.torch_rasterizer import RenderOutput, rasterize_torch
from sharp_export.reference.render.video import render_trajectory, turbo_colormap

__all__ = [
    "TRAJECTORY_KINDS",
    "Camera",
    "GsplatUnavailableError",
    "RenderOutput",
    "gsplat_available",
    "linear_to_srgb",
    "make_trajectory",
    "rasterize",
    "rasterize_gsplat",
    "rasterize_torch",
    "render_resolution",
    "render_scene",
    "render_trajectory",
    "resolve_backend",
    "scene_camera_intrinsics",
    "turbo_colormap",
]
