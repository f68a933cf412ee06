"""TorchRunner: the reference PyTorch predictor behind the Runner interface (eager, any batch size)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sharp_export.artifact import raw_io_spec
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime.base import Runner


class TorchRunner(Runner):
    """Wraps a ``sharp_export.reference.checkpoint.LoadedModel``; honours its precision (autocast)."""

    def __init__(self, loaded: Any, device: str = "cpu"):
        super().__init__(raw_io_spec(int(loaded.model.resolution), "batch"), device)
        self.loaded = loaded

    def _open(self) -> None:
        self.loaded.model.to(self.device).eval()

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        from sharp_export.reference.checkpoint import autocast_context

        device = torch.device(self.device)
        image_t = torch.from_numpy(image).to(device)  # [B, 3, R, R]
        factor_t = torch.from_numpy(disparity_factor).to(device)  # [B]
        with torch.no_grad(), autocast_context(self.loaded, device):
            out = self.loaded.model(image_t, factor_t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return Gaussians3D(*(t.float().cpu() for t in out))
