"""RGBGaussianPredictor: image + disparity factor -> raw Gaussians (NDC*z space).

Module and key names follow ml-sharp so the official checkpoint loads unchanged:
``feature_model`` (Gaussian decoder), ``monodepth_model``, ``prediction_head``, ``depth_alignment``
(training-only) in that registration order; the initializer and composer have no weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


class PrecisionPlan:
    """Where the forward switches between the network (weights) and the tail (no weights, fp32 always).

    The eager plan below disables autocast in the tail. The Core ML fp16 proxy
    (converters/coreml/fp16_proxy.py) subclasses it to round the network's results to fp16 and keep the tail
    in fp32, so the one forward below serves the reference, every export and the proxy alike.
    """

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def tail(self, device_type: str) -> Iterator[None]:
        # The tail from disparity to Gaussians is precision-sensitive (global min, reciprocals,
        # softplus/log/exp, depths up to ~1e3): it always runs in float32, also under autocast.
        with torch.autocast(device_type=device_type, enabled=False):
            yield

    def network_input(self, x: torch.Tensor) -> torch.Tensor:  # x: any shape
        """The tensor as the network reads it (identity here; the fp16 proxy rounds a copy)."""
        return x


EAGER_PLAN = PrecisionPlan()


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

    @property
    def spn_encoder(self) -> nn.Module:
        """The monodepth network's sliding-pyramid encoder (the split exports run its parts on their own)."""
        return self.monodepth_model.monodepth_predictor.encoder

    def forward_grids(
        self,
        image: torch.Tensor,  # [B, 3, S, S] RGB in [0, 1]
        disparity_factor: torch.Tensor,  # [B] = f_px / original image width
        plan: PrecisionPlan = EAGER_PLAN,
    ) -> GaussianGrids:
        with plan.network():
            mono = self.monodepth_model(plan.network_input(image))
        return self.grids_from_disparity(image, disparity_factor, mono.disparity, mono.encodings, plan)

    def grids_from_disparity(
        self,
        image: torch.Tensor,  # [B, 3, S, S] RGB in [0, 1]
        disparity_factor: torch.Tensor,  # [B]
        disparity: torch.Tensor,  # [B, 2, S, S] monodepth output
        encodings: list[torch.Tensor],  # five [B, C_i, H_i, W_i] SPN encodings, finest first
        plan: PrecisionPlan = EAGER_PLAN,
    ) -> GaussianGrids:
        """The forward from the monodepth outputs on: depth, initializer, Gaussian decoder, head, composer.

        The one copy of this tail: forward_grids, the Core ML component split and the fp16 proxy call it.
        """
        with plan.tail(image.device.type):
            clamped = disparity.float().clamp(DISPARITY_MIN, DISPARITY_MAX)
            depth = disparity_factor.float()[:, None, None, None] / clamped
            init = self.init_model(image.float(), depth)
        with plan.network():
            features = self.feature_model(plan.network_input(init.feature_input.to(image.dtype)), encodings)
            delta = self.prediction_head(features)
        with plan.tail(image.device.type):
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
