"""Convolutional building blocks shared by the monodepth decoder, the Gaussian decoder and the UNet."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``shortcut(x) + residual(x)``; the shortcut is the identity unless the widths differ."""

    def __init__(self, residual: nn.Sequential, shortcut: nn.Module | None = None):
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.residual(x)


def relu_conv_block(dim: int) -> ResidualBlock:
    """DPT fusion residual: ReLU, 3x3 conv, ReLU, 3x3 conv (keys ``residual.1`` / ``residual.3``)."""
    return ResidualBlock(
        nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
    )


def norm_conv_block(dim_in: int, dim_out: int, dim_hidden: int, num_groups: int) -> ResidualBlock:
    """GroupNorm residual: GN, ReLU, 3x3 conv, GN, ReLU, 3x3 conv (keys ``residual.0/2/3/5``)."""
    residual = nn.Sequential(
        nn.GroupNorm(num_groups, dim_in),
        nn.ReLU(),
        nn.Conv2d(dim_in, dim_hidden, 3, padding=1),
        nn.GroupNorm(num_groups, dim_hidden),
        nn.ReLU(),
        nn.Conv2d(dim_hidden, dim_out, 3, padding=1),
    )
    shortcut = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else None
    return ResidualBlock(residual, shortcut)


class FeatureFusionBlock2d(nn.Module):
    """DPT fusion: ``out_conv(deconv(resnet2(x0 + resnet1(x1))))``; ``deconv`` doubles the size or is empty."""

    def __init__(self, dim: int, upsample: bool):
        super().__init__()
        self.resnet1 = relu_conv_block(dim)
        self.resnet2 = relu_conv_block(dim)
        self.deconv = nn.ConvTranspose2d(dim, dim, 2, stride=2, bias=False) if upsample else nn.Sequential()
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor | None = None) -> torch.Tensor:  # [B, C, H, W] each
        x = x0 if x1 is None else x0 + self.resnet1(x1)
        return self.out_conv(self.deconv(self.resnet2(x)))


class MultiresConvDecoder(nn.Module):
    """Fuses the five SPN maps coarse to fine into one map at the finest SPN resolution.

    ``convs[0]`` is a 1x1 projection only when the finest encoder width differs from the decoder width
    (the Gaussian decoder has it, the monodepth decoder does not, so it has no ``convs.0`` key).
    """

    def __init__(self, dims_encoder: tuple[int, ...], dims_decoder: tuple[int, ...]):
        super().__init__()
        dim = dims_decoder[0]
        first = nn.Identity() if dims_encoder[0] == dim else nn.Conv2d(dims_encoder[0], dim, 1, bias=False)
        self.convs = nn.ModuleList([first] + [nn.Conv2d(d, dim, 3, padding=1, bias=False) for d in dims_encoder[1:]])
        self.fusions = nn.ModuleList([FeatureFusionBlock2d(dim, upsample=i > 0) for i in range(len(dims_encoder))])

    def forward(self, encodings: list[torch.Tensor]) -> torch.Tensor:  # finest first, each [B, C_i, H_i, W_i]
        features = self.fusions[-1](self.convs[-1](encodings[-1]))
        for index in range(len(encodings) - 2, -1, -1):
            features = self.fusions[index](features, self.convs[index](encodings[index]))
        return features
