"""Render-space parity: the same few camera poses rendered from reference and candidate Gaussians.

Gaussian-space errors say how far each number moved; renders say whether anyone can see it. Each view
gets PSNR and SSIM (lower bounds), LPIPS (upper bound, when its weights are installed) and the relative
depth error where the reference is opaque (information only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sharp_export.errors import UserInputError
from sharp_export.parity import metrics
from sharp_export.parity.lpips import lpips_status
from sharp_export.parity.tolerances import Tolerance
from sharp_export.reference.render import make_trajectory, render_scene

# Named poses along the 60-frame rotate_forward trajectory, as fractions of the frame range.
# rotate_forward is periodic (eye(t=0) == eye(t=1) == origin), so "last" repeats "first";
# "three_quarter" is the useful fourth view.
POSES = {"first": 0.0, "quarter": 0.25, "middle": 0.5, "three_quarter": 0.75, "last": 1.0}
DEFAULT_POSES = ("first", "quarter", "middle", "three_quarter")

# view metric -> (tolerance key, bound): PSNR/SSIM must reach the value, LPIPS must stay below it.
_GATES = {"psnr_db": ("psnr_min_db", "min"), "ssim": ("ssim_min", "min"), "lpips": ("lpips_max", "max")}


@dataclass
class ViewResult:
    """One metric of one rendered view."""

    view: str  # pose name
    metric: str  # "psnr_db", "ssim", "lpips" or "depth_rel"
    value: float | None  # None when the metric could not be computed (LPIPS unavailable)
    tolerance: float | None  # None: information only
    bound: str  # "min": value must be >= tolerance; "max": value must be <= tolerance
    status: str  # PASS, FAIL, INFO or UNAVAILABLE
    margin: float  # distance to the tolerance on the passing side (negative: failing); nan if not gated
    message: str  # why it failed / what is unavailable / extra statistics
    note: str = ""  # provenance of the tolerance

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"

    @property
    def required(self) -> float:
        """The tolerance that would just have passed: the observed value itself."""
        return math.nan if self.value is None else self.value


def pose_index(name: str, num_frames: int) -> int:
    if name not in POSES:
        raise UserInputError(f"unknown view pose '{name}'", fix=f"use one of {', '.join(POSES)}")
    return int(round(POSES[name] * (num_frames - 1)))


def _gated(view: str, metric: str, value: float, tolerances: Mapping[str, Tolerance], extra: str = "") -> ViewResult:
    key, bound = _GATES[metric]
    tol = tolerances.get(key)
    if tol is None:
        return ViewResult(view, metric, value, None, bound, "INFO", math.nan, extra)
    margin = value - tol.value if bound == "min" else tol.value - value
    if math.isnan(value):
        passed = False
    else:
        passed = margin >= 0
    message = extra
    if not passed:
        sign = ">=" if bound == "min" else "<="
        message = f"view {view} {metric}: {value:.4g} not {sign} {tol.value:.4g} (margin {margin:.3g})"
        message += f"; {extra}" if extra else ""
    status = "PASS" if passed else "FAIL"
    return ViewResult(view, metric, value, tol.value, bound, status, margin, message, tol.note)


def _nonfinite(x: np.ndarray | torch.Tensor) -> int:
    return int((~torch.isfinite(metrics.to_float64(x))).sum())


def compare_views(
    ref_images: Sequence[np.ndarray | torch.Tensor],  # each [H, W, 3] sRGB in [0, 1]
    cand_images: Sequence[np.ndarray | torch.Tensor],  # each [H, W, 3]
    ref_depths: Sequence[np.ndarray | torch.Tensor] | None = None,  # each [H, W]
    cand_depths: Sequence[np.ndarray | torch.Tensor] | None = None,  # each [H, W]
    lpips_model=None,  # sharp_export.parity.lpips.LPIPS or None
    tolerances: Mapping[str, Tolerance] | None = None,
    view_names: Sequence[str] | None = None,
    ref_alphas: Sequence[np.ndarray | torch.Tensor] | None = None,  # each [H, W]; masks the depth metric
    lpips_unavailable: str | None = None,  # why LPIPS is missing; default: lpips_status().message()
) -> list[ViewResult]:
    """PSNR / SSIM / LPIPS (or an UNAVAILABLE line saying why) and depth error for each view."""
    if len(ref_images) != len(cand_images):
        raise UserInputError(f"{len(ref_images)} reference views but {len(cand_images)} candidate views")
    names = list(view_names) if view_names is not None else [f"view{i}" for i in range(len(ref_images))]
    tols = dict(tolerances or {})
    if lpips_model is None and lpips_unavailable is None:
        status = lpips_status()
        lpips_unavailable = status.message()
        if status.available:
            lpips_unavailable = f"LPIPS not computed: no model passed (load_lpips() would use {status.source})"
    results: list[ViewResult] = []
    for i, (name, ref, cand) in enumerate(zip(names, ref_images, cand_images, strict=True)):
        bad, bad_ref = _nonfinite(cand), _nonfinite(ref)
        if bad or bad_ref:
            text = f"view {name}: {bad} NaN/Inf values in the candidate image"
            if bad_ref:
                text = f"view {name}: reference problem: {bad_ref} NaN/Inf values in the reference image"
            for metric in ("psnr_db", "ssim", "lpips"):
                key, bound = _GATES[metric]
                limit = tols[key].value if key in tols else None
                results.append(ViewResult(name, metric, math.nan, limit, bound, "FAIL", math.nan, text))
        else:
            value = metrics.psnr(ref, cand)
            extra = "identical images (PSNR inf)" if math.isinf(value) else ""
            results.append(_gated(name, "psnr_db", value, tols, extra))
            results.append(_gated(name, "ssim", metrics.ssim(ref, cand), tols))
            if lpips_model is not None:
                results.append(_gated(name, "lpips", lpips_model.distance(ref, cand), tols))
            else:
                key, bound = _GATES["lpips"]
                tol = tols.get(key)
                results.append(
                    ViewResult(
                        name, "lpips", None, tol.value if tol else None, bound, "UNAVAILABLE", math.nan,
                        lpips_unavailable or "LPIPS unavailable",
                    )
                )  # fmt: skip
        if ref_depths is not None and cand_depths is not None:
            alpha = ref_alphas[i] if ref_alphas is not None else None
            err = metrics.depth_error(ref_depths[i], cand_depths[i], alpha)
            text = f"max {err.max:.3g}, mean {err.mean:.3g} over {err.n_pixels} px with reference alpha > 0.5"
            if err.n_nonfinite:
                results.append(
                    ViewResult(name, "depth_rel", err.p99, None, "max", "FAIL", math.nan,
                               f"view {name}: {err.n_nonfinite} NaN/Inf candidate depths; {text}")
                )  # fmt: skip
            else:
                results.append(ViewResult(name, "depth_rel", err.p99, None, "max", "INFO", math.nan, "p99; " + text))
    return results


def render_views(
    gaussians,  # Gaussians3D, unprojected (metric OpenCV camera space), batch of one
    meta,  # SceneMeta of the source image
    poses: Sequence[str] = DEFAULT_POSES,
    backend: str = "torch",
    resolution: tuple[int, int] | None = None,  # (width, height); None: SHARP's render size for meta
    num_frames: int = 60,
    trajectory_from=None,  # Gaussians3D whose depths place the cameras; None: ``gaussians``
) -> list[tuple[str, object]]:
    """Render the named poses of the rotate_forward trajectory: [(pose name, RenderOutput), ...].

    The trajectory depends on the scene's depth quantiles, so a parity run must place the candidate's
    cameras with the reference's Gaussians (``trajectory_from=reference``); otherwise a depth error
    would move the cameras and be counted twice.
    """

    source = gaussians if trajectory_from is None else trajectory_from
    cameras = make_trajectory(source, meta, kind="rotate_forward", num_frames=num_frames, resolution=resolution)
    out = []
    for name in poses:
        camera = cameras[pose_index(name, len(cameras))]
        out.append((name, render_scene(gaussians, camera, backend=backend, eps2d=0.0)))
    return out


def compare_renders(
    reference: Sequence[tuple[str, object]],  # render_views(...) of the reference Gaussians
    candidate: Sequence[tuple[str, object]],  # render_views(...) of the candidate Gaussians, same poses
    lpips_model=None,
    tolerances: Mapping[str, Tolerance] | None = None,
    lpips_unavailable: str | None = None,
) -> list[ViewResult]:
    """compare_views over two render_views results (colour, depth and alpha of each RenderOutput)."""
    names = [name for name, _ in reference]
    if names != [name for name, _ in candidate]:
        raise UserInputError(f"views differ: {names} vs {[name for name, _ in candidate]}")
    return compare_views(
        [r.color for _, r in reference],
        [r.color for _, r in candidate],
        [r.depth for _, r in reference],
        [r.depth for _, r in candidate],
        lpips_model=lpips_model,
        tolerances=tolerances,
        view_names=names,
        ref_alphas=[r.alpha for _, r in reference],
        lpips_unavailable=lpips_unavailable,
    )
