"""Gaussian initializer: base Gaussians from the two depth layers, and the Gaussian decoder's input.

Everything stays rank 4: the layer axis that ml-sharp keeps as a separate dimension (B, C, 2, H, W)
is the channel axis here, one channel per layer, so per-layer maps are [B, 2, h, w].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

DEPTH_MAX = 100.0  # normalised depth is clamped here (nearest point sits at 1)


class BaseGaussians(NamedTuple):
    x_ndc: torch.Tensor  # [1, 1, h, w] cell centres, pixel-edge NDC
    y_ndc: torch.Tensor  # [1, 1, h, w]
    disparity: torch.Tensor  # [B, 2, h, w] per-layer max-pooled normalised disparity
    scale: torch.Tensor  # [B, 2, h, w] footprint of one 2-pixel cell
    colors: torch.Tensor  # [B, 3, h, w] 2x2 average of the sRGB image (same for both layers)


class InitializerOutput(NamedTuple):
    base: BaseGaussians
    feature_input: torch.Tensor  # [B, 5, S, S] 2*cat(image, 1/depth_normalised) - 1
    global_scale: torch.Tensor  # [B] metric depth of the nearest point (+1e-6)


class MultiLayerInitializer(nn.Module):
    """No weights. ``stride`` 2: one Gaussian per layer per 2x2 pixel cell."""

    stride = 2

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> InitializerOutput:
        # image: [B, 3, S, S] in [0, 1]; depth: [B, 2, S, S] metric depth of the two layers
        batch, _, size, _ = depth.shape
        # Normalise so the nearest point of each image is at depth ~1 (global reduction over both layers).
        depth_factor = 1.0 / (depth.amin(dim=(1, 2, 3)) + 1e-6)  # [B]; no 4.7M-long flattened axis
        depth_norm = torch.clamp(depth * depth_factor[:, None, None, None], max=DEPTH_MAX)
        global_scale = 1.0 / depth_factor

        inverse_depth = 1.0 / depth_norm  # [B, 2, S, S]
        # "surface_min": the nearest depth of each 2x2 cell, i.e. the max-pooled disparity.
        disparity = F.max_pool2d(inverse_depth, kernel_size=self.stride, stride=self.stride)

        cells = size // self.stride
        # ml-sharp computes 2*u/S - 1 with u = 1 + 2k; written out the same way to keep identical rounding.
        centres = 2.0 * (1.0 + 2.0 * torch.arange(cells, device=depth.device, dtype=depth.dtype)) / size - 1.0
        x_ndc = centres.reshape(1, 1, 1, cells)
        y_ndc = centres.reshape(1, 1, cells, 1)

        scale_factor = 2.0 * self.stride / float(size)  # one cell spans stride pixels of 2/S NDC each
        scale = (1.0 / disparity) * scale_factor

        colors = F.avg_pool2d(image, kernel_size=self.stride, stride=self.stride)
        feature_input = 2.0 * torch.cat([image, inverse_depth], dim=1) - 1.0
        base = BaseGaussians(x_ndc, y_ndc, disparity, scale, colors)
        return InitializerOutput(base, feature_input, global_scale)
