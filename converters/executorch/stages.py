"""The programs of an ExecuTorch artifact: one (``--split none``) or one per stage (``--split stages``).

``--split stages`` cuts SHARP where an app can release what it no longer needs (ExecuTorch runs a program, the app
frees it and loads the next). Every stage calls the reference's own methods; nothing is re-implemented:

=================  ============================================================  ================================
stage              what (reference code)                                         inputs -> outputs
=================  ============================================================  ================================
tiles              2x-1, pyramid and tiles (``SlidingPyramidNetwork.tile_pyramid``)  image -> tiles
patch_encoder      the patch ViT on ``patch_batch`` tiles at a time              tiles -> 3 tile-map stacks
                   (``encode_tiles``), run once per patch batch
image_encoder      merge the tiles (``merge_tile_maps``), image ViT, upsamplers    image + stacks -> 5 encodings
                   (``fuse``)
depth_decoder      the monodepth DPT decoder and disparity head                  encodings -> disparity
gaussians          depth, initializer, Gaussian decoder, prediction head,        image, factor, disparity,
                   composer, flatten (``grids_from_disparity``)                  encodings -> the 5 outputs
=================  ============================================================  ================================

The patch ViT is the one stage whose activations grow with the tile count (35 tiles at full size: attention
probabilities of [35*16, 577, 577]); running it on a few tiles at a time bounds them. The tail (initializer and
composer) stays with the Gaussian decoder: it has no weights, and the tensors it needs (the disparity, the image)
are already that stage's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sharp_export.reference.gaussians import GAUSSIAN_FIELDS
from sharp_export.reference.model.composer import flatten_grids
from sharp_export.reference.model.monodepth import SPN_ENCODING_NAMES

TILE_MAPS = ("latent0_tiles", "latent1_tiles", "feature_tiles")
ENCODINGS = SPN_ENCODING_NAMES
MAX_PATCH_BATCH = 8  # tiles per patch-encoder run at most: the largest divisor of the tile count up to this


class _PredictorPart(nn.Module):
    """One program's module: it holds the whole predictor (shared weights) and runs one part of it."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor


class WholeModel(_PredictorPart):
    """image, disparity_factor -> the five raw outputs (GAUSSIAN_FIELDS order): the unsplit program."""

    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R] in [0, 1]
        disparity_factor: torch.Tensor,  # [B]
    ) -> tuple[torch.Tensor, ...]:  # [B, N, 3], [B, N, 3], [B, N, 4], [B, N, 3], [B, N]
        return tuple(self.predictor(image, disparity_factor))


class TilesStage(_PredictorPart):
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:  # image: [B, 3, R, R] in [0, 1]
        # [T*B, 3, p, p]; 2x-1 as the monodepth net
        return (self.predictor.spn_encoder.tile_pyramid(2.0 * image - 1.0),)


class PatchEncoderStage(_PredictorPart):
    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, ...]:  # tiles: [P, 3, p, p]
        return tuple(self.predictor.spn_encoder.encode_tiles(tiles))  # three [P, C, g, g]


class ImageEncoderStage(_PredictorPart):
    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R] in [0, 1]
        latent0_tiles: torch.Tensor,  # [T*B, C, g, g] (TILE_MAPS, every tile in tile_pyramid's order)
        latent1_tiles: torch.Tensor,
        feature_tiles: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:  # ENCODINGS, finest first
        spn = self.predictor.spn_encoder
        x = 2.0 * image - 1.0
        return tuple(spn.fuse(x, spn.merge_tile_maps(x, latent0_tiles, latent1_tiles, feature_tiles)))


class DepthDecoderStage(_PredictorPart):
    def forward(self, *encodings: torch.Tensor) -> tuple[torch.Tensor]:  # ENCODINGS -> disparity [B, 2, R, R]
        net = self.predictor.monodepth_model.monodepth_predictor
        return (net.head(net.decoder(list(encodings))),)


class GaussiansStage(_PredictorPart):
    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R] in [0, 1]
        disparity_factor: torch.Tensor,  # [B]
        disparity: torch.Tensor,  # [B, 2, R, R]
        *encodings: torch.Tensor,  # ENCODINGS
    ) -> tuple[torch.Tensor, ...]:  # the five raw outputs, as WholeModel
        grids = self.predictor.grids_from_disparity(image, disparity_factor, disparity, list(encodings))
        return tuple(flatten_grids(grids))


@dataclass(frozen=True)
class Stage:
    name: str  # program file stem
    module: type[nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    chunked: bool = False  # runs on chunks of ``patch_batch`` along the first axis of every input


WHOLE = (Stage("model", WholeModel, ("image", "disparity_factor"), GAUSSIAN_FIELDS),)
STAGES = (
    Stage("tiles", TilesStage, ("image",), ("tiles",)),
    Stage("patch_encoder", PatchEncoderStage, ("tiles",), TILE_MAPS, chunked=True),
    Stage("image_encoder", ImageEncoderStage, ("image", *TILE_MAPS), ENCODINGS),
    Stage("depth_decoder", DepthDecoderStage, ENCODINGS, ("disparity",)),
    Stage("gaussians", GaussiansStage, ("image", "disparity_factor", "disparity", *ENCODINGS), GAUSSIAN_FIELDS),
)
SPLITS = {"none": WHOLE, "stages": STAGES}


def patch_batch(tile_count: int) -> int:
    """Tiles per patch-encoder run: the largest divisor of ``tile_count`` up to MAX_PATCH_BATCH (35 -> 7)."""
    return max(d for d in range(1, MAX_PATCH_BATCH + 1) if tile_count % d == 0)


StageFn = Callable[..., tuple[torch.Tensor, ...]]


def run_chain(
    stages: tuple[Stage, ...],
    functions: Mapping[str, StageFn],  # stage name -> callable (eager module, PT2E-prepared module, ...)
    image: torch.Tensor,  # [B, 3, R, R]
    disparity_factor: torch.Tensor,  # [B]
    chunk: int | None = None,  # patch batch of the chunked stage (None: patch_batch of the tile count)
    on_stage: Callable[[Stage, list[torch.Tensor]], None] | None = None,  # sees each stage's (first) inputs
) -> dict[str, torch.Tensor]:
    """Every named tensor of the chain: the inputs, the tensors between stages and the outputs."""
    values: dict[str, torch.Tensor] = {"image": image, "disparity_factor": disparity_factor}
    with torch.no_grad():
        for stage in stages:
            inputs = [values[name] for name in stage.inputs]
            function = functions[stage.name]
            if not stage.chunked:
                if on_stage is not None:
                    on_stage(stage, inputs)
                outputs = function(*inputs)
            else:
                size = chunk or patch_batch(int(inputs[0].shape[0]))
                pieces = []
                for start in range(0, int(inputs[0].shape[0]), size):
                    part = [t[start : start + size] for t in inputs]
                    if on_stage is not None and start == 0:
                        on_stage(stage, part)
                    pieces.append(function(*part))
                outputs = tuple(torch.cat(list(group), dim=0) for group in zip(*pieces, strict=True))
            values.update(zip(stage.outputs, outputs, strict=True))
    return values


def eager_functions(predictor: nn.Module, stages: tuple[Stage, ...]) -> dict[str, nn.Module]:
    return {stage.name: stage.module(predictor).eval() for stage in stages}
