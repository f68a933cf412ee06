"""``--split components``: three Core ML packages whose weights each stay under iOS's ~1 GB limit.

The fp16 full model is 1.31 GB of weights; the monodepth network alone is 692M parameters (1.39 GB), so
the cut goes through the SPN encoder, between its two ViTs (as ml-stable-diffusion chunks its UNet):

==================  ==========================================================  ======================
piece               what                                                        fp16 package (full)
==================  ==========================================================  ======================
patch_encoder       pyramid + tiles -> patch ViT -> merged token maps           0.607 GB (measured)
monodepth           image ViT, SPN upsamplers, monodepth decoder + head         0.685 GB (measured)
gaussians           Gaussian decoder, prediction head, initializer, composer    0.015 GB (measured)
==================  ==========================================================  ======================

(The ViTs' unused 22M-parameter classifier heads are not traced, so they are not in the packages.)

The first two pieces call the SPN's own ``encode_patches`` / ``fuse`` (its forward is exactly those two
calls); the Gaussians piece calls the predictor's own ``grids_from_disparity``; a test pins that chaining all three
equals ``forward_grids`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sharp_export.converters.coreml.capture import DEFAULT_PINNED, REGION_NETWORK, REGION_TAIL
from sharp_export.converters.coreml.fp16_proxy import Fp16Plan, Fp16Rounding, fp16_copy, rounding
from sharp_export.reference.model.composer import GaussianGrids
from sharp_export.reference.model.monodepth import SPN_ENCODING_NAMES

PATCH_MAPS = ("latent0", "latent1", "x0_features", "x1_features", "x2_features")
ENCODINGS = SPN_ENCODING_NAMES


class PatchEncoderPiece(nn.Module):
    """image [1, 3, R, R] -> the patch ViT's merged maps (PATCH_MAPS), each [1, 1024, g, g] at full size."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:  # image: [B, 3, R, R] in [0, 1]
        return tuple(self.predictor.spn_encoder.encode_patches(2.0 * image - 1.0))  # 2x-1: the monodepth normaliser


class MonodepthPiece(nn.Module):
    """image + PATCH_MAPS -> disparity [1, 2, R, R] and the five SPN encodings (ENCODINGS)."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R] in [0, 1]
        latent0: torch.Tensor,  # [B, C, g0, g0] (the PATCH_MAPS, in order)
        latent1: torch.Tensor,
        x0_features: torch.Tensor,
        x1_features: torch.Tensor,
        x2_features: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        net = self.predictor.monodepth_model.monodepth_predictor
        patch_maps = (latent0, latent1, x0_features, x1_features, x2_features)
        encodings = net.encoder.fuse(2.0 * image - 1.0, patch_maps)
        return (net.head(net.decoder(encodings)), *encodings)


class GaussiansPiece(nn.Module):
    """image, disparity_factor, disparity, ENCODINGS -> the five grids (Gaussian decoder + tail)."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R] in [0, 1]
        disparity_factor: torch.Tensor,  # [B]
        disparity: torch.Tensor,  # [B, 2, R, R]
        encoding0: torch.Tensor,  # [B, C_i, H_i, W_i], finest first (ENCODINGS)
        encoding1: torch.Tensor,
        encoding2: torch.Tensor,
        encoding3: torch.Tensor,
        encoding4: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        encodings = [encoding0, encoding1, encoding2, encoding3, encoding4]
        return tuple(self.predictor.grids_from_disparity(image, disparity_factor, disparity, encodings))


