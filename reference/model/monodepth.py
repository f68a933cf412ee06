"""Monodepth network: normalise, SPN encoder, DPT decoder, 2-channel disparity head.

Keys live under ``monodepth_model.monodepth_predictor.{encoder,decoder,head}`` as in ml-sharp.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .blocks import MultiresConvDecoder
from .encoder import SlidingPyramidNetwork
from .params import MonodepthParams

# Names of the five SPN maps (MonodepthOutput.encodings, finest first) where a split export passes them between
# programs (Core ML components, ExecuTorch stages).
SPN_ENCODING_NAMES = tuple(f"encoding{i}" for i in range(5))


class MonodepthOutput(NamedTuple):
    disparity: torch.Tensor  # [B, 2, S, S] focal-normalised inverse depth of the two layers, >= 0
    encodings: list[torch.Tensor]  # the five SPN maps, finest first


class MonodepthDensePredictionTransformer(nn.Module):
    def __init__(self, p: MonodepthParams):
        super().__init__()
        dim = p.dims_decoder[0]
        self.encoder = SlidingPyramidNetwork(p)
        self.decoder = MultiresConvDecoder(p.dims_encoder, p.dims_decoder)
        self.head = nn.Sequential(
            nn.Conv2d(dim, dim // 2, 3, padding=1),
            nn.ConvTranspose2d(dim // 2, dim // 2, 2, stride=2),
            nn.Conv2d(dim // 2, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 2, 1),  # two disparity layers (ml-sharp widens a 1-channel head)
            nn.ReLU(),
        )


class MonodepthWithEncodingAdaptor(nn.Module):
    """Runs the monodepth network and also returns the encoder features for the Gaussian decoder."""

    def __init__(self, p: MonodepthParams):
        super().__init__()
        self.monodepth_predictor = MonodepthDensePredictionTransformer(p)

    def forward(self, image: torch.Tensor) -> MonodepthOutput:  # image: [B, 3, S, S] in [0, 1]
        net = self.monodepth_predictor
        encodings = net.encoder(2.0 * image - 1.0)  # the encoder alone sees [-1, 1]
        disparity = net.head(net.decoder(encodings))
        return MonodepthOutput(disparity, encodings)
