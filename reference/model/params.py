"""Nested parameter dataclasses and the two presets.

``sharp`` is the published configuration (its state_dict equals ``tests/data/golden_tiny/sharp_state_dict.tsv``);
``tiny`` is the small configuration of ``tests/data/golden_tiny/README.md`` (same module tree and key names,
4-block 64-wide ViTs, 384x384 input, SPN without patch overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViTParams:
    """A timm-style ViT (class token, LayerScale, no registers) as used by the SPN encoder."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    img_size: int = 384  # patch side the SPN feeds the ViT; fixes a 24x24 token grid at patch 16
    patch_size: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 21841  # classifier head: never called, kept so the official checkpoint loads strictly
    layer_norm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class MonodepthParams:
    """Depth-Pro-style monodepth network: sliding pyramid encoder, DPT decoder, 2-channel disparity head."""

    vit: ViTParams = field(default_factory=ViTParams)
    # Channels of the SPN outputs after the highest-resolution one (published [256, 512, 1024, 1024]).
    encoder_dims: tuple[int, ...] = (256, 512, 1024, 1024)
    # ViT blocks whose token outputs become latent0 / latent1 (only the first two are used).
    hook_block_ids: tuple[int, ...] = (5, 11, 17, 23)
    dims_decoder: tuple[int, ...] = (256, 256, 256, 256, 256)
    use_patch_overlap: bool = True  # published: 5x5 + 3x3 overlapping tiles with 3/6-token crops

    @property
    def dims_encoder(self) -> tuple[int, ...]:
        """All five SPN output widths: the decoder width, then ``encoder_dims``."""
        return (self.dims_decoder[0], *self.encoder_dims)


@dataclass(frozen=True)
class GaussianDecoderParams:
    """DPT-style Gaussian decoder over the SPN features plus an RGB+disparity skip conv."""

    dims_decoder: tuple[int, ...] = (128, 128, 128, 128, 128)
    dim_in: int = 5  # RGB + two layer disparities
    dim_out: int = 32  # feature width of the texture and geometry heads
    norm_num_groups: int = 8


@dataclass(frozen=True)
class AlignmentParams:
    """Training-only depth-alignment UNet; its weights are in the checkpoint but inference skips it."""

    base_width: int = 16
    steps: int = 4
    norm_num_groups: int = 4


@dataclass(frozen=True)
class PredictorParams:
    monodepth: MonodepthParams = field(default_factory=MonodepthParams)
    gaussian_decoder: GaussianDecoderParams = field(default_factory=GaussianDecoderParams)
    alignment: AlignmentParams = field(default_factory=AlignmentParams)
    num_layers: int = 2  # Gaussian layers per 2x2 pixel cell (front surface, occluded surface)

    @property
    def resolution(self) -> int:
        """Square input side: the SPN's level-2 image is one ViT patch, i.e. a quarter of the input."""
        return 4 * self.monodepth.vit.img_size

    @property
    def grid(self) -> int:
        """Gaussian grid side (one Gaussian per layer per 2x2 pixel cell)."""
        return self.resolution // 2

    @property
    def num_gaussians(self) -> int:
        return self.num_layers * self.grid * self.grid


def sharp_params() -> PredictorParams:
    """The published configuration: 702,305,169 parameters, 1536x1536 input, 1,179,648 Gaussians."""
    return PredictorParams()


def tiny_params() -> PredictorParams:
    """The golden tiny configuration (ViT 'tiny16_96'): 1,494,071 parameters, 384x384 input, 73,728 Gaussians."""
    vit = ViTParams(embed_dim=64, depth=4, num_heads=4, img_size=96, num_classes=16)
    return PredictorParams(
        monodepth=MonodepthParams(
            vit=vit,
            encoder_dims=(24, 40, 48, 56),
            hook_block_ids=(0, 1, 2, 3),
            dims_decoder=(16,) * 5,
            use_patch_overlap=False,
        ),
        gaussian_decoder=GaussianDecoderParams(dims_decoder=(32,) * 5, dim_out=8),
        alignment=AlignmentParams(base_width=8),
    )


PRESETS: dict[str, Callable[[], PredictorParams]] = {"sharp": sharp_params, "tiny": tiny_params}
