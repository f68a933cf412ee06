"""RGBGaussianPredictor: image + disparity factor -> raw Gaussians (NDC*z space).

Module and key names follow ml-sharp so the official checkpoint loads unchanged:
``feature_model`` (Gaussian decoder), ``monodepth_model``, ``prediction_head``, ``depth_alignment``
(training-only) in that registration order; the initializer and composer have no weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..gaussians import Gaussians3D
from .alignment import DepthAlignment
from .composer import DirectPredictionHead, GaussianComposer, GaussianGrids, flatten_grids
from .gaussian_decoder import GaussianDensePredictionTransformer
from .initializer import MultiLayerInitializer
from .monodepth import MonodepthWithEncodingAdaptor
from .params import PRESETS, PredictorParams

DISPARITY_MIN = 1e-4  # depth = disparity_factor / clamp(disparity, 1e-4, 1e4)
DISPARITY_MAX = 1e4


class RGBGaussianPredictor(nn.Module):
    def __init__(self, params: PredictorParams):
        super().__init__()
        self.params = params
        self.init_model = MultiLayerInitializer()
        self.feature_model = GaussianDensePredictionTransformer(params.gaussian_decoder, params.monodepth.dims_encoder)
        self.monodepth_model = MonodepthWithEncodingAdaptor(params.monodepth)
        self.prediction_head = DirectPredictionHead(params.gaussian_decoder.dim_out, params.num_layers)
        self.gaussian_composer = GaussianComposer()
        self.depth_alignment = DepthAlignment(params.alignment)

    @property
    def resolution(self) -> int:
        return self.params.resolution

    def forward_grids(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> GaussianGrids:
        # image: [B, 3, S, S] RGB in [0, 1]; disparity_factor: [B] = f_px / original image width
        mono = self.monodepth_model(image)
        # The tail from disparity to Gaussians is precision-sensitive (global min, reciprocals,
        # softplus/log/exp, depths up to ~1e3): it always runs in float32, also under autocast.
        with torch.autocast(device_type=image.device.type, enabled=False):
            disparity = mono.disparity.float()
            depth = disparity_factor.float()[:, None, None, None] / disparity.clamp(DISPARITY_MIN, DISPARITY_MAX)
            init = self.init_model(image.float(), depth)
        features = self.feature_model(init.feature_input.to(image.dtype), mono.encodings)
        delta = self.prediction_head(features)
        with torch.autocast(device_type=image.device.type, enabled=False):
            return self.gaussian_composer(delta.float(), init.base, init.global_scale)

    def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> Gaussians3D:
        # image: [B, 3, S, S]; disparity_factor: [B]. Returns [B, N, C] Gaussians, N = 2*(S/2)^2.
        return flatten_grids(self.forward_grids(image, disparity_factor))


def create_predictor(preset: str | PredictorParams = "sharp") -> RGBGaussianPredictor:
    """Build a predictor (random init, eval mode) from a preset name or explicit params."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        params = PRESETS[preset]()
    else:
        params = preset
    return RGBGaussianPredictor(params).eval()
