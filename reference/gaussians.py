"""The Gaussians that flow through the pipeline, and their post-processing.

``Gaussians3D`` has the field order of ml-sharp's NamedTuple of the same name, so tuples from any
runner (torch, ONNX Runtime, Core ML, TensorRT) line up with the reference by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

GAUSSIAN_FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")


class Gaussians3D(NamedTuple):
    """A batch of 3D Gaussians.

    Straight out of the model they live in "NDC x z" space with unnormalised quaternions; after
    ``unproject_gaussians`` they are metric OpenCV camera-space Gaussians with unit quaternions.
    """

    mean_vectors: torch.Tensor  # [B, N, 3] xyz
    singular_values: torch.Tensor  # [B, N, 3] scales (standard deviations), not log
    quaternions: torch.Tensor  # [B, N, 4] wxyz
    colors: torch.Tensor  # [B, N, 3] linear RGB in (0, 1)
    opacities: torch.Tensor  # [B, N] in (0, 1)

    def to(self, *args, **kwargs) -> Gaussians3D:
        return Gaussians3D(*(t.to(*args, **kwargs) for t in self))

    def select(self, index: int) -> Gaussians3D:
        """Batch element ``index`` as a batch of one."""
        return Gaussians3D(*(t[index : index + 1] for t in self))


@dataclass(frozen=True)
class SceneMeta:
    """What a scene remembers of its source image (written into the PLY's extra elements)."""

    f_px: float  # focal length in pixels of the original image
    width: int  # original image width in pixels
    height: int  # original image height in pixels
