"""Gaussian decoder: DPT decoder over the SPN maps, fused with a strided conv of RGB + disparity,
then separate texture and geometry heads (keys under ``feature_model``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .blocks import FeatureFusionBlock2d, MultiresConvDecoder, norm_conv_block
from .params import GaussianDecoderParams


class SkipConvBackbone(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, dim_in, S, S]
        return self.conv(x)


def _head(dim: int, dim_out: int, num_groups: int) -> nn.Sequential:
    block = lambda: norm_conv_block(dim, dim, dim // 2, num_groups)  # noqa: E731
    return nn.Sequential(block(), block(), nn.ReLU(), nn.Conv2d(dim, dim_out, 1), nn.ReLU())


class GaussianFeatures(NamedTuple):
    texture: torch.Tensor  # [B, dim_out, S/2, S/2]
    geometry: torch.Tensor  # [B, dim_out, S/2, S/2]


class GaussianDensePredictionTransformer(nn.Module):
    def __init__(self, p: GaussianDecoderParams, dims_encoder: tuple[int, ...]):
        super().__init__()
        dim = p.dims_decoder[0]
        self.decoder = MultiresConvDecoder(dims_encoder, p.dims_decoder)
        self.image_encoder = SkipConvBackbone(p.dim_in, dim, stride=2)
        self.fusion = FeatureFusionBlock2d(dim, upsample=False)
        self.upsample = nn.Identity()  # decoder and Gaussian grid share stride 2
        self.texture_head = _head(dim, p.dim_out, p.norm_num_groups)
        self.geometry_head = _head(dim, p.dim_out, p.norm_num_groups)

    def forward(self, feature_input: torch.Tensor, encodings: list[torch.Tensor]) -> GaussianFeatures:
        # feature_input: [B, 5, S, S]; encodings: the five SPN maps, finest [B, C0, S/2, S/2]
        features = self.fusion(self.decoder(encodings), self.image_encoder(feature_input))
        features = self.upsample(features)
        return GaussianFeatures(self.texture_head(features), self.geometry_head(features))
