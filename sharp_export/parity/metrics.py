"""Image metrics for rendered views: PSNR, SSIM (Gaussian window) and a masked relative depth error.

Images are [H, W, 3] floats in [0, 1] (numpy arrays or torch tensors); everything is computed in
float64 so the metric itself adds no noise to a parity verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sharp_export.errors import UserInputError

# PSNR of identical images is +inf; JSON has no inf, so reports write this value (and say it is capped).
PSNR_CAP_DB = 100.0


def to_float64(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU float64 tensor view of a numpy array or torch tensor (no autograd)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _image_pair(a, b, name: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    a64, b64 = to_float64(a), to_float64(b)
    if a64.ndim != 3 or a64.shape[-1] != 3:
        raise UserInputError(f"{name}: expected an [H, W, 3] image, got shape {tuple(a64.shape)}")
    if a64.shape != b64.shape:
        raise UserInputError(
            f"{name}: reference and candidate differ in shape, {tuple(a64.shape)} vs {tuple(b64.shape)}",
            fix="render both at the same resolution",
        )
    return a64, b64


def psnr(
    a: np.ndarray | torch.Tensor,  # [H, W, 3] in [0, 1]
    b: np.ndarray | torch.Tensor,  # [H, W, 3] in [0, 1]
    data_range: float = 1.0,
) -> float:
    """Peak signal-to-noise ratio in dB; +inf for identical images (use ``capped_psnr`` for JSON)."""
    a64, b64 = _image_pair(a, b, "psnr")
    mse = float(torch.mean((a64 - b64) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def capped_psnr(value: float) -> float:
    """PSNR as written to reports: identical images give PSNR_CAP_DB instead of inf."""
    return min(value, PSNR_CAP_DB)


def gaussian_window(win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [win_size], float64 (as scipy.ndimage.gaussian_filter's kernel)."""
    radius = (win_size - 1) / 2.0
    x = torch.arange(win_size, dtype=torch.float64) - radius
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(
    x: torch.Tensor,  # [..., H, W]
    taps: torch.Tensor,  # [K]
    dim: int,
) -> torch.Tensor:  # [..., H - K + 1, W] or [..., H, W - K + 1]
    """'Valid' 1-D correlation along ``dim`` as K shifted multiply-adds.

    torch's single-channel conv2d is slow on CPU (float64: 15 s for a 1536^2 image pair, float32 worse);
    in-place shifted adds take about 3 s in float64 and sum in the same order for every pixel.
    """
    weights = taps.tolist()
    length = x.shape[dim] - len(weights) + 1
    out = x.narrow(dim, 0, length) * weights[0]
    for i in range(1, len(weights)):
        out.add_(x.narrow(dim, i, length), alpha=weights[i])
    return out


def ssim(
    a: np.ndarray | torch.Tensor,  # [H, W, 3] in [0, 1]
    b: np.ndarray | torch.Tensor,  # [H, W, 3] in [0, 1]
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang et al. 2004), Gaussian-weighted, averaged over channels.

    Matches ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``: the filtered maps are averaged over
    the interior where the 11x11 window fits (skimage filters the whole image and then crops
    (win_size - 1) // 2 pixels per side, which is the same set of values as a 'valid' convolution).
    """
    a64, b64 = _image_pair(a, b, "ssim")
    height, width, _ = a64.shape
    if height < win_size or width < win_size:
        raise UserInputError(f"ssim: image {height}x{width} is smaller than the {win_size}x{win_size} window")
    g = gaussian_window(win_size, sigma)
    # Channels become the batch: [3, 1, H, W]; five statistics maps per channel in one batch of 15.
    x = a64.permute(2, 0, 1).unsqueeze(1)
    y = b64.permute(2, 0, 1).unsqueeze(1)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=0)  # [15, 1, H, W]
    filtered = _filter_valid(_filter_valid(stacked, g, dim=-1), g, dim=-2)  # separable: rows, then columns
    mu_x, mu_y, xx, yy, xy = filtered.split(x.shape[0], dim=0)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov_xy = xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_channel = ssim_map.mean(dim=(1, 2, 3))  # [3]
    return float(per_channel.mean())


@dataclass(frozen=True)
class DepthError:
    """Relative depth error |d_c - d_r| / d_r over pixels covered in the reference (alpha > alpha_min)."""

    max: float
    p99: float
    mean: float
    n_pixels: int  # pixels compared
    n_nonfinite: int  # non-finite candidate depths inside the mask (each one is a failure)


def depth_error(
    ref_depth: np.ndarray | torch.Tensor,  # [H, W] expected depth
    cand_depth: np.ndarray | torch.Tensor,  # [H, W]
    ref_alpha: np.ndarray | torch.Tensor | None = None,  # [H, W]; None: every pixel with depth > 0
    alpha_min: float = 0.5,
) -> DepthError:
    """Relative depth error where the reference render is opaque enough for its depth to mean something.

    Expected depth = accumulated depth / alpha is noise where alpha is small (background), so only pixels
    with reference alpha > alpha_min count.
    """
    d_ref, d_cand = to_float64(ref_depth), to_float64(cand_depth)
    if d_ref.shape != d_cand.shape or d_ref.ndim != 2:
        raise UserInputError(
            f"depth: expected two [H, W] maps of one shape, got {tuple(d_ref.shape)} and {tuple(d_cand.shape)}"
        )
    mask = torch.isfinite(d_ref) & (d_ref > 0)
    if ref_alpha is not None:
        mask &= to_float64(ref_alpha) > alpha_min
    n_nonfinite = int((~torch.isfinite(d_cand) & mask).sum())
    valid = mask & torch.isfinite(d_cand)
    if not bool(valid.any()):
        return DepthError(math.nan, math.nan, math.nan, 0, n_nonfinite)
    rel = ((d_cand[valid] - d_ref[valid]).abs() / d_ref[valid]).numpy()
    return DepthError(float(rel.max()), float(np.percentile(rel, 99)), float(rel.mean()), int(rel.size), n_nonfinite)