@dataclass(frozen=True)
class Piece:
    name: str  # package file stem
    module: type[nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Region of the ops the wrapper runs outside any module: the SPN's pyramid, tiling and merging are
    # network (fp16); the Gaussians piece's disparity -> depth division is the tail (fp32).
    default_region: str


PIECES = (
    Piece("patch_encoder", PatchEncoderPiece, ("image",), PATCH_MAPS, REGION_NETWORK),
    Piece("monodepth", MonodepthPiece, ("image", *PATCH_MAPS), ("disparity", *ENCODINGS), REGION_NETWORK),
    Piece(
        "gaussians",
        GaussiansPiece,
        ("image", "disparity_factor", "disparity", *ENCODINGS),
        ("mean_vectors", "singular_values", "quaternions", "colors", "opacities"),
        REGION_TAIL,
    ),
)


def chain_values(
    predictor: nn.Module,
    image: torch.Tensor,  # [B, 3, R, R]
    disparity_factor: torch.Tensor,  # [B]
) -> dict[str, torch.Tensor]:
    """Eager fp32 chain of the three pieces: every named tensor (inputs, activations between pieces, grids).

    Tensors are passed on unchanged: the merged token maps come out with channels-last strides, and
    torch's conv rounds differently on a contiguous copy (~1e-7 relative), which would hide a real
    divergence from ``forward_grids`` in the bit-exact test.
    """
    values: dict[str, torch.Tensor] = {"image": image, "disparity_factor": disparity_factor}
    with torch.no_grad():
        for piece in PIECES:
            outputs = piece.module(predictor)(*(values[name] for name in piece.inputs))
            values.update(zip(piece.outputs, outputs, strict=True))
    return values


def run_pieces(
    predictor: nn.Module,
    image: torch.Tensor,  # [B, 3, R, R]
    disparity_factor: torch.Tensor,  # [B]
) -> tuple[GaussianGrids, dict[str, dict[str, torch.Tensor]]]:
    """The chain's grids and every piece's inputs (contiguous: the example inputs to export)."""
    values = chain_values(predictor, image, disparity_factor)
    piece_inputs = {p.name: {n: values[n].contiguous() for n in p.inputs} for p in PIECES}
    return GaussianGrids(*(values[name] for name in PIECES[-1].outputs)), piece_inputs


def piece_proxy_errors(
    predictor: nn.Module,
    image: torch.Tensor,  # [1, 3, R, R]
    disparity_factor: torch.Tensor,  # [1]
) -> dict[str, dict[str, float]]:
    """One line per piece: the fp16 proxy of that piece alone, fed the fp32 chain's inputs.

    Returns {piece: {output: max|fp16 - fp32| / max|fp32|}}. Inputs that travel as fp16 between pieces
    arrive rounded. (The whole chain's outputs are gated by the export's proxy parity.)
    """
    reference = chain_values(predictor, image, disparity_factor)
    mode = Fp16Rounding()
    simulated = fp16_copy(predictor, DEFAULT_PINNED, mode)
    lines: dict[str, dict[str, float]] = {}
    with torch.no_grad(), mode:
        for piece in PIECES:
            inputs = [reference[name] for name in piece.inputs]
            if piece.name == "gaussians":
                with rounding(mode, False):  # fp16 I/O between pieces: the disparity and encodings arrive rounded
                    encodings = [t.half().float() for t in inputs[3:]]
                    disparity = inputs[2].half().float()
                plan = Fp16Plan(mode)
                outputs = tuple(simulated.grids_from_disparity(inputs[0], inputs[1], disparity, encodings, plan))
            else:
                with rounding(mode, True):
                    outputs = piece.module(simulated)(*(t.clone() for t in inputs))
            line = {}
            for name, value in zip(piece.outputs, outputs, strict=True):
                scale = float(reference[name].abs().max()) or 1.0
                line[name] = float((value.float() - reference[name]).abs().max()) / scale
            lines[piece.name] = line
    return lines


def piece_shapes(
    predictor: nn.Module,
    image: torch.Tensor,  # [B, 3, R, R]
    disparity_factor: torch.Tensor,  # [B]
) -> dict[str, tuple[int, ...]]:
    """Shapes of every named tensor of the chain, traced with fake tensors (no full-size compute)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        values = {"image": torch.empty(image.shape), "disparity_factor": torch.empty(disparity_factor.shape)}
        for piece in PIECES:
            outputs = piece.module(predictor)(*(values[name] for name in piece.inputs))
            values.update(zip(piece.outputs, outputs, strict=True))
        return {name: tuple(int(d) for d in value.shape) for name, value in values.items()}
