"""TorchRunner: the reference PyTorch predictor behind the Runner interface (eager, any batch size)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sharp_export.artifact import raw_io_spec
from sharp_export.reference.checkpoint import autocast_context
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime.base import Runner


class TorchRunner(Runner):
    """Wraps a ``sharp_export.reference.checkpoint.LoadedModel``; honours its precision (autocast).

    On the CPU the convolutions run channels-last by default. With contiguous (NCHW) tensors oneDNN copies
    every large activation into its blocked layout and the 768->1536 transposed conv takes a 2.4 GB
    workspace: the full preset peaked at 8.50 GB and 190 s, channels-last at 6.44 GB and 153 s (fp32; bf16
    autocast 6.16 GB, 99 s), outputs equal to fp32 rounding (z rel. err max 3.1e-7;
    benchmarks/results/cpu_paths_full.json, docs/architecture.md §9.1). ``channels_last=False`` restores NCHW.
    """

    def __init__(self, loaded: Any, device: str = "cpu", channels_last: bool | None = None):
        super().__init__(raw_io_spec(int(loaded.model.resolution), "batch"), device)
        self.loaded = loaded
        self.channels_last = (device == "cpu") if channels_last is None else channels_last

    def _open(self) -> None:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.loaded.model.to(self.device).to(memory_format=memory_format).eval()

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:

        device = torch.device(self.device)
        image_t = torch.from_numpy(image).to(device)  # [B, 3, R, R]
        if self.channels_last:
            image_t = image_t.contiguous(memory_format=torch.channels_last)
        factor_t = torch.from_numpy(disparity_factor).to(device)  # [B]
        with torch.no_grad(), autocast_context(self.loaded, device):
            out = self.loaded.model(image_t, factor_t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return Gaussians3D(*(t.float().cpu() for t in out))
