"""Sliding Pyramid Network (Depth Pro's encoder): one ViT over overlapping tiles of a 3-level pyramid,
a second ViT over the whole low-resolution image, and transposed-conv upsamplers to five feature maps.

Tiling is written with static Python integers derived from the input shape, and the batch size is
read from ``x.shape[0]`` (never ``len(tensor)``), so the graph exports with a dynamic batch axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .params import MonodepthParams
from .vit import VisionTransformer, tokens_to_map


def upsampler(dim_in: int, dim_mid: int, dim_out: int, num_deconvs: int) -> nn.Sequential:
    """1x1 projection then ``num_deconvs`` 2x transposed convs (no biases), the first one dim_mid -> dim_out."""
    layers: list[nn.Module] = [nn.Conv2d(dim_in, dim_mid, 1, bias=False)]
    for index in range(num_deconvs):
        layers.append(nn.ConvTranspose2d(dim_mid if index == 0 else dim_out, dim_out, 2, stride=2, bias=False))
    return nn.Sequential(*layers)


def tile_offsets(size: int, patch: int, overlap: float) -> list[int]:
    """Top-left offsets of the tiles that cover ``size`` pixels with ``patch``-pixel tiles."""
    stride = int(patch * (1 - overlap))
    steps = int(math.ceil((size - patch) / stride)) + 1
    return [i * stride for i in range(steps)]


def split_tiles(x: torch.Tensor, patch: int, overlap: float) -> torch.Tensor:
    """Cut [B, C, S, S] into tiles, row-major, stacked patch-major: index = tile * B + b."""
    offsets = tile_offsets(x.shape[-1], patch, overlap)
    tiles = [x[..., y : y + patch, x0 : x0 + patch] for y in offsets for x0 in offsets]
    return torch.cat(tiles, dim=0)


def merge_tiles(tiles: torch.Tensor, batch: int, steps: int, padding: int) -> torch.Tensor:
    """Inverse of ``split_tiles`` on feature maps: crop ``padding`` on interior sides and concatenate.

    tiles: [steps*steps*B, C, g, g] -> [B, C, H, W].
    """
    rows = []
    for row in range(steps):
        cols = []
        for col in range(steps):
            tile = tiles[(row * steps + col) * batch : (row * steps + col + 1) * batch]
            top = padding if row > 0 else 0
            bottom = tile.shape[-2] - (padding if row < steps - 1 else 0)
            left = padding if col > 0 else 0
            right = tile.shape[-1] - (padding if col < steps - 1 else 0)
            cols.append(tile[..., top:bottom, left:right])
        rows.append(torch.cat(cols, dim=-1))
    return torch.cat(rows, dim=-2)


class SlidingPyramidNetwork(nn.Module):
    def __init__(self, p: MonodepthParams):
        super().__init__()
        self.params = p
        vit = p.vit
        dims = p.dims_encoder  # finest first
        self.patch_encoder = VisionTransformer(vit, hook_block_ids=p.hook_block_ids)
        self.image_encoder = VisionTransformer(vit)
        self.upsample_latent0 = upsampler(vit.embed_dim, dims[1], dims[0], 3)
        self.upsample_latent1 = upsampler(vit.embed_dim, dims[1], dims[1], 2)
        self.upsample0 = upsampler(vit.embed_dim, dims[2], dims[2], 1)
        self.upsample1 = upsampler(vit.embed_dim, dims[3], dims[3], 1)
        self.upsample2 = upsampler(vit.embed_dim, dims[4], dims[4], 1)
        self.upsample_lowres = nn.ConvTranspose2d(vit.embed_dim, dims[4], 2, stride=2, bias=True)
        self.fuse_lowres = nn.Conv2d(2 * dims[4], dims[4], 1, bias=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # x: [B, 3, S, S] in [-1, 1]
        return self.fuse(x, self.encode_patches(x))

    def encode_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # x: [B, 3, S, S] in [-1, 1]
        """Pyramid, tiles and the patch ViT: (latent0, latent1, x0, x1, x2 feature maps), each [B, C_vit, g, g].

        Split from ``fuse`` so that Core ML's ``--split components`` can cut between the two ViTs while
        running exactly this code; split again into ``tile_pyramid`` / ``encode_tiles`` / ``merge_tile_maps`` so
        that ExecuTorch's ``--split stages`` can run the patch ViT on a few tiles at a time.
        """
        return self.merge_tile_maps(x, *self.encode_tiles(self.tile_pyramid(x)))

    def _tiling(self, size: int) -> tuple[int, float, float, int]:
        """(patch side, level-0 overlap, level-1 overlap, tokens cropped on interior level-0 tile sides)."""
        p = self.params
        overlap0, overlap1 = (0.25, 0.5) if p.use_patch_overlap else (0.0, 0.0)
        padding = 3 if p.use_patch_overlap else 0
        return p.vit.img_size, overlap0, overlap1, padding

    def tile_pyramid(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, S, S] in [-1, 1]
        """The tiles the patch ViT sees: level 0 (S), level 1 (S/2) and the level-2 image, [T*B, 3, p, p]."""
        patch, overlap0, overlap1, _ = self._tiling(x.shape[-1])
        # Pyramid without antialiasing, as ml-sharp (half-pixel bilinear at 0.5 / 0.25).
        x1 = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        x2 = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
        return torch.cat([split_tiles(x, patch, overlap0), split_tiles(x1, patch, overlap1), x2], dim=0)

    def encode_tiles(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The patch ViT on tiles [N, 3, p, p]: the two hooked blocks' and the final token maps, each [N, C, g, g].

        Every tile is independent, so any batch of tiles gives the same maps as the whole stack.
        """
        p = self.params
        features, hooked = self.patch_encoder(tiles)
        grid = p.vit.grid
        return (
            tokens_to_map(hooked[p.hook_block_ids[0]], grid),
            tokens_to_map(hooked[p.hook_block_ids[1]], grid),
            features,
        )

    def merge_tile_maps(
        self,
        x: torch.Tensor,  # [B, 3, S, S]: only its shape is read
        latent0_tiles: torch.Tensor,  # [T*B, C, g, g] (encode_tiles of tile_pyramid, in order)
        latent1_tiles: torch.Tensor,
        feature_tiles: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Merge the tiles' maps into (latent0, latent1, x0, x1, x2 feature maps), each [B, C_vit, g', g']."""
        batch, size = x.shape[0], x.shape[-1]
        patch, overlap0, overlap1, padding = self._tiling(size)
        steps0 = len(tile_offsets(size, patch, overlap0))
        steps1 = len(tile_offsets(size // 2, patch, overlap1))
        n0, n1 = steps0 * steps0 * batch, steps1 * steps1 * batch
        return (
            merge_tiles(latent0_tiles[:n0], batch, steps0, padding),
            merge_tiles(latent1_tiles[:n0], batch, steps0, padding),
            merge_tiles(feature_tiles[:n0], batch, steps0, padding),
            merge_tiles(feature_tiles[n0 : n0 + n1], batch, steps1, 2 * padding),
            feature_tiles[n0 + n1 :],
        )

    def fuse(self, x: torch.Tensor, patch_maps: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The image ViT on the level-2 image plus the upsamplers: the five SPN maps, finest first."""
        latent0, latent1, x0_features, x1_features, x2_features = patch_maps
        # Recomputed here (a cheap 1/4 downscale) so that fuse needs only the image and the patch maps.
        x2 = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
        lowres_features, _ = self.image_encoder(x2)
        lowres = torch.cat([self.upsample2(x2_features), self.upsample_lowres(lowres_features)], dim=1)
        return [
            self.upsample_latent0(latent0),
            self.upsample_latent1(latent1),
            self.upsample0(x0_features),
            self.upsample1(x1_features),
            self.fuse_lowres(lowres),
        ]
