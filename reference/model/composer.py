"""Prediction head (deltas) and composer (base + delta -> activated Gaussians).

Per-layer maps are [B, 2, h, w] (layer on the channel axis). The composer returns one grid per
attribute, [B, C*2, h, w] with channel ``c*2 + layer`` (component-major, layer-minor, the prediction
head's own order); ``flatten_grids`` turns grids into ml-sharp's (B, N, C) layout with Gaussian index
``n = layer*h*w + row*w + col``. Keeping the flatten separate lets rank-4 targets (Core ML) emit grids.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..gaussians import Gaussians3D
from .gaussian_decoder import GaussianFeatures
from .initializer import BaseGaussians

# Delta factors of ml-sharp's composer.
XY_DELTA = 0.001
Z_DELTA = 0.001
COLOR_DELTA = 0.1
# Scale activation: s = base * (MAX_SCALE * sigmoid(SCALE_A * delta + SCALE_B)); equals base at delta 0.
MAX_SCALE = 10.0
SCALE_A = 10.0 / 9.0
SCALE_B = -2.1972246170043945  # logit(0.1), computed by ml-sharp in float32 and read back with .item()
INVERSE_DEPTH_BIAS = 1e-3  # z = 1 / (inverse_z + 1e-3): always present, even with zero delta


class DirectPredictionHead(nn.Module):
    """1x1 convs to 6 geometry and 22 texture delta channels (channel = attribute*2 + layer)."""

    def __init__(self, dim_in: int, num_layers: int = 2):
        super().__init__()
        self.geometry_prediction_head = nn.Conv2d(dim_in, 3 * num_layers, 1)
        self.texture_prediction_head = nn.Conv2d(dim_in, 11 * num_layers, 1)

    def forward(self, features: GaussianFeatures) -> torch.Tensor:
        # [B, 28, h, w]: dx dy dz | 3 scales | 4 quaternion (wxyz) | 3 colours | opacity, 2 layers each
        geometry = self.geometry_prediction_head(features.geometry)
        texture = self.texture_prediction_head(features.texture)
        return torch.cat([geometry, texture], dim=1)


class GaussianGrids(NamedTuple):
    """Composer output before flattening; each [B, C*2, h, w], channel = component*2 + layer."""

    mean_vectors: torch.Tensor  # C = 3
    singular_values: torch.Tensor  # C = 3
    quaternions: torch.Tensor  # C = 4, wxyz, unnormalised
    colors: torch.Tensor  # C = 3, linear RGB
    opacities: torch.Tensor  # C = 1


GRID_CHANNELS = (3, 3, 4, 3, 1)


def inverse_softplus(t: torch.Tensor) -> torch.Tensor:
    t = torch.clamp(t, min=1e-6)
    s = torch.sigmoid(-t)
    return t + torch.log(1.0 - s / (1.0 - s))  # = t + log(1 - exp(-t)), in ml-sharp's form


def logit(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t / (1.0 - t))


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    # The pow branch only sees values above the threshold (clamp == ml-sharp's "robust where").
    power = torch.pow((torch.clamp(c, min=0.04045) + 0.055) / 1.055, 2.4)
    return torch.where(c <= 0.04045, c / 12.92, power)


class GaussianComposer(nn.Module):
    """No weights."""

    def forward(self, delta: torch.Tensor, base: BaseGaussians, global_scale: torch.Tensor) -> GaussianGrids:
        # delta: [B, 28, h, w]; global_scale: [B]
        def attribute(index: int) -> torch.Tensor:  # [B, 2, h, w]
            return delta[:, 2 * index : 2 * index + 2]

        x = base.x_ndc + XY_DELTA * attribute(0)
        y = base.y_ndc + XY_DELTA * attribute(1)
        inverse_z = F.softplus(inverse_softplus(base.disparity) + Z_DELTA * attribute(2))
        z = 1.0 / (inverse_z + INVERSE_DEPTH_BIAS)
        scale_gs = global_scale[:, None, None, None]
        means = torch.cat([z * x, z * y, z], dim=1) * scale_gs

        # base.scale = (1/disparity)*k, so this is k*z with the predicted z.
        base_scale = base.scale * base.disparity * z
        scales = [base_scale * (MAX_SCALE * torch.sigmoid(SCALE_A * attribute(3 + k) + SCALE_B)) for k in range(3)]
        singular_values = torch.cat(scales, dim=1) * scale_gs

        identity = (1.0, 0.0, 0.0, 0.0)
        quaternions = torch.cat([identity[k] + attribute(6 + k) for k in range(4)], dim=1)

        base_colors = torch.clamp(base.colors, 0.01, 0.99)  # [B, 3, h, w], the same for both layers
        colors = [
            srgb_to_linear(torch.sigmoid(logit(base_colors[:, k : k + 1]) + COLOR_DELTA * attribute(10 + k)))
            for k in range(3)
        ]
        opacities = torch.sigmoid(attribute(13))  # base opacity 0.5, whose logit is 0
        return GaussianGrids(means, singular_values, quaternions, torch.cat(colors, dim=1), opacities)


def flatten_grids(grids: GaussianGrids) -> Gaussians3D:
    """[B, C*2, h, w] grids -> Gaussians3D with [B, N, C] tensors (opacities [B, N])."""
    flat = []
    for grid, channels in zip(grids, GRID_CHANNELS, strict=True):
        batch = grid.shape[0]
        flat.append(grid.reshape(batch, channels, -1).transpose(1, 2))
    *rest, opacities = flat
    return Gaussians3D(*rest, opacities.squeeze(-1))
